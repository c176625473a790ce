"""Nothing lost: no run replaces another run's files, outputs are never inputs, a file error fails its input only.

Each test runs the console script's entry point (``heatmap.cli.app:main``,
in this process, with its own stdout and stderr) into one output folder, and
then checks that every manifest line points at a map that is still the one
its own run wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from heatmap.demo.shapes_world import make_scenes
from heatmap.outputs import output_stems, slug, text_name
from helpers.console import console_script

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
SCENE = SAMPLES / "shapes_002_red-heart_pink-cross.png"


def heatmap(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    """The console script's entry point with ``--json``: its exit code, stdout and stderr."""
    result = console_script(*args, "--json")
    if check:
        assert result.returncode == 0, result.stderr
    return result


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def assert_every_line_points_at_its_own_map(out: Path, maps_by_line: list[bytes]) -> None:
    """Line i's .npy is still the bytes its run wrote, and no two lines share a file."""
    entries = manifest(out)
    assert len(entries) == len(maps_by_line)
    files = [entry["files"]["npy"] for entry in entries]
    assert len(set(files)) == len(files), files
    for name, written in zip(files, maps_by_line, strict=True):
        assert (out / name).read_bytes() == written


def last_map(out: Path) -> bytes:
    return (out / manifest(out)[-1]["files"]["npy"]).read_bytes()


def test_two_option_sets_into_one_folder_keep_both_maps(tmp_path):
    out = tmp_path / "heatmaps"
    heatmap("rollout", SCENE, "-m", "demo", "-o", out)
    first = last_map(out)
    heatmap("rollout", SCENE, "-m", "demo", "-o", out, "--head-fusion", "max", "--discard-ratio", "0.9")
    second = last_map(out)
    assert first != second
    assert_every_line_points_at_its_own_map(out, [first, second])
    # a resumed first run finds its own map, intact
    assert json.loads(heatmap("rollout", SCENE, "-m", "demo", "-o", out, "--skip-existing").stdout)["skipped"] == 1
    assert_every_line_points_at_its_own_map(out, [first, second])


def test_a_classifier_and_a_clip_map_of_the_same_name_both_stay(tmp_path):
    out = tmp_path / "heatmaps"
    heatmap("chefer-generic", SCENE, "-m", "demo", "-o", out, "--target", "heart")
    classifier = last_map(out)
    heatmap("clip", SCENE, "-m", "demo", "-o", out, "--text", "heart")
    assert_every_line_points_at_its_own_map(out, [classifier, last_map(out)])


def test_texts_in_any_script_get_distinct_stable_names(tmp_path):
    out = tmp_path / "heatmaps"
    heatmap("clip", SCENE, "-m", "demo", "-o", out, "--text", "красное сердце")
    cyrillic = last_map(out)
    heatmap("clip", SCENE, "-m", "demo", "-o", out, "--text", "🙂")
    assert_every_line_points_at_its_own_map(out, [cyrillic, last_map(out)])
    names = [entry["files"]["npy"] for entry in manifest(out)]
    assert "красное_сердце" in names[0]  # the letters of every script are kept
    # the name of a text never depends on the other texts of a run
    assert text_name("🙂") != text_name("🙃") and text_name("a cat") != text_name("a-cat")
    assert text_name("red") == "red" and slug("tabby, tabby cat") == "tabby_tabby_cat"


def test_stems_never_clash(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("x.png", "x.jpg", "x_png.png", "X.PNG"):
        shutil.copy(SCENE, folder / name)
    stems = output_stems(sorted(folder.iterdir()))
    assert len({stem.casefold() for stem in stems}) == 4, stems
    out = tmp_path / "heatmaps"
    heatmap("chefer-generic", folder, "-m", "demo", "-o", out)
    entries = manifest(out)
    assert len({entry["files"]["npy"].casefold() for entry in entries}) == 4
    assert len({entry["input"] for entry in entries}) == 4


@pytest.mark.parametrize("out_name,recursive", [("photos", False), ("photos/heatmaps", True)])
def test_outputs_are_never_inputs(tmp_path, out_name, recursive):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, scene in enumerate(make_scenes(2, seed=5)):
        scene.image.save(folder / f"scene{i}.png")
    extra = ["-r"] if recursive else []
    for _ in range(3):
        summary = json.loads(heatmap("chefer-generic", folder, *extra, "-m", "demo", "-o", tmp_path / out_name).stdout)
        assert summary["inputs"] == 2
    assert all(".chefer-generic." not in Path(entry["input"]).name for entry in manifest(tmp_path / out_name))


def test_a_very_long_file_name_is_explained(tmp_path):
    long_name = tmp_path / ("a" * 240 + ".png")
    shutil.copy(SCENE, long_name)
    out = tmp_path / "heatmaps"
    result = heatmap("clip", long_name, SCENE, "-m", "demo", "-o", out, "--text", "a very long caption " * 8)
    assert json.loads(result.stdout)["explained"] == 2
    assert all(len(name.encode()) < 255 for name in (p.name for p in out.iterdir()))


def test_a_file_that_cannot_be_written_fails_its_input_only(tmp_path):
    out = tmp_path / "heatmaps"
    heatmap("chefer-generic", SCENE, "-m", "demo", "-o", out)
    blocked = out / manifest(out)[0]["files"]["png"]
    shutil.rmtree(out)
    out.mkdir()
    blocked.mkdir()  # a folder where that input's overlay must go: the write fails
    other = SAMPLES / "shapes_003_purple-triangle_orange-cross.png"
    result = heatmap("chefer-generic", SCENE, other, "-m", "demo", "-o", out, check=False)
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and summary["failed"] == 1 and summary["explained"] == 1
    assert "cannot write" in summary["failures"][0] and SCENE.name in summary["failures"][0]
    assert [Path(entry["input"]).name for entry in manifest(out)] == [other.name]
    assert np.load(out / manifest(out)[0]["files"]["npy"]).shape == (12, 12)


def test_a_folder_of_nasty_inputs_loses_nothing(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("good.png", "x.png", "x.jpg", "x_png.png", "a" * 240 + ".png"):
        shutil.copy(SCENE, folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "drawing.svg").write_text("<svg/>")
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    out = folder  # the worst case: the output folder is the input folder
    first = heatmap("chefer-generic", folder, "-m", "demo", "-o", out, check=False)
    summary = json.loads(first.stdout)
    assert first.returncode == 1 and summary["explained"] == 5 and summary["failed"] == 2
    assert summary["left_out"] == 2  # the .svg and the dangling link, each named with --verbose
    written = {entry["files"]["npy"]: (out / entry["files"]["npy"]).read_bytes() for entry in manifest(out)}
    # rerun as is, resumed, and with other options into the same folder: nothing earlier is touched
    heatmap("chefer-generic", folder, "-m", "demo", "-o", out, "--skip-existing", check=False)
    again = json.loads(heatmap("rollout", folder, "-m", "demo", "-o", out, "--head-fusion", "max",
                               check=False).stdout)
    assert again["explained"] == 5  # the first run's overlays and maps are not inputs
    for name, data in written.items():
        assert (out / name).read_bytes() == data
    files = [entry["files"]["npy"] for entry in manifest(out)]
    assert len(files) == len(set(files)) == 10
