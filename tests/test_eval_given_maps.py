"""``heatmap eval --maps`` / ``--save-maps``'s library side: a run folder's maps read back, eval's maps written."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.errors import UsageError
from heatmap.evaluation.data import split_normalisation
from heatmap.evaluation.demo_world import demo_world
from heatmap.evaluation.given_maps import GivenMaps, MapSaver, pixels_picture, resolve_input
from heatmap.explainers.driver import Driver
from heatmap.models import load, load_clip, weights_identity
from heatmap.outputs import MANIFEST, RUNS, read_manifest, target_names, text_name
from heatmap.pipeline import classifier_records, clip_records
from helpers.demo_runs import scene_folder

runner = CliRunner()
SCENES = ["images/scene0.png", "images/scene1.png", "images/scene2.png"]
TEXTS = ["a red heart", "a green circle"]


def invoke(*args: object) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@contextmanager
def working_in(folder: Path):
    """Run in ``folder``: the runs record it as their ``cwd`` and their inputs relative to it."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with three scenes in ``images/``, a top-2 classifier run and a two-text CLIP run."""
    folder = tmp_path_factory.mktemp("work")
    (folder / "images").mkdir()
    scene_folder(folder / "images", 3)
    with working_in(folder):
        invoke("chefer-generic", *SCENES, "-m", "demo", "--top-k", 2, "-o", "classifier", "--quiet")
        invoke("clip", *SCENES[:2], "-m", "demo", *[f"--text={text}" for text in TEXTS], "-o", "clip", "--quiet")
    return folder


