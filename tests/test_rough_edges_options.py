"""Messages that name what the user gave: clip's start layers (the fixture's messages: test_pytest_plugin)."""

from __future__ import annotations

from helpers.console import console_script

SCENE = "sample_images/shapes_002_red-heart_pink-cross.png"


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
