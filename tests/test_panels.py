"""Labelled pictures: ``--panel``, ``--scale batch``, ``heatmap gallery`` and the run record ``runs.jsonl``.

The pictures are checked by their pixels: the panel's overlay tile is the
overlay of the enlarged input with the map's own range (or the run's), and
the gallery holds each method's overlay of the same target.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import heatmap
from heatmap.outputs import read_manifest
from heatmap.render import overlay
from heatmap.render.panel import GAP, MARGIN, TILE_MIN, caption_of, fit_tile
from helpers.console import console_script

ROOT = Path(__file__).resolve().parents[1]
SCENES = sorted((ROOT / "sample_images").glob("shapes_00*.png"))
TWO_OBJECTS = ROOT / "sample_images" / "shapes_002_red-heart_pink-cross.png"


def grid_cells(maps) -> tuple[int, int]:
    """The shape of the one map of a one-image, one-target explanation."""
    return tuple(maps.shape[-2:])


def find_tile(canvas: np.ndarray, tile: np.ndarray, left: int) -> int:
    """The row at which ``tile`` is pasted in ``canvas`` at column ``left`` (the header's height varies)."""
    height, width = tile.shape[:2]
    for top in range(canvas.shape[0] - height + 1):
        if np.array_equal(canvas[top:top + height, left:left + width], tile):
            return top
    raise AssertionError("the tile is not in the picture")


@pytest.fixture(scope="module")
def demo_box() -> tuple:
    """The crop box the demo classifier's transform gives the 96 px scenes."""
    adapter = heatmap.load("demo", device="cpu")
    return adapter.preprocess([Image.open(TWO_OBJECTS).convert("RGB")])[1][0]


def test_a_panel_shows_the_input_and_the_overlay_enlarged_with_the_maps_own_range(tmp_path, demo_box):
    out = tmp_path / "out"
    result = console_script("chefer-generic", TWO_OBJECTS, "-m", "demo", "--top-k", "2", "--panel", "-o", out)
    assert result.returncode == 0, result.stderr
    entries = read_manifest(out)
    assert len(entries) == 2 and all("panel" in entry["files"] for entry in entries)
    picture = Image.open(TWO_OBJECTS).convert("RGB")
    tile, tile_box = fit_tile(picture, demo_box)
    assert min(tile.size) >= TILE_MIN and tile.width % picture.width == 0  # enlarged by a whole factor
    for entry in entries:
        assert {"probability", "class_rank", "classes"} <= set(entry)
        assert entry["class_rank"] == entry["rank"]  # a top-k run: the k-th class is ranked k
        heatmap_ = np.load(out / entry["files"]["npy"])
        panel = np.asarray(Image.open(out / entry["files"]["panel"]).convert("RGB"))
        top = find_tile(panel, np.asarray(tile), MARGIN)  # the input, unboxed: the demo crop is the whole scene
        expected = overlay(tile, heatmap_, tile_box, value_range=(float(heatmap_.min()), float(heatmap_.max())))
        left = MARGIN + tile.width + GAP
        assert np.array_equal(panel[top:top + tile.height, left:left + tile.width], np.asarray(expected))


def test_the_caption_flags_a_class_the_model_does_not_predict():
    fields = {"target": 3, "label": "star", "score": 1.5, "probability": 0.0421, "class_rank": 3, "classes": 6}
    caption = caption_of("rollout", "demo", fields, top_k=1)
    assert caption.title == "star (class 3)"
    assert caption.figures == "logit 1.50 · p 4.2% · rank 4 of 6"
    assert caption.warning == "not the class the model predicts"
    assert caption_of("rollout", "demo", fields, top_k=4).warning is None
    assert caption_of("rollout", "demo", fields, top_k=3).warning == "not among the model's top 3 classes"
    clip = caption_of("legrad", "demo", {"text": "a red heart", "logit": 9.12, "probability": 0.997})
    assert (clip.title, clip.figures, clip.warning) == ("a red heart", "logit 9.12 · p 99.7%", None)


def test_scale_batch_colours_every_map_of_the_run_by_one_range(tmp_path, demo_box):
    out = tmp_path / "out"
    result = console_script("chefer-generic", *SCENES[:2], "-m", "demo", "--target", "heart", "--target", "star",
                            "--scale", "batch", "--panel", "-o", out)
    assert result.returncode == 0, result.stderr
    entries = read_manifest(out)
    maps = [np.load(out / entry["files"]["npy"]) for entry in entries]
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    assert len(entries) == 4
    for entry, heatmap_ in zip(entries, maps, strict=True):
        assert entry["overlay"]["scale"] == "batch" and entry["overlay"]["value_range"] == [low, high]
        picture = Image.open(entry["input"]).convert("RGB")
        expected = overlay(picture, heatmap_, demo_box, value_range=(low, high))
        assert np.array_equal(np.asarray(Image.open(out / entry["files"]["png"])), np.asarray(expected))
    # the weakest map peaks below the strongest: with one range its hottest pixel is not the colormap's top
    weakest = min(range(4), key=lambda i: float(maps[i].max()))
    assert float(maps[weakest].max()) < high


def test_scale_batch_refuses_shards_and_resuming(tmp_path):
    for flag in (["--shard", "1/2"], ["--skip-existing"]):
        result = console_script("rollout", TWO_OBJECTS, "-m", "demo", "--scale", "batch", *flag, "-o", tmp_path)
        assert result.returncode == 2 and "--scale batch" in result.stderr and "one range" in result.stderr


def test_a_panel_is_part_of_what_skip_existing_finds_done(tmp_path):
    out = tmp_path / "out"
    assert console_script("rollout", TWO_OBJECTS, "-m", "demo", "-o", out, "-q").returncode == 0
    again = console_script("rollout", TWO_OBJECTS, "-m", "demo", "-o", out, "--panel", "--skip-existing", "--json")
    assert json.loads(again.stdout)["explained"] == 1  # the earlier run drew no panel: not done
    third = console_script("rollout", TWO_OBJECTS, "-m", "demo", "-o", out, "--panel", "--skip-existing", "--json")
    assert json.loads(third.stdout)["skipped"] == 1


def test_every_run_appends_its_record(tmp_path):
    out = tmp_path / "out"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    first = console_script("rollout", TWO_OBJECTS, broken, "-m", "demo", "-o", out, "-q")
    assert first.returncode == 1
    assert console_script("clip", TWO_OBJECTS, "-m", "demo", "--text", "a red heart", "-o", out, "-q").returncode == 0
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [record["method"] for record in records] == ["rollout", "chefer-generic"]
    assert [record["kind"] for record in records] == ["classifier", "clip"]
    assert records[0]["command"][:2] == ["heatmap", "rollout"] and records[0]["device"] == "cpu"
    assert (records[0]["explained"], records[0]["maps"], records[0]["exit_code"]) == (1, 1, 1)
    assert len(records[0]["failures"]) == 1 and "broken.png" in records[0]["failures"][0]
    assert records[0]["versions"]["vit-heatmap"] == heatmap.__version__ and "torch" in records[0]["versions"]
    assert records[1]["failures"] == [] and math.isfinite(records[1]["seconds"])


def test_gallery_shows_every_method_for_the_same_class(tmp_path, demo_box):
    out = tmp_path / "out"
    result = console_script("gallery", TWO_OBJECTS, "-m", "demo", "--target", "cross", "--method", "rollout",
                            "--method", "full-lrp", "--method", "chefer-generic", "-o", out)
    assert result.returncode == 0, result.stderr
    (picture_file,) = out.glob("*.gallery.cross.*.png")
    grid = np.asarray(Image.open(picture_file).convert("RGB"))
    picture = Image.open(TWO_OBJECTS).convert("RGB")
    tile, tile_box = fit_tile(picture, demo_box)
    top = find_tile(grid, np.asarray(tile), MARGIN)
    for column, method in ((1, "rollout"), (3, "chefer-generic")):  # column 2: full-lrp's refusal
        explained = heatmap.explain(heatmap.load("demo", device="cpu"), [picture], method, target="cross")
        expected = overlay(tile, explained.maps.reshape(grid_cells(explained.maps)).float().numpy(), tile_box)
        left = MARGIN + column * (tile.width + 10)
        assert np.array_equal(grid[top:top + tile.height, left:left + tile.width], np.asarray(expected)), method
    refusal = grid[top:top + tile.height, MARGIN + 2 * (tile.width + 10):MARGIN + 2 * (tile.width + 10) + tile.width]
    assert (refusal == 235).mean() > 0.8  # grey, with the reason written on it


def test_gallery_with_an_unknown_method_is_a_usage_error(tmp_path):
    result = console_script("gallery", TWO_OBJECTS, "-m", "demo", "--method", "nope", "-o", tmp_path)
    assert result.returncode == 2 and "nope" in result.stderr