def copied(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- reading a run folder ------------------------------------------------------------

def test_classifier_run_maps_are_the_npy_files_bit_for_bit(work: Path) -> None:
    folder = work / "classifier"
    given = GivenMaps.read(folder)
    assert (given.kind, given.models, given.methods, given.inputs) == ("classifier", ["demo"], ["chefer-generic"],
                                                                       SCENES)
    assert given.texts == [] and given.incomplete == []
    entries = read_manifest(folder)
    assert len(entries) == 6
    for scene in SCENES:
        maps = given.maps_for(scene, "chefer-generic")
        own = [entry for entry in entries if entry["input"] == scene]
        assert [(target, label) for target, label, _ in maps] == [(entry["target"], entry["label"]) for entry in own]
        assert given.targets_for(scene, "chefer-generic") == [(target, label) for target, label, _ in maps]
        for (_, _, heatmap), entry in zip(maps, own, strict=True):
            stored = np.load(folder / entry["files"]["npy"])
            assert heatmap.dtype == torch.float32 and list(heatmap.shape) == entry["map_shape"] == [12, 12]
            assert heatmap.numpy().tobytes() == stored.tobytes()
    assert given.maps_for(SCENES[0], "gradcam") == [] and given.maps_for("elsewhere.png", "chefer-generic") == []


def test_inputs_resolve_through_the_runs_cwd_from_another_folder(work: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    moved = copied(work / "classifier", tmp_path / "far" / "run")
    monkeypatch.chdir(tmp_path)
    # neither this folder nor the run folder's parents hold images/: only runs.jsonl's cwd finds them
    assert resolve_input(SCENES[1], moved) == work / SCENES[1]
    assert GivenMaps.read(moved).resolve(SCENES[2]) == work / SCENES[2]
    assert resolve_input(str(work / SCENES[0]), moved) == work / SCENES[0]  # absolute: as is
    assert resolve_input("images/missing.png", moved) is None
    (moved / RUNS).unlink()
    assert resolve_input(SCENES[1], moved) is None
    # the original folder: found also without runs.jsonl, from the folder above the run's
    original = copied(work / "classifier", work / "no-runs-log")
    (original / RUNS).unlink()
    assert resolve_input(SCENES[1], original) == work / SCENES[1]


def test_clip_run_gives_texts_in_index_order_and_its_maps(work: Path) -> None:
    folder = work / "clip"
    given = GivenMaps.read(folder)
    assert (given.kind, given.texts, given.inputs) == ("clip", TEXTS, SCENES[:2])
    for entry in read_manifest(folder):
        maps = given.maps_for(entry["input"], "chefer-generic")
        assert [(target, text) for target, text, _ in maps] == [(0, TEXTS[0]), (1, TEXTS[1])]
        heatmap = maps[entry["text_index"]][2]
        assert heatmap.numpy().tobytes() == np.load(folder / entry["files"]["npy"]).tobytes()


def test_clip_runs_of_other_texts_in_one_folder_are_refused(work: Path, tmp_path: Path) -> None:
    folder = copied(work / "clip", tmp_path / "clip")
    lines = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    # another run's text 0, of another input
    other = {**lines[0], "text": "a blue star", "input": "images/other.png"}
    (folder / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in [*lines, other]))
    with pytest.raises(UsageError, match="text 0 is 'a red heart' in one map and 'a blue star'"):
        GivenMaps.read(folder)


def test_a_map_with_a_missing_npy_is_left_out_and_reported(work: Path, tmp_path: Path) -> None:
    folder = copied(work / "classifier", tmp_path / "run")
    entries = read_manifest(folder)
    (folder / entries[3]["files"]["npy"]).unlink()
    given = GivenMaps.read(folder)
    assert len(given.incomplete) == 1
    assert given.incomplete[0].startswith(f"{entries[3]['input']} [chefer-generic, {entries[3]['target']}]")
    assert entries[3]["files"]["npy"] in given.incomplete[0]
    assert [target for target, _, _ in given.maps_for(entries[3]["input"], "chefer-generic")] == [
        entries[2]["target"]]
    assert sum(len(given.maps_for(scene, "chefer-generic")) for scene in given.inputs) == 5
    for entry in entries:
        (folder / entry["files"]["npy"]).unlink(missing_ok=True)
    with pytest.raises(UsageError, match="none of its 6 map"):
        GivenMaps.read(folder)


def test_a_folder_without_a_manifest_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no manifest.jsonl there; point --maps at the output folder"):
        GivenMaps.read(tmp_path)


def test_one_method_in_two_configurations_is_refused(work: Path, tmp_path: Path) -> None:
    folder = copied(work / "classifier", tmp_path / "run")
    with working_in(work):
        invoke("chefer-generic", SCENES[0], "-m", "demo", "--start-layer", 1, "-o", folder, "--quiet")
    with pytest.raises(UsageError, match=r"chefer-generic in 2 configurations .*start_layer.*: 0.*start_layer.*: 1"
                                         r".*point --maps at the folder of one run"):
        GivenMaps.read(folder)
    with pytest.raises(UsageError, match=r"no map of gradcam \(its methods: chefer-generic\)"):
        GivenMaps.read(folder, methods=["gradcam"])


def test_maps_of_two_models_are_refused(work: Path, tmp_path: Path) -> None:
    folder = copied(work / "classifier", tmp_path / "run")
    lines = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]
    lines[-1]["model"] = "another"
    (folder / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(UsageError, match=r"several models \(demo, another\)"):
        GivenMaps.read(folder)


# -- eval's maps written as a run's ------------------------------------------------

def normalised(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``[3, H, W]`` pixels in [0, 1] -> the ``[1, 3, H, W]`` model input, as the evaluation's scorer makes it."""
    return ((pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def demo_classifier():
    adapter = load("demo", device="cpu")
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    return adapter, Driver(adapter, "chefer-generic"), pixel_transform, mean, std


def test_saved_maps_read_back_the_same_and_compare_passes(tmp_path: Path) -> None:
    adapter, driver, pixel_transform, mean, std = demo_classifier()
    names = target_names(adapter.labels)
    world = list(demo_world(2, seed=3, pixel_transform=pixel_transform, clip=False).images)
    records = [classifier_records(driver.explain(normalised(image.pixels, mean, std), torch.tensor([[0, 3]])),
                                  [None], names.__getitem__, None)[0] for image in world]
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        saver = MapSaver(folder, adapter.name, weights_identity("demo"), "float32")
        for number, (image, row) in enumerate(zip(world, records, strict=True)):
            entries = saver.save(image.name, "chefer-generic", driver.options, row, pixels_picture(image.pixels))
            # the CLI's names: <stem>.<method>.<target>.<configuration tag>.npy, the scene's name made file-safe
            assert [entry["files"]["npy"].split(".")[:3] for entry in entries] == [
                [f"demo_world_seed_3_scene_{number}", "chefer-generic", name] for name in ("circle", "star")]
        saver.record_run(["heatmap", "eval", "--save-maps", str(folder)], "classifier", len(world))
    given = GivenMaps.read(folders[0])
    assert given.inputs == ["demo-world seed 3 scene 0", "demo-world seed 3 scene 1"] == [image.name for image in world]
    for image, row in zip(world, records, strict=True):
        maps = given.maps_for(image.name, "chefer-generic")
        assert [(target, label) for target, label, _ in maps] == [(0, "circle"), (3, "star")]
        for (_, _, heatmap), record in zip(maps, row, strict=True):
            assert heatmap.numpy().tobytes() == np.ascontiguousarray(record.heatmap, np.float32).tobytes()
    entry = read_manifest(folders[0])[0]
    assert entry["options"] == driver.options and entry["precision"] == "float32"
    with Image.open(folders[0] / entry["files"]["png"]) as drawn:
        assert drawn.size == tuple(world[0].pixels.shape[1:])  # drawn on the pixels eval scored
    assert json.loads((folders[0] / RUNS).read_text())["cwd"] == os.getcwd()
    assert runner.invoke(app, ["compare", str(folders[0]), str(folders[1])]).exit_code == 0
    invoke("report", folders[0])
    assert (folders[0] / "report.html").is_file()


def test_saved_file_inputs_are_named_as_a_run_names_them(work: Path, tmp_path: Path) -> None:
    adapter, driver, pixel_transform, mean, std = demo_classifier()
    images = [work / "images" / "scene0.png", work / "other" / "scene0.png"]
    images[1].parent.mkdir(exist_ok=True)
    shutil.copy(images[0], images[1])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text('{"input": "half a line')  # a killed run's last words
    saver = MapSaver(tmp_path / "out", adapter.name, weights_identity("demo"), "float32", inputs=images)
    assert saver.repaired == [1] and (tmp_path / "out" / MANIFEST).read_text() == ""
    unlisted = MapSaver(tmp_path / "unlisted", adapter.name, weights_identity("demo"), "float32")
    for path in images:
        pixels = pixel_transform(Image.open(path).convert("RGB"))
        row = classifier_records(driver.explain(normalised(pixels, mean, std), torch.tensor([[1]])), [None], str,
                                 None)[0]
        saver.save(str(path), "chefer-generic", driver.options, row, pixels_picture(pixels), image_path=path)
        unlisted.save(str(path), "chefer-generic", driver.options, row, None, image_path=path)
    stems = [entry["files"]["npy"].split(".")[0] for entry in read_manifest(tmp_path / "out")]
    assert stems == ["images__scene0", "other__scene0"]  # as output_stems names clashing inputs
    unlisted_stems = [entry["files"]["npy"].split(".")[0] for entry in read_manifest(tmp_path / "unlisted")]
    assert unlisted_stems[0] == "scene0" and unlisted_stems[1].startswith("scene0-")  # distinct all the same
    assert [set(entry["files"]) for entry in read_manifest(tmp_path / "unlisted")] == [{"npy"}, {"npy"}]
    assert saver.maps == unlisted.maps == 2


def test_saved_clip_maps_have_token_strips_and_read_back_as_clip(tmp_path: Path) -> None:
    adapter = load_clip("demo", device="cpu")
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    driver = Driver(adapter, "chefer-generic")
    image = list(demo_world(1, seed=5, pixel_transform=pixel_transform, clip=True).images)[0]
    row = clip_records(driver.explain_texts(normalised(image.pixels, mean, std), TEXTS), [None],
                       lambda t: text_name(TEXTS[t]))[0]
    saver = MapSaver(tmp_path, adapter.name, weights_identity("demo", clip=True), "float32")
    entries = saver.save(image.name, "chefer-generic", driver.options, row, pixels_picture(image.pixels))
    assert [set(entry["files"]) for entry in entries] == [{"npy", "png", "tokens"}] * 2
    given = GivenMaps.read(tmp_path)
    assert (given.kind, given.texts) == ("clip", TEXTS)
    maps = given.maps_for(image.name, "chefer-generic")
    assert [(target, text) for target, text, _ in maps] == [(0, TEXTS[0]), (1, TEXTS[1])]
    for (_, _, heatmap), record in zip(maps, row, strict=True):
        assert heatmap.numpy().tobytes() == record.heatmap.astype(np.float32).tobytes()


def test_pixels_picture_is_the_pixels_in_bytes() -> None:
    pixels = torch.tensor([[[0.0, 1.0]], [[0.5, 0.2]], [[1.2, -0.1]]])
    assert np.asarray(pixels_picture(pixels)).tolist() == [[[0, 128, 255], [255, 51, 0]]]
