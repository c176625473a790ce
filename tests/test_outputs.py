"""Writing results: names, atomic files, manifest lines, token strips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap.outputs import ResultWriter, output_stems, slug, target_names
from heatmap.render import COLORMAPS, text_strip


def test_output_stems_are_distinct_and_stable():
    paths = [Path("/x/a/cat.jpg"), Path("/x/b/cat.jpg"), Path("/x/dog.png"), Path("/x/a/cat.png")]
    assert output_stems(paths) == ["a__cat_jpg", "b__cat_jpg", "dog", "a__cat_png"]
    assert output_stems([Path("/x/dog.png")]) == ["dog"]


def test_target_names_slug_labels_and_number_clashes():
    assert slug("tabby, tabby cat") == "tabby_tabby_cat"
    assert target_names(["crane", "tabby, tabby cat", "crane"]) == {0: "0-crane", 1: "tabby_tabby_cat", 2: "2-crane"}
    assert target_names(None) == {}


def test_writer_writes_files_then_one_manifest_line_each(tmp_path):
    writer = ResultWriter(tmp_path / "out", "demo", "viridis", 0.4)
    picture = Image.new("RGB", (40, 30), "white")
    heatmap = np.arange(12, dtype=np.float64).reshape(3, 4)
    entry = writer.write(Path("in/scene.png"), "scene", picture, None, heatmap, method="rollout",
                         target_name="star", record={"target": 3, "label": "star", "score": 1.5},
                         extra_images={"tokens": Image.new("RGB", (5, 5))})
    assert entry["files"] == {"npy": "scene.rollout.star.npy", "png": "scene.rollout.star.png",
                              "tokens": "scene.rollout.star.tokens.png"}
    saved = np.load(tmp_path / "out" / "scene.rollout.star.npy")
    assert saved.dtype == np.float32 and np.array_equal(saved, heatmap.astype(np.float32))
    with Image.open(tmp_path / "out" / "scene.rollout.star.png") as png:
        assert png.size == (40, 30)
    writer.write(Path("in/scene.png"), "scene", picture, None, heatmap, method="rollout",
                 target_name="circle", record={"target": 0, "label": "circle", "score": 0.5})
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["star", "circle"]
    assert json.loads(lines[0])["map_shape"] == [3, 4] and json.loads(lines[0])["model"] == "demo"
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]


def test_text_strip_shades_the_most_relevant_piece_hottest():
    strip = text_strip(["a", "red", "circle"], np.array([0.0, 1.0, 0.5]), colormap="gray")
    pixels = np.asarray(strip)
    assert pixels.shape[0] > 10 and pixels.shape[1] > 30
    # gray: 0 -> black cell, 1 -> white cell; sample each cell's top-left corner
    assert tuple(pixels[0, 0]) == tuple(COLORMAPS["gray"][0])
    widths = np.flatnonzero(np.any(np.diff(pixels[0].astype(int), axis=0) != 0, axis=1))
    assert tuple(pixels[0, widths[0] + 1]) == tuple(COLORMAPS["gray"][255])
    with pytest.raises(ValueError):
        text_strip(["a"], np.array([1.0, 2.0]))
    assert text_strip([], np.array([])).size[1] > 0
