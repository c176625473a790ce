"""Unattended runs: order, shards, resume after Ctrl-C or kill, scripts' output, exit codes, determinism."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.cli.jobs import Shard
from heatmap.demo.shapes_world import make_scenes
from heatmap.outputs import MANIFEST, RUNS, files_complete, latest_entries, read_manifest

runner = CliRunner()
IMAGES = 40


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """40 shapes-world scenes in a folder, and 3 more in a subfolder."""
    folder = tmp_path_factory.mktemp("images")
    for i, scene in enumerate(make_scenes(IMAGES, seed=31, num_objects=(1, 3))):
        scene.image.save(folder / f"scene{i:02d}.png")
    (folder / "more").mkdir()
    for i, scene in enumerate(make_scenes(3, seed=32)):
        scene.image.save(folder / "more" / f"extra{i}.png")
    return folder


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def visible_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if not path.name.startswith(".")}


def map_files(folder: Path) -> dict[str, bytes]:
    """The .npy and .png files by name (the manifest's line order may differ between runs; runs.jsonl records
    each run's time)."""
    return {name: data for name, data in visible_files(folder).items() if name not in (MANIFEST, RUNS)}


def entries_by_key(folder: Path) -> dict:
    return latest_entries(read_manifest(folder))


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    """One whole run, batch size 8 (on CPU each image still runs alone)."""
    out = tmp_path_factory.mktemp("whole")
    result = invoke("chefer-generic", image_folder, "-m", "demo", "-o", out, "--batch-size", 8, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_shard_slices_cover_every_input_once():
    items = list(range(10))
    slices = [Shard(k, 3).select(items) for k in (1, 2, 3)]
    assert [len(part) for part in slices] == [3, 3, 4]
    assert sum(slices, []) == items
    assert Shard(4, 4).select([1, 2]) == [2] and Shard(1, 4).select([1, 2]) == []


@pytest.mark.parametrize("text,message", [("0/3", "K must be 1..N"), ("4/3", "K must be 1..N"),
                                          ("2", "is not K/N"), ("a/b", "is not K/N")])
def test_bad_shard_is_a_usage_error(image_folder, text, message):
    result = invoke("rollout", image_folder, "-m", "demo", "--shard", text)
    assert result.exit_code == 2 and message in result.output


def test_union_of_shards_equals_one_unsharded_run(image_folder, uninterrupted, tmp_path):
    together = tmp_path / "together"
    inputs_per_shard = []
    for k in (1, 2, 3):
        alone = tmp_path / f"shard{k}"
        for out in (alone, together):
            result = invoke("chefer-generic", image_folder, "-m", "demo", "-o", out, "--shard", f"{k}/3", "--quiet")
            assert result.exit_code == 0, result.output
        inputs_per_shard.append({entry["input"] for entry in read_manifest(alone)})
    assert sum(len(inputs) for inputs in inputs_per_shard) == IMAGES  # no overlap, no gap
    assert set().union(*inputs_per_shard) == {entry["input"] for entry in read_manifest(uninterrupted)}
    assert entries_by_key(together) == entries_by_key(uninterrupted)
    assert map_files(together) == map_files(uninterrupted)


def test_inputs_are_sorted_and_recursive_descends(image_folder, tmp_path):
    # the arguments in reverse order: the run is still in sorted order
    args = [image_folder / "scene03.png", image_folder / "scene01.png", image_folder / "more"]
    result = invoke("rollout", *args, "-m", "demo", "-o", tmp_path / "a", "--quiet")
    assert result.exit_code == 0, result.output
    assert [Path(e["input"]).name for e in read_manifest(tmp_path / "a")] == [
        "extra0.png", "extra1.png", "extra2.png", "scene01.png", "scene03.png"]
    result = invoke("rollout", image_folder, "-m", "demo", "-o", tmp_path / "b", "--recursive", "--json")
    assert json.loads(result.stdout)["inputs"] == IMAGES + 3


def test_json_summary_and_exit_codes(image_folder, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["grad-rollout", image_folder / "scene00.png", broken, "-m", "demo", "-o", tmp_path / "out"]
    result = invoke(*args, "--json")
    assert result.exit_code == 1  # some inputs failed, the others done
    summary = json.loads(result.stdout)
    assert (summary["inputs"], summary["explained"], summary["maps"], summary["failed"]) == (2, 1, 1, 1)
    assert "broken.png" in summary["failures"][0] and summary["exit_code"] == 1
    result = invoke(*args[:2], "-m", "demo", "-o", tmp_path / "out", "--skip-existing", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary.pop("seconds") >= 0  # the run's elapsed time
    assert summary | {"out": None} == {
        "out": None, "inputs_total": 1, "inputs": 1, "explained": 0, "skipped": 1, "maps": 0, "failed": 0,
        "failures": [], "left_out": 0, "left_out_files": [], "notes": [], "interrupted": False, "exit_code": 0}
    quiet = invoke(*args[:2], "-m", "demo", "-o", tmp_path / "q", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert invoke(*args[:2], "-m", "demo", "--top-k", 0).exit_code == 2  # a usage error


def test_skip_existing_redoes_what_changed(image_folder, tmp_path):
    one = image_folder / "scene05.png"
    out = tmp_path / "out"
    assert invoke("chefer-generic", one, "-m", "demo", "-o", out, "--top-k", 2, "-q").exit_code == 0
    # same request: nothing to do; top-1 is part of the top-2 already written
    for extra in ([], ["--top-k", 1]):
        result = invoke("chefer-generic", one, "-m", "demo", "-o", out, "--skip-existing", "--json", *extra)
        assert json.loads(result.stdout)["skipped"] == 1
    # other options, another target, a damaged map: done again
    entry = read_manifest(out)[0]
    other_target = min(set(range(6)) - {e["target"] for e in read_manifest(out)})
    for extra in (["--start-layer", 1], ["--target", other_target]):
        result = invoke("chefer-generic", one, "-m", "demo", "-o", out, "--skip-existing", "--json", *extra)
        assert json.loads(result.stdout)["explained"] == 1, extra
    (out / entry["files"]["npy"]).write_bytes(b"\x93NUMPY truncated")
    result = invoke("chefer-generic", one, "-m", "demo", "-o", out, "--skip-existing", "--json", "--top-k", 2)
    assert json.loads(result.stdout)["explained"] == 1
    assert files_complete(out, read_manifest(out)[-1])


def test_npy_bytes_do_not_depend_on_batch_size(image_folder, uninterrupted, tmp_path):
    result = invoke("chefer-generic", image_folder, "-m", "demo", "-o", tmp_path, "--batch-size", 1, "--quiet")
    assert result.exit_code == 0
    maps = map_files(tmp_path)
    assert len(maps) == 2 * IMAGES  # a .npy and a .png per image: something to compare
    assert maps == map_files(uninterrupted)


def test_clip_npy_bytes_do_not_depend_on_batch_size(image_folder, tmp_path):
    inputs = [image_folder / f"scene0{i}.png" for i in range(3)]
    for size in (1, 3):
        result = invoke("clip", *inputs, "-m", "demo", "--text", "a red circle", "--text", "a blue star",
                        "-o", tmp_path / str(size), "--batch-size", size, "--quiet")
        assert result.exit_code == 0, result.output
    maps = map_files(tmp_path / "1")
    assert len([name for name in maps if name.endswith(".npy")]) == 3 * 2  # 3 images x 2 texts
    assert maps == map_files(tmp_path / "3")


# -- interrupted runs -------------------------------------------------------------

def start_run(folder: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["heatmap", "chefer-generic", str(folder), "--model", "demo", "-o", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_entries(out: Path, process: subprocess.Popen, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = out / MANIFEST
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        time.sleep(0.01)
    raise AssertionError("the run wrote too few entries in time")


def assert_only_whole_files(out: Path) -> None:
    """Every manifest line points to whole files, and every visible file is whole."""
    entries = read_manifest(out)
    assert entries and all(files_complete(out, entry) for entry in entries)
    for name in map_files(out):
        path = out / name
        if path.suffix == ".npy":
            assert np.load(path).shape == (12, 12)
        else:
            with Image.open(path) as image:
                image.load()


@pytest.mark.slow  # a subprocess run over 40 images, stopped and resumed
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_run_leaves_whole_files_and_resumes_to_the_same_result(stop, image_folder, uninterrupted,
                                                                           tmp_path):
    out = tmp_path / "out"
    process = start_run(image_folder, out)
    wait_for_entries(out, process, 3)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)  # one Ctrl-C is enough to stop
    written = len(read_manifest(out))
    assert written < IMAGES, "the run finished before it was stopped"
    if stop == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in stderr and "--skip-existing" in stderr
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    else:
        assert process.returncode == -signal.SIGKILL
    assert_only_whole_files(out)

    # the stop needs a real process; the resume does not
    result = invoke("chefer-generic", image_folder, "--model", "demo", "-o", out, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] >= written - 1 and summary["skipped"] + summary["explained"] == IMAGES
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # a killed run's temporaries cleared
    assert entries_by_key(out) == entries_by_key(uninterrupted)
    assert map_files(out) == map_files(uninterrupted)
