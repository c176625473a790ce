"""``heatmap.evaluate`` and ``heatmap eval``: the evaluation protocols (docs/METHODS.md, "The evaluation protocols").

The Python API runs on the tiny random ViT and CLIP of ``helpers.models``
(32x32 inputs, cheap); the CLI runs on the shipped ``demo`` model (96x96) with
two shapes-world scenes, since every eval line costs hundreds of forward passes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import heatmap
from heatmap.cli.app import app
from heatmap.demo.shapes_world import make_scenes
from heatmap.errors import UsageError
from heatmap.evaluation.data import split_normalisation
from heatmap.models import adapter_for
from helpers.models import TEXTS, tiny_clip, tiny_vit, tokens_of

runner = CliRunner()

P_STEPS = [0.1 * step for step in range(10)]
BASE_KEYS = {"input", "method", "target", "label", "degenerate"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: the models are tiny, and on a busy machine two threads waiting on
    each other make hundreds of small forward passes many times slower. The previous setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pixels_in_0_1(count: int, seed: int) -> torch.Tensor:
    """``[count, 3, 32, 32]`` images in [0, 1] pixel space (the tiny models' input size)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, 32, 32, generator=generator)


def normalisation(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std of the model's own transform, shaped ``[1, 3, 1, 1]``."""
    _, mean, std = split_normalisation(adapter_for(model).transform)
    return torch.tensor(mean).reshape(1, 3, 1, 1), torch.tensor(std).reshape(1, 3, 1, 1)


def clean_logits(model: torch.nn.Module, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                 ) -> torch.Tensor:
    """The classifier's logits of ``pixels`` normalised by hand."""
    with torch.no_grad():
        return model((pixels - mean) / std).double()


def reference_overlay(model: torch.nn.Module, normalised: torch.Tensor, method: str, target: int) -> torch.Tensor:
    """The map of one normalised image ``[1, 3, H, W]`` as the overlay shows it: bilinear to H x W, min-max."""
    raw = heatmap.explain(model, normalised, method, target=target).maps.reshape(1, 1, 4, 4).double()
    up = F.interpolate(raw, size=normalised.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    return (up - up.min()) / (up.max() - up.min())


def reference_perturbation(model: torch.nn.Module, pixels: torch.Tensor, scaled: torch.Tensor, target: int,
                           mean: torch.Tensor, std: torch.Tensor, positive: bool) -> list[float]:
    """The hit curve of the perturbation test written out from the docs: black pixels before normalising."""
    flat = scaled.flatten()
    order = torch.argsort(-flat if positive else flat, stable=True)
    copies = [pixels.clone()]
    for p in P_STEPS[1:]:
        copy = pixels.clone().reshape(3, -1)
        copy[:, order[: math.floor(p * flat.numel())]] = 0.0
        copies.append(copy.reshape(pixels.shape))
    predicted = clean_logits(model, torch.stack(copies), mean, std).argmax(dim=1)
    return [float(hit) for hit in (predicted == target).tolist()]


def without_input(lines: list) -> list[dict]:
    """The ``eval.jsonl`` lines without their ``input`` (which names the image by its position)."""
    return [{key: value for key, value in line.as_json().items() if key != "input"} for line in lines]


# -- the Python API ------------------------------------------------------------------------------------------


def test_perturbation_lines_match_the_protocol_written_out():
    """One line per image, only the keys of the protocols run; the curves (clean hit first, then p = 0.1..0.9
    with the top pixels set to black BEFORE the normalisation) and AUCs equal a by-hand implementation."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=1)
    lines = heatmap.evaluate(model, images, "chefer-generic", protocol="perturbation")
    assert len(lines) == 2
    mean, std = normalisation(model)
    predicted = clean_logits(model, images, mean, std).argmax(dim=1).tolist()
    for index, line in enumerate(lines):
        data = line.as_json()
        assert set(data) == BASE_KEYS | {"perturbation"}
        assert data["input"] == f"image {index}" and data["method"] == "chefer-generic"
        assert data["target"] == predicted[index]
        assert set(data["perturbation"]) == {"positive", "negative"}
        scaled = reference_overlay(model, (images[index:index + 1] - mean) / std, "chefer-generic", predicted[index])
        for test in ("positive", "negative"):
            figures = data["perturbation"][test]
            assert set(figures) == {"curve", "auc"}
            curve = figures["curve"]
            assert len(curve) == 10 and all(isinstance(v, float) for v in curve)
            assert curve[0] == 1.0  # the clean image's hit, its own top-1 class
            assert curve == reference_perturbation(model, images[index], scaled, predicted[index], mean, std,
                                                   positive=test == "positive")
            assert figures["auc"] == pytest.approx(100 * np.trapezoid(curve, P_STEPS))
    json.dumps([line.as_json() for line in lines])  # the lines are JSON as they stand


def test_mask_protocols_give_pointing_energy_and_segmentation():
    """With a bool mask per image, the three mask protocols add exactly pointing (bool), energy_pointing
    (float) and segmentation {pixel_accuracy, iou, ap}, with the values their definitions give."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=2)
    masks = [np.zeros((32, 32), bool), np.zeros((32, 32), bool)]
    masks[0][:16, :] = True
    masks[1][8:24, 4:20] = True
    lines = heatmap.evaluate(model, images, "chefer-generic", protocol=["pointing", "energy-pointing", "segmentation"],
                             masks=masks)
    assert len(lines) == 2
    mean, std = normalisation(model)
    for index, line in enumerate(lines):
        data = line.as_json()
        assert set(data) == BASE_KEYS | {"pointing", "energy_pointing", "segmentation"}
        assert isinstance(data["pointing"], bool)
        assert isinstance(data["energy_pointing"], float)
        assert set(data["segmentation"]) == {"pixel_accuracy", "iou", "ap"}
        scaled = reference_overlay(model, (images[index:index + 1] - mean) / std, "chefer-generic",
                                   data["target"]).numpy()
        mask = masks[index]
        y, x = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
        assert data["pointing"] == bool(mask[y, x])
        assert data["energy_pointing"] == pytest.approx(scaled[mask].sum() / scaled.sum(), rel=1e-6)
        predicted_object = scaled > scaled.mean()
        assert data["segmentation"]["pixel_accuracy"] == pytest.approx((predicted_object == mask).mean())
        for key in ("iou", "ap"):
            assert 0.0 <= data["segmentation"][key] <= 1.0


def test_target_label_gives_one_line_per_image_and_label():
    """target="label" with labels=[[0, 3], [1]]: one line per (image, label), each testing its label's class
    (the clean hit is whether the model predicts that label)."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=3)
    lines = heatmap.evaluate(model, images, "chefer-generic", protocol="perturbation", target="label",
                             labels=[[0, 3], [1]])
    assert [(line.input, line.target) for line in lines] == [("image 0", 0), ("image 0", 3), ("image 1", 1)]
    assert [line.label for line in lines] == ["0", "3", "1"]
    mean, std = normalisation(model)
    predicted = clean_logits(model, images, mean, std).argmax(dim=1).tolist()
    for line, image in zip(lines, (0, 0, 1), strict=True):
        assert line.perturbation["positive"]["curve"][0] == float(predicted[image] == line.target)


def test_mask_dict_per_label_as_the_labels_are_given():
    """Several objects: masks=[{label: mask}] keyed by the labels as passed in labels= (here class indices)
    give each (image, label) line its own object's pointing and energy figures."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=3)
    top, bottom = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    top[:16], bottom[16:] = True, True
    lines = heatmap.evaluate(model, images, "chefer-generic", protocol=["pointing", "energy-pointing"],
                             target="label", labels=[[0, 3], [1]], masks=[{0: top, 3: bottom}, {1: top}])
    assert len(lines) == 3
    for line in lines:
        assert line.pointing is not None and line.energy_pointing is not None, line.as_json()
    # each line reads its own label's mask: with the masks of image 0 swapped, the line of label 0 (the
    # same map) gets the other half, and the two halves' energy shares add up to the whole map
    swapped = heatmap.evaluate(model, images, "chefer-generic", protocol=["pointing", "energy-pointing"],
                               target="label", labels=[[0, 3], [1]], masks=[{0: bottom, 3: top}, {1: top}])
    assert lines[0].energy_pointing + swapped[0].energy_pointing == pytest.approx(1.0)
    assert lines[1].energy_pointing + swapped[1].energy_pointing == pytest.approx(1.0)


def test_usage_errors_of_the_api():
    """labels of the wrong length, and a mask protocol without masks, are the user's error (UsageError)."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=4)
    with pytest.raises(UsageError, match="labels"):
        heatmap.evaluate(model, images, "chefer-generic", protocol="perturbation", target="label", labels=[[0]])
    with pytest.raises(UsageError, match="masks"):
        heatmap.evaluate(model, images, "chefer-generic", protocol="pointing")
    with pytest.raises(UsageError, match="unknown protocol"):
        heatmap.evaluate(model, images, "chefer-generic", protocol="perturbations")


def test_deterministic_and_independent_of_batching():
    """The same image twice gives identical lines; an image evaluated without the other equals it evaluated
    with it; batch_size=1 equals batch_size=64 (same hits, same probabilities)."""
    model = tiny_vit()
    images = pixels_in_0_1(2, seed=5)
    protocols = ["perturbation", "deletion-insertion"]
    together = without_input(heatmap.evaluate(model, images, "rollout", protocol=protocols, batch_size=64))
    twice = without_input(heatmap.evaluate(model, torch.stack([images[1], images[1]]), "rollout",
                                           protocol=protocols, batch_size=64))
    assert twice[0] == twice[1]
    assert twice[0] == together[1]
    assert together[0] != together[1]  # the two images differ, so the comparison above can fail
    one_by_one = heatmap.evaluate(model, images[:1], "rollout", protocol=protocols, batch_size=1)[0]
    large = heatmap.evaluate(model, images[:1], "rollout", protocol=protocols, batch_size=64)[0]
    assert without_input([large]) == together[:1]
    assert one_by_one.target == large.target
    assert one_by_one.perturbation == large.perturbation
    for name in ("deletion", "insertion"):
        assert len(getattr(one_by_one, name)["curve"]) == 101
        assert getattr(one_by_one, name)["curve"] == pytest.approx(getattr(large, name)["curve"], abs=1e-6)


def test_mean_and_std_are_the_models_by_default_and_are_used():
    """Passing the model's own normalisation (timm's default for the tiny ViT) changes nothing; another mean
    changes the clean logits, which the deletion curve's first point (the clean probability) shows."""
    model = tiny_vit()
    adapter = adapter_for(model)
    _, own_mean, own_std = split_normalisation(adapter.transform)
    assert own_mean == pytest.approx((0.485, 0.456, 0.406)) and own_std == pytest.approx((0.229, 0.224, 0.225))
    images = pixels_in_0_1(1, seed=6)
    default = heatmap.evaluate(model, images, "rollout", protocol="deletion-insertion")
    explicit = heatmap.evaluate(model, images, "rollout", protocol="deletion-insertion", mean=own_mean, std=own_std)
    assert without_input(default) == without_input(explicit)
    mean, std = normalisation(model)
    probabilities = clean_logits(model, images, mean, std).softmax(dim=1)[0]
    target = default[0].target
    assert default[0].deletion["curve"][0] == pytest.approx(float(probabilities[target]), rel=1e-5)

    other_mean = (0.1, 0.9, 0.3)
    shifted = heatmap.evaluate(model, images, "rollout", protocol="deletion-insertion", mean=other_mean, std=own_std)
    shifted_probabilities = clean_logits(model, images, torch.tensor(other_mean).reshape(1, 3, 1, 1),
                                         std).softmax(dim=1)[0]
    assert shifted[0].target == int(shifted_probabilities.argmax())
    clean = shifted[0].deletion["curve"][0]
    assert clean == pytest.approx(float(shifted_probabilities[shifted[0].target]), rel=1e-5)
    assert clean != pytest.approx(float(probabilities[shifted[0].target]), rel=1e-3)


def test_clip_is_evaluated_against_its_texts():
    """A CLIP: the target is the index of the best-matching text and the label that text; the clean hit is 1."""
    model = tiny_clip()
    images = pixels_in_0_1(2, seed=7)
    lines = heatmap.evaluate(model, images, "rollout", protocol="perturbation", texts=TEXTS)
    assert len(lines) == 2
    _, mean, std = split_normalisation(adapter_for(model).transform)
    normalised = (images - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        similarity = model.encode_image(normalised, normalize=True) @ model.encode_text(tokens_of(TEXTS),
                                                                                        normalize=True).T
    best = similarity.argmax(dim=1).tolist()
    for line, index in zip(lines, best, strict=True):
        data = line.as_json()
        assert set(data) == BASE_KEYS | {"perturbation"}
        assert data["target"] == index and data["label"] == TEXTS[index]
        assert data["perturbation"]["positive"]["curve"][0] == 1.0
        assert len(data["perturbation"]["negative"]["curve"]) == 10
    with pytest.raises(UsageError):
        heatmap.evaluate(model, images, "rollout", protocol="perturbation", texts=[])


# -- the CLI -------------------------------------------------------------------------------------------------

# the random and centre rows are left out here (tests/test_eval_intervals.py checks them)
DEMO_RUN = ["eval", "--model", "demo", "--demo-world", "2", "--seed", "3", "--method", "chefer-generic",
            "--method", "rollout", "--no-random"]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One ``heatmap eval`` on two demo-world scenes with two methods and every protocol."""
    out = tmp_path_factory.mktemp("eval") / "out"
    result = invoke(*DEMO_RUN, "-o", out)
    return result, out


def test_cli_demo_world_writes_its_results(demo_run):
    """Exit 0; eval.json (settings, 2 images, figures for both methods), eval.jsonl (2 images x 2 methods) and
    a real eval.png; the table names both methods and stars a best value."""
    result, out = demo_run
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 2 and report["failed"] == []
    settings = report["settings"]
    assert settings["model"] == "demo" and settings["methods"] == ["chefer-generic", "rollout"]
    assert settings["protocols"] == ["perturbation", "deletion-insertion", "pointing", "energy-pointing",
                                     "segmentation"]
    assert settings["inputs"] == {"demo_world": 2, "seed": 3}
    assert set(report["methods"]) == {"chefer-generic", "rollout"}
    for figures in report["methods"].values():
        assert figures["lines"] == 2
        assert len(figures["perturbation_positive"]["curve"]) == 10
        assert "auc" in figures["perturbation_negative"]
        assert len(figures["deletion"]["curve"]) == len(figures["insertion"]["curve"]) == 101
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    assert sorted((line["input"], line["method"]) for line in lines) == sorted(
        (f"demo-world seed 3 scene {scene}", method) for scene in (0, 1) for method in ("chefer-generic", "rollout"))
    masked = 0
    for line in lines:
        # the mask protocols need the predicted shape to be in the scene (its mask); then all three are there
        assert set(line) - {"pointing", "energy_pointing", "segmentation"} == BASE_KEYS | {
            "perturbation", "deletion", "insertion"}
        assert len(set(line) & {"pointing", "energy_pointing", "segmentation"}) in (0, 3)
        masked += "pointing" in line
    assert masked > 0
    for method, figures in report["methods"].items():
        pairs = sum("pointing" in line for line in lines if line["method"] == method)
        assert figures.get("pointing", {"pairs": 0})["pairs"] == pairs
    for method, figures in report["methods"].items():
        own = [line["perturbation"]["positive"]["curve"] for line in lines if line["method"] == method]
        assert figures["perturbation_positive"]["curve"] == pytest.approx(np.mean(own, axis=0).tolist())
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "eval.png") as png:
        png.load()
        assert png.size[0] > 100 and png.size[1] > 100
    rows = {method: [line for line in result.stdout.splitlines() if f" {method} " in line]
            for method in ("chefer-generic", "rollout")}
    assert all(len(found) == 2 for found in rows.values()), result.stdout  # the faithfulness and localisation tables
    # the best value of a column is starred in its row (the legend's '*' does not count)
    assert any(re.search(r"\d\*", row) for found in rows.values() for row in found), result.stdout


def test_cli_json_prints_the_summary(demo_run, tmp_path):
    """--json: stdout is one JSON object, the run's eval.json; its figures equal those of the same run without
    --json (a run is deterministic)."""
    _, first_out = demo_run
    out = tmp_path / "json"
    result = invoke(*DEMO_RUN, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "eval.json").read_text())
    assert printed["images"] == 2 and set(printed["methods"]) == {"chefer-generic", "rollout"}
    assert printed["methods"] == json.loads((first_out / "eval.json").read_text())["methods"]


def test_cli_refuses_to_overwrite_an_earlier_evaluation(demo_run):
    """Running again into the same --out exits 2 with a message naming another --out; no file changes."""
    _, out = demo_run
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert {"eval.json", "eval.jsonl", "eval.png"} <= set(before)
    result = invoke(*DEMO_RUN, "-o", out)
    assert result.exit_code == 2
    assert "another --out" in result.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.fixture
def scenes_with_labels(tmp_path):
    """Two shapes-world scenes as PNGs, a labels CSV (header, a row per object) and a mask per object."""
    folder, masks = tmp_path / "images", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    rows, expected = ["image,label"], []
    for index, scene in enumerate(make_scenes(2, seed=1)):
        stem = f"scene{index}"
        scene.image.save(folder / f"{stem}.png")
        union: dict[str, np.ndarray] = {}
        for obj in scene.objects:
            rows.append(f"{stem}.png,{obj.shape}")
            union[obj.shape] = union[obj.shape] | obj.mask if obj.shape in union else obj.mask
        for shape, mask in union.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{stem}.{shape}.png")
            expected.append((stem, shape))
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels, masks, expected


def test_cli_folder_with_labels_and_masks(scenes_with_labels, tmp_path):
    """A folder, --target label, --labels CSV, --masks DIR: one line per (image, label), each with pointing."""
    folder, labels, masks, expected = scenes_with_labels
    out = tmp_path / "out"
    result = invoke("eval", folder, "--model", "demo", "--target", "label", "--labels", labels, "--masks", masks,
                    "--method", "chefer-generic", "--protocol", "pointing", "--no-random", "-o", out)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(expected) >= 3  # several objects in a scene
    assert sorted((Path(line["input"]).stem, line["label"]) for line in lines) == sorted(expected)
    demo = heatmap.load("demo")
    for line in lines:
        assert set(line) == BASE_KEYS | {"pointing"} and isinstance(line["pointing"], bool)
        assert demo.label(line["target"]) == line["label"]
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 2 and report["methods"]["chefer-generic"]["pointing"]["pairs"] == len(expected)


def test_cli_a_corrupt_image_fails_alone(scenes_with_labels, tmp_path):
    """An unreadable file among the images: exit 1, a message naming it, the other images evaluated."""
    folder, labels, masks, expected = scenes_with_labels
    (folder / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = invoke("eval", folder, "--model", "demo", "--target", "label", "--labels", labels, "--masks", masks,
                    "--method", "chefer-generic", "--protocol", "pointing", "--no-random", "-o", out)
    assert result.exit_code == 1
    failed = [line for line in result.stderr.splitlines() if "failed" in line and "bad.png" in line]
    assert len(failed) == 1
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert sorted((Path(line["input"]).stem, line["label"]) for line in lines) == sorted(expected)
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 2 and len(report["failed"]) == 1 and "bad.png" in report["failed"][0]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--demo-world", "1", "--protocol", "perturbations"], "unknown protocol 'perturbations'"),
    (["{images}", "--target", "label"], "--labels"),
    (["{images}", "--demo-world", "1"], "give no INPUTS"),
    (["--demo-world", "1", "--method", "no-such-method"], "no-such-method"),
], ids=["unknown-protocol", "label-without-labels", "demo-world-with-inputs", "unknown-method"])
def test_cli_usage_errors_exit_2_before_loading_a_model(arguments, message, scenes_with_labels, tmp_path,
                                                        monkeypatch):
    """Usage errors exit 2 with their message, before a model is loaded or the output folder is made."""
    import heatmap.cli.evaluate as cli_evaluate

    loaded = []
    monkeypatch.setattr(cli_evaluate, "_load", lambda *args: loaded.append(args))
    folder = scenes_with_labels[0]
    out = tmp_path / "out"
    result = invoke("eval", *[str(folder) if arg == "{images}" else arg for arg in arguments], "--model", "demo",
                    "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert loaded == [] and not out.exists()
