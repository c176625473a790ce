"""A transformers model is explained with the weights and the preprocessing saved with it, or not at all.

Weights: a ``save_pretrained`` folder whose ``model.safetensors`` lacks some
(or all) of the class's tensors, or holds others, or holds them in another
shape, is an error naming them; transformers would fill the gaps with random
weights and say so only in logs that are kept quiet.

Preprocessing: transformers 5 saves a processor's image settings nested in
``processor_config.json`` (no ``preprocessor_config.json``); they are read
from there, in a folder and from the cache offline. A snapshot whose cached
file listing (written by ``hf download``) names no image-processor file has
none: its family's defaults are used. A snapshot the cache holds only part
of, with no listing, cannot say: offline, that is an error, never a guess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from transformers import CLIPImageProcessor, CLIPProcessor, ViTImageProcessor  # noqa: E402

from heatmap.cli.app import app  # noqa: E402
from heatmap.models.hf.loading import load_hf  # noqa: E402
from helpers.hf_models import clip_pair, clip_tokenizer, vit_pair  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]  # not CLIP's defaults
runner = CliRunner()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def saved_vit(folder: Path) -> Path:
    vit = vit_pair("vit")[1]
    vit.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def rewrite_weights(folder: Path, change) -> None:
    weights = folder / "model.safetensors"
    state = load_file(weights)
    save_file(change(state), weights, metadata={"format": "pt"})


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("kept", ["some", "none"])
def test_a_folder_missing_weights_is_an_error_naming_them(tmp_path, image, kept):
    folder = saved_vit(tmp_path / "vit")
    everything = load_file(folder / "model.safetensors")
    if kept == "some":
        rewrite_weights(folder, lambda state: {key: value for key, value in state.items()
                                               if "layers.1." not in key and not key.startswith("classifier.")})
    else:
        rewrite_weights(folder, lambda state: {})
    missing = [key for key in everything if kept == "none" or "layers.1." in key or key.startswith("classifier.")]
    result = runner.invoke(app, ["rollout", str(image), "--model", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert f"{folder}: its weights do not fit ViTForImageClassification: missing keys: " in line
    assert f"({len(missing)})" in line and sorted(missing)[0] in line  # the first few by name, then the count
    assert "save the complete model there with save_pretrained" in line
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_unexpected_and_reshaped_weights_are_an_error_naming_them(tmp_path, image):
    folder = saved_vit(tmp_path / "vit")

    def change(state):
        state["extra.weight"] = torch.zeros(3)
        state["classifier.bias"] = torch.zeros(7)
        return state

    rewrite_weights(folder, change)
    result = runner.invoke(app, ["rollout", str(image), "--model", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert "unexpected keys: extra.weight (1)" in line
    assert "shape mismatches: classifier.bias (7,) vs (5,) (1)" in line


def test_a_complete_folder_still_loads(tmp_path):
    adapter = load_hf(str(saved_vit(tmp_path / "vit")), "classifier", torch.device("cpu"))
    assert type(adapter.model).__name__ == "ViTForImageClassification"


def clip_with_processor(folder: Path, tokenizer_files: Path) -> Path:
    """A tiny CLIP and its processor saved by transformers: image settings nested in processor_config.json."""
    clip_pair()[1].save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                         image_mean=MEAN, image_std=STD)
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(tokenizer_files)).save_pretrained(folder)
    return folder


def normalisation(transform) -> tuple[list[float], list[float]]:
    (step,) = [step for step in transform.transforms if isinstance(step, T.Normalize)]
    return [float(value) for value in step.mean], [float(value) for value in step.std]


def test_a_clip_folder_saved_with_its_processor_is_preprocessed_with_its_mean_and_std(tmp_path):
    folder = clip_with_processor(tmp_path / "clip", tmp_path / "tokenizer-files")
    if (folder / "preprocessor_config.json").exists():
        pytest.skip("this transformers release saves the image settings in their own file")
    adapter = load_hf(str(folder), "image-text", torch.device("cpu"))
    mean, std = normalisation(adapter.transform)
    np.testing.assert_allclose(mean, MEAN, rtol=0, atol=1e-7)
    np.testing.assert_allclose(std, STD, rtol=0, atol=1e-7)


def snapshot(cache: Path, repo_id: str) -> Path:
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def list_snapshot(cache: Path, repo_id: str, files: list[str]) -> None:
    """The file listing ``hf download`` keeps with a complete snapshot (huggingface_hub's documented format)."""
    org, name = repo_id.split("/")
    trees = cache / f"models--{org}--{name}" / "trees"
    trees.mkdir()
    listing = {"format_version": 1, "files": {file: {"size": 1, "blob_id": "0" * 40} for file in files}}
    (trees / f"{COMMIT}.json").write_text(json.dumps(listing))


LOAD_FROM_CACHE = """
import json, sys, torch
from torchvision import transforms as T
from heatmap.errors import HeatmapError
from heatmap.models.hf.loading import load_hf
for repo_id, kind in json.loads(sys.argv[1]):
    try:
        adapter = load_hf(repo_id, kind, torch.device("cpu"))
    except HeatmapError as error:
        print(json.dumps({"error": str(error)}))
        continue
    (step,) = [step for step in adapter.transform.transforms if isinstance(step, T.Normalize)]
    print(json.dumps({"mean": [float(v) for v in step.mean], "std": [float(v) for v in step.std]}))
"""


@pytest.fixture(scope="module")
def from_cache(tmp_path_factory):
    """What a fresh process, offline, reads from a cache: a CLIP saved with its processor; a ViT whose
    complete snapshot has no image processor; a ViT the cache holds only part of."""
    root = tmp_path_factory.mktemp("hf-cache")
    cache = root / "hub"
    clip_folder = clip_with_processor(snapshot(cache, "tiny-org/clip-with-processor"), root / "tokenizer-files")
    for repo_id, listed in (("tiny-org/vit-listed", True), ("tiny-org/vit-partial", False)):
        vit_pair("vit")[1].save_pretrained(snapshot(cache, repo_id))
        if listed:
            list_snapshot(cache, repo_id, [".gitattributes", "README.md", "config.json", "model.safetensors"])
    repos = [["tiny-org/clip-with-processor", "image-text"], ["tiny-org/vit-listed", "classifier"],
             ["tiny-org/vit-partial", "classifier"]]
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", LOAD_FROM_CACHE, json.dumps(repos)], capture_output=True,
                            text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()[-3:]]
    return {"clip": answers[0], "listed": answers[1], "partial": answers[2],
            "nested": not (clip_folder / "preprocessor_config.json").exists()}


