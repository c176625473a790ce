"""`heatmap clip`: files, tables, texts files, local checkpoints, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.demo.shapes_world import make_scenes

runner = CliRunner()
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory):
    """A tiny architecture registered with open_clip the way users add their own configs."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "tiny-test-clip.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / "tiny-test-clip.json")
    return "tiny-test-clip"


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    make_scenes(1, seed=99, num_objects=3)[0].image.save(path)
    return path


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["grad-rollout", "transformer-attribution"])
def test_local_checkpoint_loads_and_explains(method, tiny_clip_name, scene_path, tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name)
    save_file(model.state_dict(), tmp_path / "tiny.safetensors")
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue star\n")
    result = runner.invoke(app, ["clip", str(scene_path), "-m", tiny_clip_name, "--pretrained",
                                 str(tmp_path / "tiny.safetensors"), "--texts-file", str(texts),
                                 "--text", "a green square", "-o", str(tmp_path / "out"), "--method", method])
    assert result.exit_code == 0, result.output
    entries = read_manifest(tmp_path / "out")
    assert {e["method"] for e in entries} == {method}
    assert [e["text"] for e in entries] == ["a green square", "a red circle", "a blue star"]
    assert sum(e["probability"] for e in entries) == pytest.approx(1.0, abs=1e-5)
    for entry in entries:
        assert np.load(tmp_path / "out" / entry["files"]["npy"]).shape == (4, 4)
        assert len(entry["word_pieces"]) == len(entry["token_relevance"]) == 3
        assert (tmp_path / "out" / entry["files"]["tokens"]).is_file()


@pytest.mark.parametrize("method,map_shape", [("legrad", (4, 4)), ("full-lrp", (32, 32))])
def test_image_only_methods_leave_the_text_relevance_out_and_say_so(method, map_shape, tiny_clip_name,
                                                                    scene_path, tmp_path):
    torch.manual_seed(0)
    save_file(open_clip.create_model(tiny_clip_name).state_dict(), tmp_path / "tiny.safetensors")
    common = ["clip", str(scene_path), "-m", tiny_clip_name, "--pretrained", str(tmp_path / "tiny.safetensors"),
              "--text", "a red circle", "--text", "a blue star", "--method", method]
    result = runner.invoke(app, [*common, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for entry in read_manifest(tmp_path / "out"):
        assert np.load(tmp_path / "out" / entry["files"]["npy"]).shape == map_shape
        assert entry["map_shape"] == list(map_shape)
        assert entry["token_relevance"] is None
        assert "explains the image tower only" in entry["token_relevance_left_out"]
        assert set(entry["files"]) == {"npy", "png"}  # no token strip
        assert "text_start_layer" not in entry["options"]
    refused = runner.invoke(app, [*common, "--text-start-layer", "0", "-o", str(tmp_path / "refused")])
    assert refused.exit_code == 2
    assert "explains the image tower only, so it has no text start layer" in refused.output


def test_checkpoint_of_another_architecture_is_a_clear_error(tiny_clip_name, scene_path, tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model(tiny_clip_name).state_dict()
    other["visual.proj"] = torch.zeros(32, 8)
    del other["text_projection"]
    save_file(other, tmp_path / "other.safetensors")
    result = runner.invoke(app, ["clip", str(scene_path), "-m", tiny_clip_name, "--pretrained",
                                 str(tmp_path / "other.safetensors"), "--text", "x"])
    assert result.exit_code == 1
    assert "does not fit tiny-test-clip: missing keys: text_projection" in result.output
    assert "shape mismatches: visual.proj (32, 8) vs (32, 16)" in result.output


@pytest.mark.parametrize("args,code,message", [
    ([], 2, "give at least one --text"),
    (["--text", "x", "-m", "ViT-B-33"], 2, "unknown CLIP model 'ViT-B-33'; did you mean ViT-B-32"),
    (["--text", "x", "-m", "ViT-B-32", "--pretrained", "nonsense"], 2, "ViT-B-32 has no pretrained tag 'nonsense'"),
    (["--text", "x", "--method", "chefer-generic", "--head-fusion", "max"], 2,
     "chefer-generic has no option ['head_fusion']"),
])
def test_bad_clip_options(scene_path, args, code, message):
    result = runner.invoke(app, ["clip", str(scene_path), *args])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_default_model_missing_from_cache_says_how_to_get_it(scene_path, tmp_path):
    import os
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["heatmap", "clip", str(scene_path), "--text", "a cat"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "ViT-B-32 (openai) are not in the local cache" in result.stderr
    assert "--model demo" in result.stderr


def test_demo_clip_with_three_texts(scene_path, tmp_path):
    scene = make_scenes(1, seed=99, num_objects=3)[0]
    texts = [obj.caption for obj in scene.objects]
    out = tmp_path / "out"
    args = ["clip", str(scene_path), "--model", "demo", "-o", str(out)]
    for text in texts:
        args += ["--text", text]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    for text in texts:
        assert text in result.stdout
    assert "probability" in result.stdout
    entries = read_manifest(out)
    assert [e["text"] for e in entries] == texts
    for entry in entries:
        assert entry["model"] == "demo" and entry["method"] == "chefer-generic"
        assert entry["options"]["start_layer"] == -1 and entry["options"]["text_start_layer"] == -1
        assert set(entry["files"]) == {"npy", "png", "tokens"}
        with Image.open(out / entry["files"]["png"]) as png:
            assert png.size == scene.image.size
        assert entry["word_pieces"][-1] == entry["text"].split()[-1]
