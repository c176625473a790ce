"""The rough edges a first week of real use finds: each is said in one line, none passes silently.

Each test runs the console script's entry point (``heatmap.cli.app:main``)
with its own stdout and stderr, 200 columns wide.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from heatmap.outputs import MANIFEST, manifest_lines
from helpers.console import console_script

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
SCENE = SAMPLES / "shapes_002_red-heart_pink-cross.png"


def heatmap(*args: object) -> subprocess.CompletedProcess:
    """The console script's entry point in this process (wide terminal): its exit code, stdout and stderr."""
    return console_script(*args, env={"COLUMNS": "200"})


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def test_frames_links_svgs_and_linked_folders_are_named(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(SCENE, folder / "good.png")
    frames = [Image.new("RGB", (96, 96), colour) for colour in ("red", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    (folder / "drawing.svg").write_text("<svg/>")
    (folder / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "linked").symlink_to(folder / "sub")
    result = heatmap("rollout", folder, "-r", "-m", "demo", "-o", tmp_path / "out", "--json")
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["explained"] == 2 and summary["left_out"] == 3
    assert any("animated.gif: 2 frames" in note for note in summary["notes"])
    verbose = heatmap("rollout", folder, "-r", "-m", "demo", "-o", tmp_path / "out", "--verbose", "--quiet")
    for name, why in (("broken.png", "a broken link"), ("drawing.svg", "not an image"), ("linked", "linked folder")):
        assert any(name in line and why in line for line in verbose.stderr.splitlines()), verbose.stderr


def test_a_tiny_image_is_warned_about(tmp_path):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    result = heatmap("rollout", tmp_path / "dot.png", "-m", "demo", "-o", tmp_path / "out")
    assert result.returncode == 0 and "1x1 px, far smaller than the model's 96x96 input" in result.stderr


def test_clip_texts_are_checked_cleaned_and_their_cuts_recorded(tmp_path):
    out = tmp_path / "out"
    assert "--text '' is empty" in heatmap("clip", SCENE, "-m", "demo", "--text", " ", "-o", out).stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert "holds no text" in heatmap("clip", SCENE, "-m", "demo", "--texts-file", blank, "-o", out).stderr
    texts = tmp_path / "texts.txt"
    texts.write_text("\ufeffa red heart\na red heart\n", encoding="utf-8")
    long_text = "a pink cross " * 20
    result = heatmap("clip", SCENE, "-m", "demo", "--texts-file", texts, "--text", long_text, "-o", out,
                     "--start-layer", "0", "--text-start-layer", "0")
    assert result.returncode == 0, result.stderr
    assert "1 duplicate text(s) explained once" in result.stderr
    assert "longer than the model's context" in result.stderr
    entries = manifest(out)
    assert [entry["text"] for entry in entries] == [long_text.strip(), "a red heart"]  # no BOM, no duplicate
    assert [entry["truncated"] for entry in entries] == [True, False]
    wrong_tower = heatmap("clip", SCENE, "-m", "demo", "--text", "a cat", "--text-start-layer", "7", "-o", out)
    assert wrong_tower.returncode == 2 and "text tower (--text-start-layer)" in wrong_tower.stderr


def test_word_pieces_are_text_in_every_script(tmp_path):
    out = tmp_path / "out"
    result = heatmap("clip", SCENE, "-m", "demo", "--text", "красное сердце", "-o", out)
    assert result.returncode == 0, result.stderr
    joined = "".join(manifest(out)[0]["word_pieces"])
    assert joined and "красноесердце".startswith(joined)  # text, not byte-pair codes (the demo's context is short)
    from open_clip.tokenizer import SimpleTokenizer

    from heatmap.models.open_clip.text import decoded_pieces
    tokenizer = SimpleTokenizer()
    pieces = decoded_pieces(tokenizer, tokenizer.encode("красное сердце 🙂 a red circle"))
    assert "".join(pieces) == "красноесердце🙂aredcircle" and pieces[-3:] == ["a", "red", "circle"]


def test_many_texts_are_capped_in_the_table(tmp_path):
    # 21 captions of what the scene does not hold, then its own: the demo CLIP scores "a red heart" far above
    # the rest (logit 9.1 against at most 2.2), so no tie decides which text the note names
    absent = [f"a {colour} {shape}" for shape in ("circle", "square", "star")
              for colour in ("blue", "green", "orange", "purple", "yellow", "cyan", "white")]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join([*absent, "a red heart"]))
    out = tmp_path / "out"
    result = heatmap("clip", SCENE, "-m", "demo", "--texts-file", texts, "-o", out)
    assert result.returncode == 0 and "... and 2 more texts in manifest.jsonl" in result.stdout
    shown = re.findall(r"│ (a \w+ \w+) +│", result.stdout)
    # the first 19 texts in the order given, then the best (the 22nd), which the table never leaves out
    assert shown == [*absent[:19], "a red heart"]
    assert len(manifest(out)) == 22  # all of them in the manifest


def test_rollout_with_several_targets_says_it_is_class_agnostic(tmp_path):
    result = heatmap("rollout", SCENE, "-m", "demo", "--top-k", "2", "-o", tmp_path / "out")
    assert "rollout is class-agnostic" in result.stderr
    assert "class-agnostic" not in heatmap("chefer-generic", SCENE, "-m", "demo", "--top-k", "2",
                                           "-o", tmp_path / "out").stderr


def test_compare_shows_method_and_target_and_one_changed_class(tmp_path):
    base, cand = tmp_path / "base", tmp_path / "cand"
    assert heatmap("chefer-generic", SCENE, "-m", "demo", "-o", base, "--quiet").returncode == 0
    shutil.copytree(base, cand)
    entry = manifest(cand)[0]
    entry.update(target=(entry["target"] + 1) % 6, label="another")  # the top-1 class flipped in the candidate
    (cand / MANIFEST).write_text(json.dumps(entry) + "\n{torn fragm\n")
    result = heatmap("compare", base, cand)
    assert result.returncode == 1
    assert "top-1 class changed: was" in result.stdout and "another" in result.stdout
    assert "chefer-generic" in result.stdout and "missing" not in result.stdout
    assert "candidate manifest: 1 line(s) that are not entries left out (line 2)" in result.stderr
    other = tmp_path / "other"
    assert heatmap("rollout", SCENE, "-m", "demo", "-o", other, "--quiet").returncode == 0
    assert "run both from the same folder" in heatmap("compare", base, other).stderr


def test_a_torn_manifest_fragment_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    assert heatmap("rollout", SCENE, "-m", "demo", "-o", out, "--quiet").returncode == 0
    with open(out / MANIFEST, "a") as manifest_file:
        manifest_file.write('{"input": "half a li')  # what a killed run leaves
    result = heatmap("rollout", SAMPLES / "chelsea.png", "-m", "demo", "-o", out)
    assert "removed 1 broken line(s)" in result.stderr
    entries, broken = manifest_lines(out)
    assert len(entries) == 2 and not broken


def test_overlay_size_caps_the_overlay(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 1500), "white").save(big)
    for size, expected in (("1000", (1000, 500)), ("0", (3000, 1500))):
        out = tmp_path / f"out{size}"
        assert heatmap("rollout", big, "-m", "demo", "-o", out, "--overlay-size", size).returncode == 0
        with Image.open(out / manifest(out)[0]["files"]["png"]) as overlay:
            assert overlay.size == expected
