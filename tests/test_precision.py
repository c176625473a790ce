"""docs/METHODS.md, "Precision": every explanation computes in the wider of
float32 and the model's dtype, or in the dtype ``--precision`` asks for, on a
converted copy of the model (the caller's model is never changed)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import heatmap
from heatmap.cli.app import app
from heatmap.explainers.registry import method as find_method
from helpers.models import TEXTS, tiny_clip, tiny_vit

METHODS = heatmap.methods()  # every registered method


@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_classifier_is_explained_in_float32(method, images):
    model = tiny_vit().to(torch.bfloat16)
    as_float32 = copy.deepcopy(model).float()  # the same weights, exactly (bfloat16 -> float32 is exact)
    result = heatmap.explain(model, images, method, target=[0, 1, 2])
    assert result.maps.dtype == torch.float32
    expected = heatmap.explain(as_float32, images, method, target=[0, 1, 2])
    assert torch.equal(result.maps, expected.maps)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # the caller's model untouched


@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_clip_is_explained_in_float32(method):
    model = tiny_clip().to(torch.bfloat16)
    torch.manual_seed(5)
    images = torch.randn(2, 3, 32, 32)
    result = heatmap.explain(model, images, method, texts=TEXTS)
    expected = heatmap.explain(copy.deepcopy(model).float(), images, method, texts=TEXTS)
    assert result.maps.dtype == torch.float32
    assert torch.equal(result.maps, expected.maps)
    if "text" in find_method(method).towers:
        assert result.text_relevance[0][0].dtype == torch.float32
        assert all(torch.equal(a, b) for a, b in zip(result.text_relevance[1], expected.text_relevance[1],
                                                      strict=True))
    else:  # an image-only method (legrad, full-lrp) gives no text relevance
        assert result.text_relevance is None and expected.text_relevance is None
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.numerics
@pytest.mark.parametrize("method", METHODS)
def test_precision_float64_explains_a_float64_copy(method, images):
    model = tiny_vit()
    result = heatmap.explain(model, images, method, target=[0, 1, 2], precision="float64")
    assert result.maps.dtype == torch.float64 and result.scores.dtype == torch.float64
    expected = heatmap.explain(copy.deepcopy(model).double(), images.double(), method, target=[0, 1, 2])
    assert torch.equal(result.maps, expected.maps)
    assert next(model.parameters()).dtype == torch.float32


def test_precision_float32_is_obeyed_for_a_float64_model(images):
    model = tiny_vit().double()
    result = heatmap.explain(model, images, "chefer-generic", precision="float32")
    assert result.maps.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float64


def test_unknown_precision_is_a_usage_error(images):
    with pytest.raises(heatmap.HeatmapError, match="unknown precision 'float16'; use one of auto, float32, float64"):
        heatmap.explain(tiny_vit(), images, "rollout", precision="float16")


def test_cli_precision_is_recorded_and_resumes_only_the_same_precision(tmp_path):
    runner = CliRunner()
    image = "sample_images/shapes_002_red-heart_pink-cross.png"

    def run(*extra):
        result = runner.invoke(app, ["transformer-attribution", image, "-m", "demo", "-o", str(tmp_path),
                                     "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    run("--precision", "float64")
    entry = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[-1])
    assert entry["precision"] == "float64"
    saved = np.load(tmp_path / entry["files"]["npy"])
    assert saved.dtype == np.float32  # the .npy is float32 whatever the precision (docs/METHODS.md, Rendering)
    assert run("--precision", "float64", "--skip-existing")["skipped"] == 1
    assert run("--skip-existing")["skipped"] == 0  # a float32 map is another result
    entry = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[-1])
    assert entry["precision"] == "float32"


def test_cli_rejects_an_unknown_precision():
    result = CliRunner().invoke(app, ["rollout", "sample_images", "-m", "demo", "--precision", "half"])
    assert result.exit_code == 2 and "half" in result.output
