"""Links planted in an output folder (a shared one, say) never redirect a write outside it.

Every name a run writes under is predictable: the write probe, the
temporary files, ``manifest.jsonl``, the maps and overlays, ``eval.*``,
the compare report and pictures, the snapshot files. Each test plants a
symbolic link under one of them, pointing at a file outside the folder, and
checks that file byte for byte afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.cli.runner import ensure_writable
from heatmap.errors import HeatmapError
from heatmap.outputs import (
    MANIFEST,
    NpyWriter,
    ResultWriter,
    append_manifest_line,
    remove_stale_temporaries,
    write_atomically,
)
from heatmap.pipeline import MapRecord

runner = CliRunner()
PRECIOUS = b'{"input": "precious.png", "files": {}}\n'  # a whole manifest line: nothing a repair would drop


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside every output folder of the test."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def temporary_name(path: Path) -> Path:
    """The temporary name a write of ``path`` by this process used to take: ``.<name>.tmp-<host>-<pid>``."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for index in range(2):
        pixels = (np.random.default_rng(index).random((64, 64, 3)) * 255).astype(np.uint8)
        paths.append(folder / f"img{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def reference(pictures, tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A run's folder and, per input's stem, the names of its files (what a planter can predict)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = invoke("rollout", *pictures, "-m", "demo", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    return out, {Path(line["input"]).stem: line["files"] for line in lines}


def test_write_probe_name_planted_as_link_leaves_its_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    link = out / f".heatmap-write-check-{os.getpid()}"
    plant(link, victim)
    ensure_writable(out)
    assert victim.read_bytes() == PRECIOUS
    assert link.is_symlink() and sorted(path.name for path in out.iterdir()) == [link.name]


@pytest.mark.parametrize("existing", [True, False], ids=["to-a-file", "to-nowhere"])
def test_temporary_name_planted_as_link_leaves_its_target_untouched(tmp_path, victim, existing):
    if not existing:
        victim.unlink()
    out = tmp_path / "out"
    plant(temporary_name(out / "scene.npy"), victim)
    write_atomically(out / "scene.npy", b"the map")
    assert (out / "scene.npy").read_bytes() == b"the map" and not (out / "scene.npy").is_symlink()
    if existing:
        assert victim.read_bytes() == PRECIOUS
    else:
        assert not victim.exists()


def test_output_name_planted_as_link_is_refused_and_its_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    plant(out / "scene.npy", victim)
    with pytest.raises(OSError, match="symbolic link"):
        write_atomically(out / "scene.npy", b"the map")
    assert victim.read_bytes() == PRECIOUS
    assert (out / "scene.npy").is_symlink() and [path.name for path in out.iterdir()] == ["scene.npy"]


def test_temporary_names_of_a_killed_writer_are_still_found_and_removed(tmp_path):
    """A writer killed between its write and its rename leaves a temporary that the next run removes."""
    out = tmp_path / "out"
    out.mkdir()
    killed = ("import os, sys\nfrom pathlib import Path\nimport heatmap.outputs as outputs\n"
              "outputs.os.replace = lambda *args: os._exit(9)\n"
              "outputs.write_atomically(Path(sys.argv[1]) / 'scene.npy', b'the map')\n")
    assert subprocess.run([sys.executable, "-c", killed, str(out)], check=False).returncode == 9
    left = [path.name for path in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".scene.npy.tmp-{socket.gethostname()}-")
    assert remove_stale_temporaries(out) == 1 and list(out.iterdir()) == []


@pytest.mark.parametrize("existing", [True, False], ids=["to-a-file", "to-nowhere"])
def test_manifest_planted_as_link_is_refused_in_one_line(pictures, tmp_path, victim, existing):
    if not existing:
        victim.unlink()
    out = tmp_path / "out"
    plant(out / MANIFEST, victim)
    result = invoke("rollout", *pictures, "-m", "demo", "-o", out, "--quiet")
    assert result.exit_code != 0
    assert f"{out / MANIFEST} is a symbolic link" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if existing:
        assert victim.read_bytes() == PRECIOUS
    else:
        assert not victim.exists()
    assert [path.name for path in out.iterdir()] == [MANIFEST]


def test_manifest_linked_while_a_run_writes_is_never_appended_through(tmp_path, victim):
    out = tmp_path / "out"
    writer = ResultWriter(out, "demo", [NpyWriter()])
    record = MapRecord(np.ones((2, 2)), "star", None, 0, "star", 1.0, fields={"target": 0})
    writer.write(Path("a.png"), "a", None, record, method="rollout", target_name="star", common={})
    (out / MANIFEST).unlink()
    plant(out / MANIFEST, victim)
    with pytest.raises(HeatmapError, match="symbolic link"):
        append_manifest_line(out / MANIFEST, {"input": "b.png", "files": {}})
    assert victim.read_bytes() == PRECIOUS


def test_a_map_name_planted_as_link_fails_that_input_alone(pictures, reference, tmp_path, victim):
    """The input whose map name is a link fails (exit 1), its target untouched; the other input is written."""
    _, names = reference
    out = tmp_path / "out"
    plant(out / names["img0"]["npy"], victim)
    plant(out / names["img0"]["png"], victim)
    result = invoke("rollout", *pictures, "-m", "demo", "-o", out, "--quiet")
    assert result.exit_code == 1, result.output
    assert "img0.png" in result.stderr and "symbolic link" in result.stderr
    assert victim.read_bytes() == PRECIOUS
    assert (out / names["img0"]["npy"]).is_symlink() and (out / names["img0"]["png"]).is_symlink()
    lines = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [Path(line["input"]).name for line in lines] == ["img1.png"]
    assert all((out / name).is_file() and not (out / name).is_symlink() for name in names["img1"].values())


DEMO_EVAL = ["eval", "--model", "demo", "--demo-world", "1", "--method", "rollout", "--protocol", "perturbation",
             "--json"]


@pytest.mark.parametrize("name", ["eval.jsonl", "eval.json", "eval.png"])
def test_eval_result_planted_as_link_to_nowhere_is_refused(tmp_path, victim, name):
    victim.unlink()
    out = tmp_path / "out"
    plant(out / name, victim)
    result = invoke(*DEMO_EVAL, "-o", out)
    assert result.exit_code == 2, result.output
    assert "another --out" in result.stderr
    assert not victim.exists()
    assert [path.name for path in out.iterdir()] == [name]


def test_eval_plot_temporary_planted_as_link_leaves_its_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    plant(out / ".eval.png.tmp.png", victim)
    result = invoke(*DEMO_EVAL, "-o", out)
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == PRECIOUS
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "eval.png").is_symlink()


