"""Writing results: names, atomic files, manifest lines, token strips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap.outputs import (
    OVERLAY_SIZE,
    ResultWriter,
    configuration_tag,
    default_writers,
    output_stems,
    slug,
    target_names,
)
from heatmap.pipeline import MapRecord
from heatmap.render import COLORMAPS, text_strip


def test_output_stems_are_distinct_and_stable():
    paths = [Path("/x/a/cat.jpg"), Path("/x/b/cat.jpg"), Path("/x/dog.png"), Path("/x/a/cat.png")]
    assert output_stems(paths) == ["a__cat.jpg", "b__cat.jpg", "dog", "a__cat.png"]
    assert output_stems([Path("/x/dog.png")]) == ["dog"]


def test_target_names_slug_labels_and_number_clashes():
    assert slug("tabby, tabby cat") == "tabby_tabby_cat"
    assert target_names(["crane", "tabby, tabby cat", "crane"]) == {0: "0-crane", 1: "tabby_tabby_cat", 2: "2-crane"}
    assert target_names(None) == {}


def test_writer_writes_files_then_one_manifest_line_each(tmp_path):
    writer = ResultWriter(tmp_path / "out", "demo", default_writers("viridis", 0.4))
    picture = Image.new("RGB", (40, 30), "white")
    heatmap = np.arange(12, dtype=np.float64).reshape(3, 4)

    def record(target, label, score, **extra):
        return MapRecord(heatmap, label, None, target, label, score,
                         fields={"target": target, "label": label, "score": score}, **extra)

    entry = writer.write(Path("in/scene.png"), "scene", picture,
                         record(3, "star", 1.5, word_pieces=["a", "star"], token_relevance=np.ones(2, np.float32)),
                         method="rollout", target_name="star", common={"weights": None})
    # the overlay's name carries a tag of how it is drawn (colormap, alpha, size), recorded beside it
    look = configuration_tag({"colormap": "viridis", "alpha": 0.4, "overlay_size": OVERLAY_SIZE})
    assert entry["files"] == {"npy": "scene.rollout.star.npy", "png": f"scene.rollout.star.{look}.png",
                              "tokens": "scene.rollout.star.tokens.png"}
    saved = np.load(tmp_path / "out" / "scene.rollout.star.npy")
    assert saved.dtype == np.float32 and np.array_equal(saved, heatmap.astype(np.float32))
    with Image.open(tmp_path / "out" / f"scene.rollout.star.{look}.png") as png:
        assert png.size == (40, 30)
    writer.write(Path("in/scene.png"), "scene", picture, record(0, "circle", 0.5), method="rollout",
                 target_name="circle", common={"weights": None})
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
