"""`heatmap compare`: metrics, pairing, thresholds, JUnit report, difference pictures, the README's CI recipe."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.compare.metrics import Thresholds, compare_maps
from heatmap.outputs import MANIFEST
from helpers.demo_runs import perturbed_demo_weights, scene_folder

runner = CliRunner()
README = Path(__file__).parents[1] / "README.md"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- the metrics -------------------------------------------------------------------

def test_identical_and_rescaled_maps_agree():
    heatmap = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    for other in (heatmap.copy(), heatmap * 3.5):
        metrics = compare_maps(heatmap, other)
        # on the min-max scale the rescaled float32 map differs by 4.0e-8 (natively and with
        # ATEN_CPU_CAPABILITY=default): 1e-6 is 25x that
        assert metrics.max_diff < 1e-6 and metrics.corr == pytest.approx(1.0) and metrics.top_iou == 1.0
        assert metrics.failures(Thresholds()) == []


def test_each_metric_names_itself_when_it_fails():
    rng = np.random.default_rng(1)
    a = rng.random((8, 8))
    b = a.copy()
    b[0, 0] += 0.5  # one cell: max-diff fails first
    assert [f.split()[0] for f in compare_maps(a, b).failures(Thresholds())][:1] == ["max-diff"]
    shuffled = rng.permutation(a.ravel()).reshape(8, 8)
    failures = compare_maps(a, shuffled).failures(Thresholds())
    assert {f.split()[0] for f in failures} == {"max-diff", "corr", "top-iou"}
    assert compare_maps(a, shuffled).failures(Thresholds(max_diff=2, min_corr=-1, min_top_iou=0)) == []


def test_top_cells_overlap_is_an_intersection_over_union():
    a = np.zeros((10, 10))
    a.flat[:10] = np.arange(10, 0, -1)  # top 10% = cells 0..9
    b = np.zeros((10, 10))
    b.flat[5:15] = np.arange(10, 0, -1)  # cells 5..14: 5 shared of 15
    assert compare_maps(a, b).top_iou == pytest.approx(5 / 15)


def test_degenerate_maps():
    zeros = np.zeros((4, 4))
    assert compare_maps(zeros, zeros).failures(Thresholds()) == []
    assert compare_maps(zeros, np.ones((4, 4))).corr == 0.0
    nan = np.full((4, 4), np.nan)
    assert all(math.isnan(value) for value in vars(compare_maps(nan, zeros)).values())
    assert len(compare_maps(nan, zeros).failures(Thresholds())) == 3
    with pytest.raises(ValueError, match="shapes differ"):
        compare_maps(zeros, np.zeros((5, 5)))


# -- two result folders -------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return scene_folder(tmp_path_factory.mktemp("images"), 6)


@pytest.fixture(scope="module")
def perturbed_weights(tmp_path_factory):
    return perturbed_demo_weights(tmp_path_factory.mktemp("weights") / "perturbed.safetensors")


def run(images: Path, out: Path, *extra) -> Path:
    result = invoke("chefer-generic", images, "-m", "demo", "-o", out, "--top-k", 2, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def baseline(images, tmp_path_factory):
    return run(images, tmp_path_factory.mktemp("baseline"), "--batch-size", 8)


def test_reruns_and_batch_sizes_pass(images, baseline, tmp_path):
    candidate = run(images, tmp_path / "rerun", "--batch-size", 1)
    result = invoke("compare", baseline, candidate, "--report", tmp_path / "report.xml")
    assert result.exit_code == 0, result.output
    assert "12 of 12 entries agree" in result.output
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("12", "0")


def test_a_perturbed_weight_fails_with_a_report_and_pictures(images, baseline, perturbed_weights, tmp_path):
    candidate = run(images, tmp_path / "candidate", "--checkpoint", perturbed_weights)
    report, pictures = tmp_path / "ci" / "report.xml", tmp_path / "diffs"
    result = invoke("compare", baseline, candidate, "--report", report, "--diff-dir", pictures)
    assert result.exit_code == 1
    assert "entries differ" in result.output and "max-diff" in result.output
    cases = ElementTree.parse(report).getroot().iter("testcase")
    failed = {case.get("name"): case.find("failure").get("message") for case in cases
              if case.find("failure") is not None}
    assert failed and all("max-diff" in message or "corr" in message for message in failed.values())
    assert all(name.startswith(str(images)) and "[chefer-generic," in name for name in failed)
    drawn = sorted(pictures.glob("*.diff.png"))
    assert len(drawn) == len(failed)
    with Image.open(drawn[0]) as picture:
        assert picture.size[0] > 3 * picture.size[1] // 2  # three panels side by side
    # looser thresholds let the same candidate pass
    assert invoke("compare", baseline, candidate, "--max-diff", 1, "--min-corr", 0.5,
                  "--min-top-iou", 0).exit_code == 0


@pytest.fixture(scope="module")
def plain_vit_weights(tmp_path_factory):
    """A random test_vit (timm's smallest ViT, 160 px; one patch convolution, so full-lrp runs) and a copy
    with its patch convolution moved by 5% of its spread."""
    import timm

    torch.manual_seed(0)
    weights = timm.create_model("test_vit", pretrained=False, num_classes=4).state_dict()
    folder = tmp_path_factory.mktemp("vit")
    save_file(weights, folder / "vit.safetensors")
    kernel = weights["patch_embed.proj.weight"]
    noise = torch.randn(kernel.shape, generator=torch.Generator().manual_seed(0))
    weights["patch_embed.proj.weight"] = kernel + 0.05 * kernel.std() * noise
    save_file(weights, folder / "moved.safetensors")
    return folder / "vit.safetensors", folder / "moved.safetensors"


def test_pixel_level_maps_compare_like_token_maps(images, plain_vit_weights, tmp_path):
    weights, moved = plain_vit_weights
    scene = images / "scene0.png"

    def full_lrp(out: Path, checkpoint: Path) -> Path:
        result = invoke("full-lrp", scene, "-m", "test_vit", "--checkpoint", checkpoint,
                        "-o", out, "--quiet", "--target", 1)
        assert result.exit_code == 0, result.output
        return out

    baseline = full_lrp(tmp_path / "baseline", weights)
    record = json.loads((baseline / MANIFEST).read_text())
    assert record["map_shape"] == [160, 160]  # the model's input size, not its 10x10 grid
    assert np.load(baseline / record["files"]["npy"]).shape == (160, 160)
    again = invoke("compare", baseline, full_lrp(tmp_path / "rerun", weights))
    assert again.exit_code == 0 and "1 of 1 entries agree" in again.output, again.output
    changed = invoke("compare", baseline, full_lrp(tmp_path / "moved", moved), "--diff-dir", tmp_path / "diffs")
    assert changed.exit_code == 1 and "entries differ" in changed.output, changed.output
    assert len(list((tmp_path / "diffs").glob("*.diff.png"))) == 1


def test_missing_and_extra_entries_fail_and_are_reported(images, baseline, tmp_path):
    candidate = tmp_path / "candidate"
    shutil.copytree(baseline, candidate)
    lines = (candidate / MANIFEST).read_text().splitlines()
    extra = json.loads(lines[1]) | {"input": "elsewhere/new.png"}
    (candidate / MANIFEST).write_text("\n".join(lines[1:] + [json.dumps(extra)]) + "\n")
    result = invoke("compare", baseline, candidate, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    problems = {entry["entry"]: entry["problems"] for entry in summary["results"] if not entry["passed"]}
    assert len(problems) == 2
    assert any("missing in the candidate" in p for p in problems.values() for p in p)
    assert any(name.startswith("elsewhere/new.png") and "extra" in p[0] for name, p in problems.items())


def test_a_folder_without_manifest_is_a_one_line_error(baseline, tmp_path):
    result = invoke("compare", baseline, tmp_path)
    assert result.exit_code == 1 and "has no manifest.jsonl" in result.output


def test_clip_runs_compare_by_text(images, tmp_path):
    for out in ("a", "b"):
        result = invoke("clip", images / "scene0.png", images / "scene1.png", "-m", "demo", "--text", "a red heart",
                        "--text", "a blue star", "-o", tmp_path / out, "--quiet")
        assert result.exit_code == 0, result.output
    result = invoke("compare", tmp_path / "a", tmp_path / "b")
    assert result.exit_code == 0 and "4 of 4 entries agree" in result.output


# -- the README's CI recipe -------------------------------------------------------------

def readme_blocks(heading: str, language: str) -> list[str]:
    """The code blocks of ``language`` in the README section under ``heading``."""
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)


def bash(script: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, capture_output=True, text=True,
                          timeout=600)


def test_readme_ci_recipe_passes_then_catches_a_changed_model(images, perturbed_weights, tmp_path):
    make_baseline, ci_job = readme_blocks("### CI recipe", "bash")
    shutil.copytree(images, tmp_path / "images")
    assert bash(make_baseline, tmp_path).returncode == 0
    passing = bash(ci_job, tmp_path)
    assert passing.returncode == 0, passing.stderr
    suite = ElementTree.parse(tmp_path / "heatmap-report.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 6 and suite.get("failures") == "0"
    # the model changes (the committed baseline stays): the same job now fails
    failing = bash(ci_job.replace("--model demo", f"--model demo --checkpoint {perturbed_weights}"), tmp_path)
    assert failing.returncode == 1, failing.stderr
    assert list((tmp_path / "heatmap-diffs").glob("*.diff.png"))