def test_eval_json_linked_while_the_run_evaluates_is_never_written_through(tmp_path, victim, monkeypatch):
    import heatmap.evaluation.evaluate as evaluation

    out = tmp_path / "out"
    summarise = evaluation.summarise

    def planting_summarise(lines, *settings):
        plant(out / "eval.json", victim)
        return summarise(lines, *settings)

    monkeypatch.setattr(evaluation, "summarise", planting_summarise)
    result = invoke(*DEMO_EVAL, "-o", out)
    assert result.exit_code != 0
    assert "eval.json" in result.stderr and "symbolic link" in result.stderr
    assert victim.read_bytes() == PRECIOUS


def two_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A baseline and a candidate whose one map differs: compare fails and draws a difference picture."""
    folders = []
    for side, heatmap in (("baseline", np.eye(4)), ("candidate", np.eye(4)[::-1])):
        writer = ResultWriter(tmp_path / side, "demo", [NpyWriter()])
        record = MapRecord(heatmap, "star", None, 0, "star", 1.0, fields={"target": 0, "label": "star", "score": 1.0})
        writer.write(Path("a.png"), "a", None, record, method="rollout", target_name="star", common={})
        folders.append(writer.out_dir)
    return folders[0], folders[1]


def test_compare_report_name_and_its_temporary_planted_as_links(tmp_path, victim):
    baseline, candidate = two_folders(tmp_path)
    reports = tmp_path / "reports"
    plant(temporary_name(reports / "report.xml"), victim)
    result = invoke("compare", baseline, candidate, "--report", reports / "report.xml", "--json")
    assert result.exit_code == 1, result.output
    assert victim.read_bytes() == PRECIOUS
    assert (reports / "report.xml").read_bytes().startswith(b"<?xml")
    plant(reports / "linked.xml", victim)
    result = invoke("compare", baseline, candidate, "--report", reports / "linked.xml", "--json")
    assert result.exit_code == 1 and "symbolic link" in result.stderr
    assert victim.read_bytes() == PRECIOUS


def test_compare_difference_picture_planted_as_link_is_refused(tmp_path, victim):
    baseline, candidate = two_folders(tmp_path)
    pictures = tmp_path / "pictures"
    plant(pictures / "a.rollout.star.diff.png", victim)
    result = invoke("compare", baseline, candidate, "--diff-dir", pictures, "--json")
    assert result.exit_code == 1 and "symbolic link" in result.stderr, result.output
    assert victim.read_bytes() == PRECIOUS


def test_snapshot_file_planted_as_link_fails_the_test_and_is_never_written_through(request, tmp_path, victim):
    from heatmap.testing.pytest_plugin import Computed, HeatmapSnapshot, SnapshotFiles

    files = SnapshotFiles(tmp_path / "snapshots" / "test_x.npy", tmp_path / "snapshots" / "test_x.json",
                          "snapshots/test_x.npy")
    plant(files.npy, victim)
    computed = Computed(np.ones((1, 2, 2), np.float32), ["target 0"], [1.0], {"method": "rollout"}, clip=False)
    with pytest.raises(pytest.fail.Exception, match="symbolic link"):
        HeatmapSnapshot(request).write(files, computed)
    assert victim.read_bytes() == PRECIOUS and files.npy.is_symlink()
