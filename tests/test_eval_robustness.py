"""`heatmap eval` on inputs that must not stop the run: an oversized mask fails its image alone; a large
`--demo-world` makes its scenes as they are evaluated, never all at once."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.demo.shapes_world import make_scenes
from heatmap.evaluation.demo_world import demo_world

runner = CliRunner()
# The demo scenes have 96 x 96 = 9,216 pixels: under the limit the tests set. PIL warns above the limit and
# refuses above twice it; a mask of 150 x 150 = 22,500 pixels is in between, one of 300 x 300 above both.
PIXEL_LIMIT = 20_000


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def scenes_with_masks(tmp_path):
    """Two shapes-world scenes as PNGs, a labels CSV and a mask per object."""
    folder, masks = tmp_path / "images", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    rows = ["image,label"]
    for index, scene in enumerate(make_scenes(2, seed=1, num_objects=1)):
        stem = f"scene{index}"
        scene.image.save(folder / f"{stem}.png")
        obj = scene.objects[0]
        rows.append(f"{stem}.png,{obj.shape}")
        Image.fromarray(obj.mask.astype(np.uint8) * 255).save(masks / f"{stem}.{obj.shape}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels, masks


@pytest.mark.parametrize("side", [150, 300], ids=["over-the-limit", "over-twice-the-limit"])
def test_an_oversized_mask_fails_its_image_alone(scenes_with_masks, tmp_path, monkeypatch, side):
    """A mask too large to decode safely: exit 1, one line naming the mask file and saying to downscale it,
    the other image evaluated; never an internal error."""
    folder, labels, masks = scenes_with_masks
    oversized = sorted(masks.glob("scene0.*.png"))[0]
    Image.new("1", (side, side)).save(oversized)  # all black: a few hundred bytes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)
    out = tmp_path / "out"
    result = invoke("eval", folder, "--model", "demo", "--target", "label", "--labels", labels, "--masks", masks,
                    "--method", "rollout", "--protocol", "pointing", "--no-random", "-o", out)
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output
    failed = [line for line in result.stderr.splitlines() if oversized.name in line]
    assert len(failed) == 1 and "too large" in failed[0] and "downscale" in failed[0], result.stderr
    assert "MAX_IMAGE_PIXELS" not in result.output
    lines = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [Path(line["input"]).stem for line in lines] == ["scene1"]
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 1 and len(report["failed"]) == 1 and oversized.name in report["failed"][0]


def test_an_oversized_image_message_says_to_downscale(tmp_path, monkeypatch):
    """The advice for a picture too large to decode is one the user can follow: downscale it (no option of the
    tool raises PIL's limit)."""
    from heatmap.errors import HeatmapError
    from heatmap.inputs import load_image

    path = tmp_path / "big.png"
    Image.new("1", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXEL_LIMIT)
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    message = str(error.value)
    assert str(path) in message and "too large" in message and "downscale" in message
    assert "MAX_IMAGE_PIXELS" not in message


def pixel_transform(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)


def test_a_large_demo_world_is_not_built_up_front(monkeypatch):
    """--demo-world 1000000: the images come as they are asked for (its length is the count, building it takes
    no time), and the first ones are the scenes of a small world of the same seed, with the same masks."""
    from heatmap.demo import shapes_world

    drawn = []
    draw = shapes_world.make_scene

    def counted(*args, **kwargs):
        drawn.append(1)
        if len(drawn) > 100:  # a world built up front: stop at once rather than draw a million scenes
            raise AssertionError("the scenes are drawn before they are asked for")
        return draw(*args, **kwargs)

    monkeypatch.setattr(shapes_world, "make_scene", counted)
    started = time.perf_counter()
    large = demo_world(10**6, 5, pixel_transform, clip=False)
    assert time.perf_counter() - started < 1.0  # a million scenes would take minutes and gigabytes
    assert len(large.images) == 10**6 and not drawn
    small = demo_world(3, 5, pixel_transform, clip=False)
    assert len(small.images) == 3
    first = list(itertools.islice(large.images, 3))
    again = list(small.images)
    assert len(again) == 3
    scenes = make_scenes(3, seed=5)
    for lazy, made, scene in zip(first, again, scenes, strict=True):
        assert lazy.name == made.name
        assert torch.equal(lazy.pixels, made.pixels)
        assert torch.equal(lazy.pixels, pixel_transform(scene.image.convert("RGB")))
        assert lazy.labels == made.labels == [obj.shape for obj in scene.objects]
        assert lazy.masks.keys() == made.masks.keys()
        for name in lazy.masks:
            assert np.array_equal(lazy.masks[name], made.masks[name])
    # iterating again starts again from the seed
    assert torch.equal(next(iter(large.images)).pixels, first[0].pixels)


def test_a_demo_world_evaluation_keeps_its_figures(tmp_path):
    """Two demo-world scenes evaluated end to end: each line equals the one the scenes give through the API."""
    import heatmap

    out = tmp_path / "out"
    result = invoke("eval", "--model", "demo", "--demo-world", 2, "--seed", 3, "--method", "rollout",
                    "--protocol", "perturbation", "--protocol", "pointing", "--no-random", "-o", out)
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    scenes = make_scenes(2, seed=3)
    expected = heatmap.evaluate("demo", [scene.image for scene in scenes], ["rollout"],
                                protocol=["perturbation", "pointing"],
                                masks=[{obj.shape: obj.mask for obj in scene.objects} for scene in scenes], seed=3)
    assert len(written) == len(expected) == 2
    for line, reference in zip(written, expected, strict=True):
        wanted = reference.as_json()
        assert line["input"].startswith("demo-world seed 3 scene")
        assert {key: value for key, value in line.items() if key != "input"} == \
            {key: value for key, value in wanted.items() if key != "input"}
