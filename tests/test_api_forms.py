"""The forms ``heatmap.explain`` takes (one path, one PIL image, class names, several classes, top_k) and the
overlay a result draws of itself, pixel for pixel the CLI's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import heatmap
from helpers.console import console_script

SCENE = "sample_images/shapes_002_red-heart_pink-cross.png"  # a red heart and a pink cross
PHOTO = "sample_images/chelsea.png"  # not square: the model sees a centre crop of it


@pytest.fixture(scope="module")
def demo():
    return heatmap.load("demo", device="cpu")


def test_one_path_one_picture_and_a_list_give_the_same_map(demo):
    from_path = heatmap.explain(demo, SCENE, "rollout")
    from_picture = heatmap.explain(demo, Image.open(SCENE), "rollout")
    from_list = heatmap.explain(demo, [SCENE], "rollout")
    assert from_path.maps.shape == (1, 12, 12)
    assert torch.equal(from_path.maps, from_picture.maps) and torch.equal(from_path.maps, from_list.maps)


def test_a_class_name_is_its_index(demo):
    by_name = heatmap.explain(demo, SCENE, "chefer-generic", target="cross")
    by_index = heatmap.explain(demo, SCENE, "chefer-generic", target=by_name.targets.tolist()[0])
    assert by_name.labels == ["cross"] and torch.equal(by_name.maps, by_index.maps)
    with pytest.raises(heatmap.UsageError, match="demo has no class 'dog'"):
        heatmap.explain(demo, SCENE, "rollout", target="dog")


def test_targets_are_several_classes_for_every_image_and_target_one_per_image(demo):
    several = heatmap.explain(demo, [SCENE, PHOTO], "chefer-generic", targets=["cross", "heart"])
    assert several.maps.shape == (2, 2, 12, 12)
    assert several.labels == [["cross", "heart"], ["cross", "heart"]]
    one_each = heatmap.explain(demo, [SCENE, PHOTO], "chefer-generic", target=["heart", "cross"])
    assert one_each.labels == ["heart", "cross"]
    assert torch.equal(one_each.maps[0], several.maps[0, 1]) and torch.equal(one_each.maps[1], several.maps[1, 0])
    with pytest.raises(heatmap.UsageError, match="target= has 1 classes for 2 images"):
        heatmap.explain(demo, [SCENE, PHOTO], "rollout", target=["heart"])
    with pytest.raises(heatmap.UsageError, match="not both"):
        heatmap.explain(demo, SCENE, "rollout", target="heart", targets=["cross"])


def test_top_k_explains_the_highest_classes(demo):
    result = heatmap.explain(demo, SCENE, "chefer-generic", top_k=3)
    assert result.maps.shape == (1, 3, 12, 12)
    logits = demo.logits(demo.preprocess([Image.open(SCENE).convert("RGB")])[0])
    assert result.targets.tolist() == [logits.topk(3, dim=1).indices[0].tolist()]


def test_the_overlay_is_the_clis_pixel_for_pixel_on_a_non_square_picture(demo, tmp_path):
    result = console_script("rollout", PHOTO, "--model", "demo", "-o", tmp_path)
    assert result.returncode == 0, result.stderr
    entry = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    cli = np.asarray(Image.open(tmp_path / entry["files"]["png"]).convert("RGB"))
    api = heatmap.explain(demo, PHOTO, "rollout", target=entry["target"])
    drawn = np.asarray(api.overlay(0))
    width, height = Image.open(PHOTO).size
    assert width != height and drawn.shape == cli.shape == (height, width, 3)
    # the same map in the same process, drawn by the same steps: measured 0 (native and portable kernels)
    assert np.array_equal(drawn, cli)


def test_a_clip_result_draws_itself_and_a_tensor_has_no_picture(demo):
    clip = heatmap.load_clip("demo", device="cpu")
    result = heatmap.explain(clip, PHOTO, "rollout", texts=["a red heart", "a cross"])
    assert result.overlay(0, 1).size == Image.open(PHOTO).size
    assert repr(result).startswith("ClipExplanation(method='rollout', maps=[1, 2, 12, 12]")
    tensor = demo.preprocess([Image.open(SCENE).convert("RGB")])[0]
    with pytest.raises(heatmap.UsageError, match="an overlay needs the pictures"):
        heatmap.explain(demo, tensor, "rollout").overlay(0)


def test_show_draws_every_overlay_with_its_title(demo):
    import matplotlib
    matplotlib.use("Agg")  # no window in a test
    import matplotlib.pyplot as plt

    result = heatmap.explain(demo, [SCENE, PHOTO], "rollout", targets=["heart", "cross"])
    figure = result.show()
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 4 and titles[0].startswith("heart  logit ") and titles[3].startswith("cross  logit ")
    plt.close(figure)


def test_save_writes_the_clis_files_and_panel_draws_the_clis_panel(demo, tmp_path):
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    result = console_script("chefer-generic", PHOTO, "--model", "demo", "--target", "heart", "--target", "cross",
                            "--panel", "-o", cli_out)
    assert result.returncode == 0, result.stderr
    api = heatmap.explain(demo, PHOTO, "chefer-generic", targets=["heart", "cross"])
    entries = api.save(api_out, panel=True)
    cli_entries = [json.loads(line) for line in (cli_out / "manifest.jsonl").read_text().splitlines()]
    assert [entry["label"] for entry in entries] == [entry["label"] for entry in cli_entries] == ["heart", "cross"]
    assert [json.loads(line) for line in (api_out / "manifest.jsonl").read_text().splitlines()] == entries
    for k, (mine, theirs) in enumerate(zip(entries, cli_entries, strict=True)):
        assert mine["input"] == theirs["input"] == PHOTO
        assert {key: mine[key] for key in ("target", "score", "probability", "class_rank", "classes", "map_shape")} \
            == {key: theirs[key] for key in ("target", "score", "probability", "class_rank", "classes", "map_shape")}
        # the same map and the same pictures, drawn by the same writers
        assert (api_out / mine["files"]["npy"]).read_bytes() == (cli_out / theirs["files"]["npy"]).read_bytes()
        for kind in ("png", "panel"):
            assert np.array_equal(np.asarray(Image.open(api_out / mine["files"][kind])),
                                  np.asarray(Image.open(cli_out / theirs["files"][kind]))), kind
        assert np.array_equal(np.asarray(api.panel(0, k)), np.asarray(Image.open(cli_out / theirs["files"]["panel"])))


def test_a_clip_result_saves_its_token_strips_and_pil_inputs_get_names(tmp_path):
    clip = heatmap.load_clip("demo", device="cpu")
    result = heatmap.explain(clip, [Image.open(SCENE)], "chefer-generic", texts=["a red heart", "a pink cross"])
    entries = result.save(tmp_path)
    assert [entry["input"] for entry in entries] == ["image0", "image0"]
    assert all({"npy", "png", "tokens"} <= set(entry["files"]) for entry in entries)
    assert result.panel(0, 1).width > 2 * 256  # two enlarged tiles and the colour bar
