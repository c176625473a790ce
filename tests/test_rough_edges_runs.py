"""Rough edges of runs: an empty shard, a run where every input fails, an unknown class, a very long text.

Each test runs the console script's entry point (``heatmap.cli.app:main``)
with its own stdout and stderr, 200 columns wide.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from heatmap.outputs import MANIFEST
from helpers.console import console_script

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
SCENE = SAMPLES / "shapes_002_red-heart_pink-cross.png"
DEMO_LABELS = ("circle", "square", "triangle", "star", "cross", "heart")


def heatmap(*args: object) -> subprocess.CompletedProcess:
    """The console script's entry point in this process (wide terminal): its exit code, stdout and stderr."""
    return console_script(*args, env={"COLUMNS": "200"})


def test_an_empty_shard_says_so_and_succeeds(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SCENE, folder / "only.png")
    result = heatmap("rollout", folder, "-m", "demo", "-o", tmp_path / "out", "--shard", "2/3")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "shard 2/3 has no inputs (1 input(s) over all 3 shards)" in lines[0], result.stderr
    assert not (tmp_path / "out" / MANIFEST).exists()

    as_json = heatmap("rollout", folder, "-m", "demo", "-o", tmp_path / "out", "--shard", "1/3", "--json")
    summary = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and summary["exit_code"] == 0
    assert (summary["inputs_total"], summary["inputs"], summary["explained"], summary["maps"]) == (1, 0, 0, 0)
    assert any("shard 1/3 has no inputs" in note for note in summary["notes"])

    # the last shard holds the one image (Shard.select) and explains it as before
    last = heatmap("rollout", folder, "-m", "demo", "-o", tmp_path / "out", "--shard", "3/3", "--json")
    assert last.returncode == 0 and json.loads(last.stdout)["explained"] == 1


def test_a_run_where_every_input_fails_does_not_claim_the_others_were_written(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_text("not a picture")
    (folder / "b.png").write_text("not a picture either")
    result = heatmap("rollout", folder, "-m", "demo", "-o", tmp_path / "out")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "2 input(s) failed; no input was explained" in last, result.stderr
    assert "the others were written" not in result.stderr

    # with one good input, the others were indeed written
    shutil.copy(SCENE, folder / "good.png")
    mixed = heatmap("rollout", folder, "-m", "demo", "-o", tmp_path / "out")
    assert mixed.returncode == 1
    assert "2 input(s) failed; the others were written." in mixed.stderr.strip().splitlines()[-1]


def test_an_unknown_class_lists_the_models_classes_before_any_image_is_read(tmp_path):
    # an unreadable input would be reported as it is read: the target is refused before that
    (tmp_path / "bad.png").write_text("not a picture")
    result = heatmap("rollout", SCENE, tmp_path / "bad.png", "-m", "demo", "--target", "tabby",
                     "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "demo has no class 'tabby'" in result.stderr
    assert f"its classes: {', '.join(DEMO_LABELS)}" in result.stderr, result.stderr
    assert "bad.png" not in result.stderr
    assert not (tmp_path / "out" / MANIFEST).exists()

    # a close name keeps its suggestion; a known one and an index still run
    typo = heatmap("rollout", SCENE, "-m", "demo", "--target", "circel", "-o", tmp_path / "out")
    assert typo.returncode == 2 and "did you mean 'circle'" in typo.stderr and "its classes: circle" in typo.stderr
    known = heatmap("rollout", SCENE, "-m", "demo", "--target", "heart", "--target", "4", "-o", tmp_path / "out",
                    "--json")
    assert known.returncode == 0 and json.loads(known.stdout)["maps"] == 2


def test_a_very_long_text_is_shown_cut_and_kept_whole(tmp_path):
    text = ("a red heart " * 200)[:2000].strip()
    out = tmp_path / "out"
    result = heatmap("clip", SCENE, "--model", "demo", "--text", text, "-o", out)
    assert result.returncode == 0, result.stderr
    assert text not in result.stdout and text not in result.stderr
    assert f"{text[:60]}… ({len(text)} characters)" in result.stdout
    note = [line for line in result.stderr.splitlines() if "longer than the model's context" in line]
    assert len(note) == 1 and f"{text[:60]!r}… ({len(text)} characters)" in note[0], result.stderr
    assert len(note[0]) < 300
    entries = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [entry["text"] for entry in entries] == [text] and entries[0]["truncated"] is True


def test_a_run_closes_with_its_counts_and_time(tmp_path):
    from helpers.console import console_script

    result = console_script("rollout", "sample_images/shapes_002_red-heart_pink-cross.png", "-m", "demo",
                            "-o", tmp_path / "out")
    assert result.returncode == 0
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"1 map\(s\) of 1 input\(s\) written to .*out, 0 skipped, 0 failed, in \d+\.\d s", last), last
