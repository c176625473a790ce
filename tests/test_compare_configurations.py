"""`heatmap compare` on folders holding runs of several configurations (weights, precision): no configuration
hides another, whatever the order of the runs, and the table and --json name each entry's weights and precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heatmap.cli.app import app
from helpers.demo_runs import perturbed_demo_weights, scene_folder

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def wide_table(monkeypatch):
    """The table printed 250 columns wide, so that no cell is folded over two lines."""
    from heatmap.cli import console

    monkeypatch.setattr(console.stdout, "_width", 250)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return scene_folder(tmp_path_factory.mktemp("images"), 2)


@pytest.fixture(scope="module")
def perturbed_weights(tmp_path_factory):
    return perturbed_demo_weights(tmp_path_factory.mktemp("weights") / "perturbed.safetensors")


def run(images: Path, out: Path, *extra) -> Path:
    result = invoke("chefer-generic", images, "-m", "demo", "-o", out, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return out


def weights_of(folder: Path) -> set[str]:
    return {json.loads(line)["weights"] for line in (folder / "manifest.jsonl").read_text().splitlines()}


@pytest.fixture(scope="module")
def folders(images, perturbed_weights, tmp_path_factory):
    """The demo's maps alone; the demo's and a changed model's in one folder, in both orders."""
    root = tmp_path_factory.mktemp("runs")
    demo = run(images, root / "demo")
    changed = ("--checkpoint", perturbed_weights)
    demo_then_changed = run(images, run(images, root / "demo-then-changed"), *changed)
    changed_then_demo = run(images, run(images, root / "changed-then-demo", *changed))
    return demo, demo_then_changed, changed_then_demo


def compared(baseline: Path, candidate: Path) -> tuple[int, dict]:
    result = invoke("compare", baseline, candidate, "--json")
    return result.exit_code, json.loads(result.stdout)


def verdict(summary: dict) -> list[tuple]:
    """What a comparison found, entry by entry, without the folders' names."""
    return sorted((entry["entry"], entry["passed"], tuple(entry["problems"]), json.dumps(entry["weights"]),
                   json.dumps(entry["precision"])) for entry in summary["results"])


def test_runs_of_two_weights_in_one_folder_pair_by_weights_whatever_the_order(folders):
    """A baseline of the demo's maps against a folder of the demo's and a changed model's maps: the same verdict
    for either order of the two runs (the demo's maps agree, the changed model's are extra, named by their
    weights), and the same the other way round (missing)."""
    demo, demo_then_changed, changed_then_demo = folders
    (demo_weights,) = weights_of(demo)
    (changed_weights,) = weights_of(demo_then_changed) - {demo_weights}
    first_code, first = compared(demo, demo_then_changed)
    second_code, second = compared(demo, changed_then_demo)
    assert first_code == second_code == 1
    assert verdict(first) == verdict(second)
    assert first["pairing"] == ["input", "model", "method", "options", "target", "weights", "precision"]
    paired = [entry for entry in first["results"] if entry["passed"]]
    extra = [entry for entry in first["results"] if not entry["passed"]]
    assert len(paired) == len(extra) == 2  # two images, each its top-1 class
    for entry in paired:
        assert entry["weights"] == {"baseline": demo_weights, "candidate": demo_weights}
        assert entry["max_diff"] == 0.0
    for entry in extra:
        assert entry["problems"] == ["extra in the candidate (not in the baseline)"]
        assert entry["weights"] == {"baseline": None, "candidate": changed_weights}
        assert f"weights {changed_weights[:19]}" in entry["entry"]
    back_code, back = compared(demo_then_changed, demo)
    assert back_code == 1 and back["failed"] == 2
    assert all(entry["problems"] == ["missing in the candidate"] and
               entry["weights"] == {"baseline": changed_weights, "candidate": None}
               for entry in back["results"] if not entry["passed"])
    assert verdict(back) == verdict(compared(changed_then_demo, demo)[1])


def test_runs_of_two_precisions_in_one_folder_are_not_mixed(images, folders, tmp_path, wide_table):
    """float32 and float64 maps in one folder against a float32 baseline: the float64 maps are extra, the table
    shows a precision column and says why entries went unpaired."""
    demo, _, _ = folders
    both = run(images, run(images, tmp_path / "both", "--precision", "float64"), "--precision", "float32")
    code, summary = compared(demo, both)
    assert code == 1
    extra = [entry for entry in summary["results"] if not entry["passed"]]
    assert len(extra) == 2 and all(entry["precision"] == {"baseline": None, "candidate": "float64"}
                                   and "precision float64" in entry["entry"] for entry in extra)
    assert all(entry["precision"] == {"baseline": "float32", "candidate": "float32"}
               for entry in summary["results"] if entry["passed"])
    table = invoke("compare", demo, both)
    assert table.exit_code == 1
    assert "precision" in table.stdout and "float64" in table.stdout
    assert "pair only with the same weights and precision" in table.output


def test_one_configuration_each_still_compares_across_them(images, folders, tmp_path, wide_table):
    """One configuration per folder (a CI baseline and the current model): the maps are compared, as before, and
    the table shows what changed between the two sides."""
    demo, _, _ = folders
    double = run(images, tmp_path / "double", "--precision", "float64")
    code, summary = compared(demo, double)
    assert code == 0 and summary["failed"] == 0, summary
    assert summary["pairing"] == ["input", "model", "method", "options", "target"]
    assert all(entry["precision"] == {"baseline": "float32", "candidate": "float64"} for entry in summary["results"])
    table = invoke("compare", demo, double)
    assert table.exit_code == 0 and "float32 -> float64" in table.stdout
