"""transformers models by repo id from a Hugging Face cache (offline), from a save_pretrained folder, and the errors.

The cache is written here: tiny models saved with ``save_pretrained`` into the
hub cache's layout (``models--org--name/snapshots/<commit>`` and
``refs/main``); the command and the API then run in a fresh process with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``, so nothing can be
downloaded.
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

from transformers import CLIPImageProcessor, ViTImageProcessor  # noqa: E402

import heatmap  # noqa: E402
from heatmap.cli.app import app  # noqa: E402
from helpers.hf_models import clip_pair, clip_tokenizer, vit_pair  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def save_to_cache(cache: Path, repo_id: str, *savables) -> Path:
    """Save each object into the snapshot of ``repo_id`` in the hub cache layout; the snapshot folder."""
    org, name = repo_id.split("/")
    folder = cache / f"models--{org}--{name}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    for savable in savables:
        savable.save_pretrained(snapshot)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache with a tiny ViT and a tiny CLIP, their processors and tokenizer; and an image."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "hub"
    vit = vit_pair("vit")[1]
    vit.config.id2label = {i: f"shape {i}" for i in range(5)}
    vit.config.label2id = {f"shape {i}": i for i in range(5)}
    vit_processor = ViTImageProcessor(size={"height": 32, "width": 32})
    vit_folder = save_to_cache(cache, "tiny-org/tiny-vit", vit, vit_processor)
    clip = clip_pair()[1]
    clip_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer = clip_tokenizer(root / "tokenizer-files")
    save_to_cache(cache, "tiny-org/tiny-clip", clip, clip_processor, tokenizer)
    image = root / "picture.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(image)
    return {"cache": cache, "image": image, "vit": vit, "vit_processor": vit_processor, "vit_folder": vit_folder,
            "clip": clip, "clip_processor": clip_processor, "tokenizer": tokenizer}


def offline(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# The console script's (or a fresh process's) float32 maps against this process's: the difference measured
# here is 0, natively and with ATEN_CPU_CAPABILITY=default; 4e-7 of the map's maximum was measured on an
# AMD EPYC (the CLIP's maps). 4e-6 of the maximum is 10x that.
MAP_TOLERANCE = 4e-6


def run(args, cache, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=offline(cache), **kwargs)


def test_the_command_loads_a_repo_id_from_the_cache_offline(hub, tmp_path):
    out = tmp_path / "out"
    result = run(["heatmap", "chefer-generic", str(hub["image"]), "--model", "tiny-org/tiny-vit", "--target",
                  "shape 3", "--out", str(out)], hub["cache"])
    assert result.returncode == 0, result.stderr
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["model"] == "tiny-org/tiny-vit" and entry["label"] == "shape 3" and entry["target"] == 3
    saved = np.load(out / entry["files"]["npy"])
    expected = heatmap.explain(hub["vit"], [str(hub["image"])], "chefer-generic", target=3,
                               processor=hub["vit_processor"]).maps[0].numpy()
    assert saved.shape == (4, 4)
    np.testing.assert_allclose(saved, expected, rtol=0, atol=MAP_TOLERANCE * np.abs(expected).max())


def test_clip_by_repo_id_from_the_cache_offline(hub, tmp_path):
    out = tmp_path / "out"
    result = run(["heatmap", "clip", str(hub["image"]), "--model", "tiny-org/tiny-clip", "--text", "a red circle",
                  "--text", "cat", "--out", str(out)], hub["cache"])
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [entry["text"] for entry in entries] == ["a red circle", "cat"]
    assert entries[0]["word_pieces"] == ["a", "red", "circle"] and len(entries[0]["token_relevance"]) == 3
    expected = heatmap.explain(hub["clip"], [str(hub["image"])], "chefer-generic", texts=["a red circle", "cat"],
                               processor=hub["tokenizer"])
    for t, entry in enumerate(entries):
        saved = np.load(out / entry["files"]["npy"])
        reference = expected.maps[0, t].numpy()
        np.testing.assert_allclose(saved, reference, rtol=0, atol=MAP_TOLERANCE * np.abs(reference).max())


def test_the_api_loads_a_repo_id_from_the_cache_offline(hub):
    code = ("import heatmap, json; r = heatmap.explain('tiny-org/tiny-vit', [{image!r}], 'rollout', target=2); "
            "print(json.dumps(r.maps[0].tolist())); "
            "c = heatmap.explain('tiny-org/tiny-clip', [{image!r}], 'rollout', texts=['cat']); "
            "print(json.dumps(c.maps[0, 0].tolist()))").format(image=str(hub["image"]))
    result = run([sys.executable, "-c", code], hub["cache"])
    assert result.returncode == 0, result.stderr
    vit_map, clip_map = (torch.tensor(json.loads(line)) for line in result.stdout.splitlines()[-2:])
    expected = heatmap.explain(hub["vit"], [str(hub["image"])], "rollout", target=2, processor=hub["vit_processor"])
    assert torch.allclose(vit_map, expected.maps[0], rtol=0, atol=MAP_TOLERANCE * float(expected.maps[0].abs().max()))
    expected = heatmap.explain(hub["clip"], [str(hub["image"])], "rollout", texts=["cat"], processor=hub["tokenizer"])
    assert torch.allclose(clip_map, expected.maps[0, 0], rtol=0,
                          atol=MAP_TOLERANCE * float(expected.maps[0, 0].abs().max()))


def test_a_model_neither_cached_nor_downloadable_gets_one_line_naming_the_fix(hub, tmp_path):
    result = run(["heatmap", "rollout", str(hub["image"]), "--model", "tiny-org/not-cached", "--out",
                  str(tmp_path / "out")], hub["cache"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not in the local Hugging Face cache" in lines[0] and "hf download tiny-org/not-cached" in lines[0]
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_save_pretrained_folder_works_and_its_weights_are_identified(hub, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["rollout", str(hub["image"]), "--model", str(hub["vit_folder"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["weights"].startswith("sha256:")


def test_the_wrong_command_for_the_model_says_which_to_use(hub):
    result = runner.invoke(app, ["clip", str(hub["image"]), "--model", str(hub["vit_folder"]), "--text", "cat"])
    assert result.exit_code == 2
    assert "classifier" in result.output and "method command" in result.output


def test_without_transformers_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(heatmap.UsageError, match=r'pip install "vit-heatmap\[hf\]"'):
        heatmap.load("google/vit-base-patch16-224")


def test_a_cache_without_the_tokenizer_files_is_an_error_not_an_empty_tokenizer(hub, tmp_path):
    # transformers builds a tokenizer with no vocabulary from the config alone when its files are missing
    clip = clip_pair()[1]
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    save_to_cache(hub["cache"], "tiny-org/clip-without-tokenizer", clip, processor)
    result = run(["heatmap", "clip", str(hub["image"]), "--model", "tiny-org/clip-without-tokenizer", "--text", "cat",
                  "--out", str(tmp_path / "out")], hub["cache"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the tokenizer of tiny-org/clip-without-tokenizer" in lines[0]
    assert "the cached copy is incomplete" in lines[0] and "hf download" in lines[0]


def test_a_folder_without_an_image_processor_gets_its_familys_defaults(tmp_path):
    from torchvision import transforms as T
    from transformers import DeiTImageProcessor

    from heatmap.models.hf.loading import default_image_processor
    from heatmap.models.hf.preprocess import transform_from_processor

    deit = vit_pair("deit")[1]
    ours = transform_from_processor(default_image_processor(deit), "deit")
    # DeiT's own defaults (resize 256, crop 224, bicubic, its mean and std), at this model's 32 px: 37, then 32
    theirs = DeiTImageProcessor()
    resize, crop, normalise = (step for step in ours.transforms if isinstance(step, (T.Resize, T.CenterCrop,
                                                                                     T.Normalize)))
    assert resize.size == (37, 37) and int(theirs.resample) == 3  # PIL's bicubic
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert crop.size == (32, 32)
    assert list(normalise.mean) == list(theirs.image_mean) and list(normalise.std) == list(theirs.image_std)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    deit.save_pretrained(tmp_path / "deit")
    adapter = heatmap.load(str(tmp_path / "deit"), device="cpu")
    assert adapter.preprocess([picture])[0].shape == (1, 3, 32, 32)


def test_processor_is_for_model_objects_and_an_image_processor_is_no_tokenizer(hub):
    clip = clip_pair()[1]
    with pytest.raises(heatmap.UsageError, match="pass processor="):
        heatmap.explain(clip, [str(hub["image"])], "rollout", texts=["cat"], processor=hub["clip_processor"])
    with pytest.raises(heatmap.UsageError, match="processor= is for a transformers model object"):
        heatmap.explain("demo", [str(hub["image"])], "rollout", processor=hub["vit_processor"])
