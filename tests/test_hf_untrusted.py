"""Code in a model's own files never runs: a config naming custom code (``auto_map``) is refused in one line.

transformers asks ``Do you wish to run the custom code? [y/N]`` on stdout for
a config whose ``model_type`` it does not know and whose ``auto_map`` names a
Python file next to it; a ``y`` on stdin would import that file. vit-heatmap
passes ``trust_remote_code=False`` to every ``from_pretrained``, so the run is
refused with no prompt, whatever stdin says. The model's Python file writes a
marker file when imported: the marker must never appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# the console script's entry point, run by this interpreter (and so by the heatmap it imports)
CLI = [sys.executable, "-c", "from heatmap.cli.app import main; main()"]


def write_custom_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config names a class in ``custom.py``, which writes ``marker`` when imported."""
    folder.mkdir(parents=True)
    config = {"model_type": "custom-vit", "architectures": ["CustomViT"],
              "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomViT"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"import pathlib\n\npathlib.Path({str(marker)!r}).write_text('imported')\n")
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def run_answering_yes(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", **env}
    return subprocess.run(CLI + args, input="y\n", capture_output=True, text=True, timeout=300, env=environment)


def assert_refused_without_running(result: subprocess.CompletedProcess[str], marker: Path, name: str) -> None:
    assert not marker.exists(), "the model's own Python file was imported"
    printed = result.stdout + result.stderr
    assert "[y/N]" not in printed and "Do you wish" not in printed, printed
    assert result.returncode == 2, printed  # as for every model vit-heatmap does not support
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert name in lines[0] and "custom code" in lines[0] and "never runs" in lines[0]
    assert "ViTForImageClassification" in lines[0]  # what is supported


def test_a_folder_whose_config_names_custom_code_is_refused_without_running_it(tmp_path, image):
    marker = tmp_path / "custom-code-imported"
    folder = write_custom_code_model(tmp_path / "custom-model", marker)
    result = run_answering_yes(["rollout", str(image), "--model", str(folder), "--out", str(tmp_path / "out")],
                               tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert_refused_without_running(result, marker, str(folder))
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_cached_repo_whose_config_names_custom_code_is_refused_without_running_it(tmp_path, image):
    marker = tmp_path / "custom-code-imported"
    cache = tmp_path / "hub"
    repo = cache / "models--custom-org--custom-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    write_custom_code_model(repo / "snapshots" / COMMIT, marker)
    result = run_answering_yes(["rollout", str(image), "--model", "custom-org/custom-vit", "--out",
                                str(tmp_path / "out")], tmp_path, HF_HUB_CACHE=str(cache))
    assert_refused_without_running(result, marker, "custom-org/custom-vit")
