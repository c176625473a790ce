"""What a user is told: each message names the right option, says what to do, and nothing leaks.

Each test runs the console script's entry point (``heatmap.cli.app:main``,
usage errors included) with its own stdout and stderr; a test whose answer
depends on the environment a process starts with (an offline, empty Hugging
Face cache, torch made unimportable) runs it in a fresh process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from helpers.console import console_script

SCENE = Path(__file__).resolve().parents[1] / "sample_images" / "shapes_002_red-heart_pink-cross.png"


def heatmap_process(*args: object, cache: Path) -> subprocess.CompletedProcess:
    """The console script in a fresh process, offline, with ``cache`` as its Hugging Face cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run(["heatmap", *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def heatmap(*args: object) -> subprocess.CompletedProcess:
    """The console script's entry point in this process: its exit code, stdout and stderr."""
    return console_script(*args)


def test_clip_offline_names_its_own_option(tmp_path):
    result = heatmap_process("clip", SCENE, "--text", "a cat", "-o", tmp_path / "out", cache=tmp_path / "empty-cache")
    assert result.returncode == 1
    assert "--pretrained PATH" in result.stderr and "--checkpoint" not in result.stderr


def test_a_local_clip_checkpoint_loads_without_a_random_init_warning(tmp_path, caplog):
    import open_clip
    import torch
    from safetensors.torch import save_file

    # ViT-S-32: open_clip's smallest ViT-B-32-like architecture; the loading path is the same for any size
    torch.manual_seed(0)
    save_file(open_clip.create_model("ViT-S-32").state_dict(), tmp_path / "s32.safetensors")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = heatmap("clip", SCENE, "-m", "ViT-S-32", "--pretrained", tmp_path / "s32.safetensors",
                         "--text", "a cat", "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    # open_clip says it with logging.warning: in this process the record is caught, not printed
    said = result.stderr + "\n".join(record.getMessage() for record in caplog.records)
    assert "initialized randomly" not in said and "No pretrained weights" not in said
    assert len(list((tmp_path / "out").glob("*.npy"))) == 1


def test_an_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = heatmap("chefer-generic", SCENE, "-m", "no_such_model_so_loading_would_fail", "-o", blocker / "out")
    assert result.returncode == 1
    assert "cannot write to the output folder" in result.stderr and "choose another --out" in result.stderr
    assert "no_such_model" not in result.stderr  # refused before the model was even looked up
    assert "internal error" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unwritable_report_is_one_line_with_advice(tmp_path):
    out = tmp_path / "out"
    assert heatmap("rollout", SCENE, "-m", "demo", "-o", out, "--quiet").returncode == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = heatmap("compare", out, out, "--report", blocker / "report.xml", "--debug")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot write the report" in last and "report.xml" in last and "choose another --report" in last
    assert "internal error" not in result.stderr and "rerun with --debug" not in result.stderr


def test_json_always_prints_one_line(tmp_path):
    failing = (["rollout", SCENE, "-m", "vit_nonexistent_model"], ["rollout", tmp_path / "missing.png", "-m", "demo"])
    for args in failing:
        result = heatmap(*args, "-o", tmp_path / "out", "--json")
        lines = result.stdout.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1
        summary = json.loads(lines[0])
        assert summary["exit_code"] == result.returncode and summary["error"]


def test_an_unsupported_architecture_is_refused_before_any_download(tmp_path):
    result = heatmap_process("rollout", SCENE, "-m", "resnet18", "-o", tmp_path / "out",
                             cache=tmp_path / "empty-cache")
    assert result.returncode == 1
    assert "ResNet is not a timm ViT" in result.stderr
    assert "download" not in result.stderr


def test_a_usage_error_is_one_line_and_help_shows_flags_plainly():
    result = heatmap("rollout", SCENE, "--nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: No such option: --nope (Possible options: --model, --panel, --top-k); see heatmap rollout --help"]
    help_text = heatmap("rollout", "--help").stdout
    assert "-q, --quiet" in help_text and "<bool>" not in help_text


def test_bad_paths_and_options_are_answered_without_torch(tmp_path):
    # torch made unimportable: an answer that needed it would crash instead
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['heatmap'] + sys.argv[1:]; "
            "from heatmap.cli.app import main; main()")
    for args, message in ((["rollout", tmp_path / "missing.png", "-m", "demo"], "no such file or folder"),
                          (["rollout", SCENE, "--discard-ratio", "2"], "discard ratio 2.0 is out of range"),
                          (["clip", SCENE], "give at least one --text")):
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
        assert result.returncode in (1, 2) and message in result.stderr, result.stderr