def test_a_cached_clip_saved_with_its_processor_is_preprocessed_with_its_mean_and_std_offline(from_cache):
    if not from_cache["nested"]:
        pytest.skip("this transformers release saves the image settings in their own file")
    assert "error" not in from_cache["clip"], from_cache["clip"]
    np.testing.assert_allclose(from_cache["clip"]["mean"], MEAN, rtol=0, atol=1e-7)
    np.testing.assert_allclose(from_cache["clip"]["std"], STD, rtol=0, atol=1e-7)


def test_a_complete_cached_snapshot_without_an_image_processor_gets_its_familys_defaults(from_cache):
    import huggingface_hub

    if not hasattr(huggingface_hub, "get_cached_repo_tree"):
        pytest.skip("this huggingface_hub keeps no file listing with a snapshot")
    defaults = ViTImageProcessor()
    assert "error" not in from_cache["listed"], from_cache["listed"]
    np.testing.assert_allclose(from_cache["listed"]["mean"], defaults.image_mean, rtol=0, atol=1e-7)
    np.testing.assert_allclose(from_cache["listed"]["std"], defaults.image_std, rtol=0, atol=1e-7)


def test_a_partial_cached_snapshot_offline_is_an_error_not_a_guess(from_cache):
    message = from_cache["partial"].get("error", "")
    assert "image processor of tiny-org/vit-partial" in message and "hf download tiny-org/vit-partial" in message
