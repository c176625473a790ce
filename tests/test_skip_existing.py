"""--skip-existing knows which files a run asks for: the map, and the overlay drawn with this run's settings.

A first run writes an input's map and overlay; a second run into the same
folder that asks for another overlay (colormap, opacity, size) must write
that overlay, even with --skip-existing, and must leave the first run's files
as they were.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from heatmap.cli.app import app
from heatmap.outputs import files_complete, read_manifest

SCENE = Path(__file__).resolve().parents[1] / "sample_images" / "shapes_002_red-heart_pink-cross.png"  # 96 x 96
runner = CliRunner()


def run(*args: object) -> dict:
    result = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def files_of(out: Path) -> dict[str, bytes]:
    """The files of maps (the manifest and the run records are appended to by every run)."""
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())
            if path.name not in ("manifest.jsonl", "runs.jsonl")}


def assert_every_overlay_is_its_lines(out: Path) -> None:
    """Each manifest line's overlay is there, whole, and drawn at the size its line records."""
    for entry in read_manifest(out):
        assert files_complete(out, entry), entry["files"]
        with Image.open(out / entry["files"]["png"]) as overlay:
            size = entry["overlay"]["overlay_size"]
            assert max(overlay.size) == (min(size, 96) if size else 96)


@pytest.mark.parametrize("changed", [["--colormap", "viridis"], ["--alpha", "0.8"], ["--overlay-size", "48"]],
                         ids=["colormap", "alpha", "overlay-size"])
def test_another_overlay_is_written_beside_the_first(tmp_path, changed):
    out = tmp_path / "heatmaps"
    first = run("chefer-generic", SCENE, "-m", "demo", "-o", out)
    assert first["explained"] == 1
    before = files_of(out)

    second = run("chefer-generic", SCENE, "-m", "demo", "-o", out, "--skip-existing", *changed)
    assert (second["explained"], second["skipped"], second["maps"]) == (1, 0, 1)
    entries = read_manifest(out)
    assert len(entries) == 2
    old, new = entries
    assert old["files"]["png"] != new["files"]["png"]  # the new overlay has a name of its own
    assert old["files"]["npy"] == new["files"]["npy"]  # the same map (same configuration), the same name
    # nothing lost: every file of the first run is still the bytes it wrote
    assert {name: data for name, data in files_of(out).items() if name in before} == before
    assert (out / new["files"]["png"]).read_bytes() != before[old["files"]["png"]]
    assert_every_overlay_is_its_lines(out)

    # both overlays are there now: either run, resumed, has nothing left to do
    for settings in ([], changed):
        again = run("chefer-generic", SCENE, "-m", "demo", "-o", out, "--skip-existing", *settings)
        assert (again["explained"], again["skipped"]) == (0, 1), settings
    assert len(read_manifest(out)) == 2


def test_the_same_settings_spelled_otherwise_are_done(tmp_path):
    out = tmp_path / "heatmaps"
    run("rollout", SCENE, "-m", "demo", "-o", out, "--alpha", "0.5", "--colormap", "jet", "--overlay-size", "2048")
    assert run("rollout", SCENE, "-m", "demo", "-o", out, "--skip-existing")["skipped"] == 1


def test_a_rerun_without_skip_existing_keeps_the_other_overlay(tmp_path):
    out = tmp_path / "heatmaps"
    run("rollout", SCENE, "-m", "demo", "-o", out, "--colormap", "gray")
    before = files_of(out)
    run("rollout", SCENE, "-m", "demo", "-o", out, "--colormap", "magma")
    assert {name: data for name, data in files_of(out).items() if name in before} == before
    assert_every_overlay_is_its_lines(out)


def test_clip_overlay_settings_count_too(tmp_path):
    out = tmp_path / "heatmaps"
    texts = ["--text", "a red heart", "--text", "a pink cross"]
    run("clip", SCENE, "-m", "demo", "-o", out, *texts)
    assert run("clip", SCENE, "-m", "demo", "-o", out, *texts, "--skip-existing")["skipped"] == 1
    again = run("clip", SCENE, "-m", "demo", "-o", out, *texts, "--skip-existing", "--overlay-size", "32")
    assert (again["explained"], again["maps"]) == (1, 2)
    entries = read_manifest(out)
    assert len(entries) == 4
    assert all("tokens" in entry["files"] for entry in entries)
    assert len({entry["files"]["png"] for entry in entries}) == 4
    assert_every_overlay_is_its_lines(out)


def test_a_missing_token_strip_is_written_again(tmp_path):
    out = tmp_path / "heatmaps"
    run("clip", SCENE, "-m", "demo", "-o", out, "--text", "a red heart")
    (out / read_manifest(out)[0]["files"]["tokens"]).unlink()
    assert run("clip", SCENE, "-m", "demo", "-o", out, "--text", "a red heart", "--skip-existing")["explained"] == 1
    assert files_complete(out, read_manifest(out)[-1])


def test_a_line_that_does_not_say_how_its_overlay_was_drawn_is_not_done(tmp_path):
    """A manifest line written before overlays were recorded: its overlay's settings are unknown."""
    out = tmp_path / "heatmaps"
    run("rollout", SCENE, "-m", "demo", "-o", out, "--colormap", "gray")
    entry = read_manifest(out)[0]
    # such a line named its overlay <base>.png and did not record the settings
    base = entry["files"]["npy"].removesuffix(".npy")
    shutil.move(out / entry["files"]["png"], out / f"{base}.png")
    del entry["overlay"]
    entry["files"]["png"] = f"{base}.png"
    (out / "manifest.jsonl").write_text(json.dumps(entry) + "\n")
    before = files_of(out)

    again = run("rollout", SCENE, "-m", "demo", "-o", out, "--skip-existing")
    assert (again["explained"], again["skipped"]) == (1, 0)
    # the old line's overlay (drawn in gray) is kept, the new one is written beside it
    assert (out / f"{base}.png").read_bytes() == before[f"{base}.png"]
    new = read_manifest(out)[-1]
    assert new["files"]["png"] != f"{base}.png" and files_complete(out, new)
    assert run("rollout", SCENE, "-m", "demo", "-o", out, "--skip-existing")["skipped"] == 1
