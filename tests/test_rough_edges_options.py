"""Messages that name what the user gave: clip's start layers and the snapshot fixture's failures."""

from __future__ import annotations

import json

import pytest
import torch
from test_pytest_plugin import TEST_VIT, run, vit_suite

from helpers.console import console_script

pytest_plugins = ["pytester"]

SCENE = "sample_images/shapes_002_red-heart_pink-cross.png"


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_clip_start_layer_error_names_the_option_given(tmp_path):
    # The demo CLIP's text tower has 2 blocks: --start-layer 3 also sets its start, and is out of range there.
    result = console_script("clip", SCENE, "--model", "demo", "--text", "cat", "--start-layer", "3",
                            "-o", tmp_path / "out")
    assert result.returncode == 2
    error = " ".join(result.stderr.split())
    assert "--start-layer" in error and "text tower" in error
    assert "unless --text-start-layer is given" in error
    assert "use -2..1" in error
    assert "text tower (--text-start-layer)" not in error


def test_clip_text_start_layer_error_still_names_its_option(tmp_path):
    result = console_script("clip", SCENE, "--model", "demo", "--text", "cat", "--start-layer", "0",
                            "--text-start-layer", "5", "-o", tmp_path / "out")
    assert result.returncode == 2
    error = " ".join(result.stderr.split())
    assert "text tower (--text-start-layer)" in error and "use -2..1" in error
    assert "unless" not in error


@pytest.mark.parametrize("keep", [0, 60, -8])  # empty, in the header, in the data
def test_a_truncated_snapshot_fails_in_one_message(pytester, keep):
    vit_suite(pytester, TEST_VIT)
    run(pytester)
    npy = pytester.path / "test_model" / "test_vit.npy"
    npy.write_bytes(npy.read_bytes()[:keep])
    result = run(pytester)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "heatmap snapshot test_model/test_vit.npy is unreadable" in output
    assert "pytest --heatmap-update" in output
    assert "During handling of the above exception" not in output and "Traceback" not in output


def test_a_changed_top_1_class_blames_the_model_or_the_arguments(pytester):
    vit_suite(pytester, '''
        def test_top1(heatmap_snapshot, image):
            heatmap_snapshot(build_vit(), image.unsqueeze(0), method="rollout")
    ''')
    run(pytester)
    record_file = pytester.path / "test_model" / "test_top1.json"
    record = json.loads(record_file.read_text())
    top1 = record["target"]
    record_file.write_text(json.dumps({**record, "target": (top1 + 1) % 5}))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    output = " ".join(result.stdout.str().split())
    assert f"the model's top-1 class changed from target {(top1 + 1) % 5} to target {top1}" in output
    assert "weights or the model changed, or the test's arguments did" in output
    assert "pytest --heatmap-update" in output
    assert "If the test's new arguments are intended" not in output
