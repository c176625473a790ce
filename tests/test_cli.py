"""The `heatmap` command: files, manifest, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import heatmap
from heatmap.cli.app import app
from heatmap.demo.shapes_world import make_scenes

runner = CliRunner()


@pytest.fixture(scope="module")
def scenes_folder(tmp_path_factory):
    """Three shapes-world scenes (the demo model's world) and their objects."""
    folder = tmp_path_factory.mktemp("scenes")
    scenes = make_scenes(3, seed=2024)
    for i, scene in enumerate(scenes):
        scene.image.save(folder / f"scene{i}.png")
    return folder, scenes


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_imports_no_torch():
    code = "import sys, heatmap.cli.app; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_help_lists_every_method():
    result = invoke("--help")
    assert result.exit_code == 0
    for method in heatmap.methods():
        assert method in result.output


def test_console_script_on_a_folder_with_a_bad_file(scenes_folder, tmp_path):
    folder, scenes = scenes_folder
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in folder.iterdir():
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = subprocess.run(["heatmap", "chefer-generic", str(inputs), "--model", "demo", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "broken.png" in failed[0]
    entries = read_manifest(out)
    assert [Path(e["input"]).name for e in entries] == ["scene0.png", "scene1.png", "scene2.png"]
    for entry, scene in zip(entries, scenes, strict=False):
        assert entry["model"] == "demo" and entry["method"] == "chefer-generic"
        assert entry["options"] == {"start_layer": 0}
        raw = np.load(out / entry["files"]["npy"])
        assert raw.dtype == np.float32 and list(raw.shape) == entry["map_shape"] == [12, 12]
        with Image.open(out / entry["files"]["png"]) as png:
            assert png.size == scene.image.size
        # <stem>.<method>.<target>.<configuration tag>.npy (README, "Outputs")
        assert re.fullmatch(rf"{Path(entry['input']).stem}\.chefer-generic\.{entry['label']}\.[0-9a-f]{{8}}\.npy",
                            entry["files"]["npy"])


def test_cli_maps_equal_the_python_api(scenes_folder, tmp_path):
    folder, scenes = scenes_folder
    result = invoke("grad-rollout", folder / "scene1.png", "-m", "demo", "-o", tmp_path, "--discard-ratio", "0.5")
    assert result.exit_code == 0, result.output
    entry, = read_manifest(tmp_path)
    expected = heatmap.explain("demo", [folder / "scene1.png"], "grad-rollout", discard_ratio=0.5)
    assert entry["target"] == int(expected.targets[0])
    assert np.array_equal(np.load(tmp_path / entry["files"]["npy"]), expected.maps[0].numpy())
    assert entry["score"] == pytest.approx(float(expected.scores[0]))


def test_targets_by_label_and_index_and_top_k(scenes_folder, tmp_path):
    folder, _ = scenes_folder
    labels = heatmap.load("demo").labels
    result = invoke("rollout", folder / "scene0.png", "-m", "demo", "-o", tmp_path / "a",
                    "-t", labels[2], "-t", "4", "--head-fusion", "max")
    assert result.exit_code == 0, result.output
    assert [e["target"] for e in read_manifest(tmp_path / "a")] == [2, 4]
    assert read_manifest(tmp_path / "a")[0]["options"]["head_fusion"] == "max"
    result = invoke("chefer-generic", folder / "scene0.png", "-m", "demo", "-o", tmp_path / "b", "--top-k", "3")
    assert result.exit_code == 0, result.output
    entries = read_manifest(tmp_path / "b")
    assert len(entries) == 3 and entries[0]["score"] >= entries[1]["score"] >= entries[2]["score"]
    assert len(list((tmp_path / "b").glob("*.png"))) == 3


def test_two_runs_give_identical_npy_bytes(scenes_folder, tmp_path):
    folder, _ = scenes_folder
    for run in ("first", "second"):
        assert invoke("chefer-generic", folder, "-m", "demo", "-o", tmp_path / run, "--batch-size", "2").exit_code == 0
    written = sorted((tmp_path / "first").glob("*.npy"))
    assert len(written) == 3  # one map per scene: something to compare
    for path in written:
        assert path.read_bytes() == (tmp_path / "second" / path.name).read_bytes()


@pytest.mark.parametrize("args,code,message", [
    (["-t", "99"], 2, "target 99 is out of range: demo has"),
    (["-t", "circel"], 2, "demo has no class 'circel'; did you mean 'circle'"),
    (["-t", "circle", "--top-k", "2"], 2, "--target and --top-k exclude each other"),
    (["--device", "cuda"], 2, "--device cuda: CUDA is not available"),
    (["--start-layer", "9"], 2, "start layer 9 is out of range"),
    (["--model", "vit_tiny_patch17_224"], 2, "unknown model 'vit_tiny_patch17_224'"),
])
def test_bad_options_are_one_line_errors(scenes_folder, args, code, message):
    if "--device" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder, _ = scenes_folder
    model = [] if "--model" in args else ["-m", "demo"]
    result = invoke("chefer-generic", folder / "scene0.png", *model, *args)
    assert result.exit_code == code
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_discard_ratio_of_one_is_refused(scenes_folder):
    folder, _ = scenes_folder
    result = invoke("grad-rollout", folder / "scene0.png", "-m", "demo", "--discard-ratio", "1")
    assert result.exit_code == 2 and "discard ratio 1.0 is out of range" in result.output


def test_missing_and_non_image_inputs_fail_with_exit_1(scenes_folder, tmp_path):
    folder, _ = scenes_folder
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    result = invoke("rollout", tmp_path / "missing.png", text, folder / "scene2.png", "-m", "demo",
                    "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert "no such file or folder" in result.output and "notes.jpg: not an image" in result.output
    assert [Path(e["input"]).name for e in read_manifest(tmp_path / "o")] == ["scene2.png"]
    result = invoke("rollout", tmp_path / "missing.png", "-m", "demo", "-o", tmp_path / "p")
    assert result.exit_code == 1 and not (tmp_path / "p" / "manifest.jsonl").exists()


def test_debug_shows_the_traceback(scenes_folder):
    folder, _ = scenes_folder
    quiet = invoke("rollout", folder / "scene0.png", "-m", "demo", "-t", "99")
    loud = invoke("rollout", folder / "scene0.png", "-m", "demo", "-t", "99", "--debug")
    assert "Traceback" not in quiet.output and "Traceback" in loud.output
    assert loud.exit_code == quiet.exit_code == 2
