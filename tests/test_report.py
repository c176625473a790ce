"""``heatmap report`` and the report hooks without a browser: kinds, escaping, addresses, thumbnails, size.

The pages' scripts are checked in a real browser by ``test_report_browser.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from heatmap.cli.compare import CompareRequest, run_compare
from heatmap.cli.report import report
from heatmap.compare.metrics import Thresholds
from heatmap.errors import UsageError
from heatmap.evaluation.table import COLUMNS, TABLE_WIDTH, table_text
from heatmap.explainers.registry import methods
from heatmap.report import build_report, write_run_report
from heatmap.report.folders import folder_kind
from heatmap.report.images import files_folder
from helpers.report_runs import (
    HOSTILE_NAME,
    HOSTILE_TEXT,
    addresses,
    change_top1_class,
    copied_run,
    data_block,
    drift_map,
    resolved,
    synthetic_run,
)


@pytest.fixture
def cli() -> typer.Typer:
    """A Typer app with ``report`` as its one subcommand, as ``heatmap report``."""
    app = typer.Typer(add_completion=False)

    @app.callback()
    def _main() -> None:
        """The app's group, so that ``report`` is a subcommand."""

    app.command("report")(report)
    return app


def eval_folder(folder: Path, image: Path | None = None) -> Path:
    """A minimal evaluation folder: eval.json of two methods and eval.jsonl of three images each."""
    folder.mkdir(parents=True)
    summary = {"rollout": {"lines": 3, "deletion": {"auc": 0.35, "curve": [1, 0]},
                           "pointing": {"rate": 0.5}},
               "chefer-generic": {"lines": 3, "deletion": {"auc": 0.22, "curve": [1, 0], "low": 0.2, "high": 0.25},
                                  "pointing": {"rate": 1.0}}}
    report_json = {"settings": {"model": "demo", "protocols": ["deletion-insertion", "pointing"],
                                "inputs": [str(image)] if image else []}, "images": 3, "failed": [],
                   "methods": summary}
    (folder / "eval.json").write_text(json.dumps(report_json), encoding="utf-8")
    lines = [{"input": str(image) if (image and i == 0) else f"scene {i}", "method": method, "target": 1,
              "label": "star", "deletion": {"auc": 0.1 * (i + 1) + (0.2 if method == "rollout" else 0)},
              "pointing": i != 2}
             for method in summary for i in range(3)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


def test_folder_kinds_are_recognised_and_others_refused(tmp_path: Path, cli: typer.Typer) -> None:
    run = synthetic_run(tmp_path / "run", 2)
    evaluation = eval_folder(tmp_path / "eval")
    (tmp_path / "other").mkdir()
    assert folder_kind(run) == "run" and folder_kind(evaluation) == "eval"
    with pytest.raises(UsageError, match="neither a manifest.jsonl"):
        folder_kind(tmp_path / "other")
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert "neither a manifest.jsonl" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "other" / "report.html").exists()


def test_one_folder_writes_its_report_and_several_need_out(tmp_path: Path, cli: typer.Typer) -> None:
    run = synthetic_run(tmp_path / "run", 2)
    evaluation = eval_folder(tmp_path / "eval")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file()
    result = CliRunner().invoke(cli, ["report", str(run), str(evaluation)])
    assert result.exit_code == 2 and "-o FILE.html" in result.output
    result = CliRunner().invoke(cli, ["report", str(run), str(evaluation), "-o", str(tmp_path / "both.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "both.html").read_text(encoding="utf-8")
    assert 'id="run-data"' in page and 'id="eval-table"' in page


def test_a_page_overwrites_nothing_but_a_page(tmp_path: Path, cli: typer.Typer) -> None:
    run = synthetic_run(tmp_path / "run", 1)
    before = (run / "manifest.jsonl").read_bytes()
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(run / "manifest.jsonl")])
    assert result.exit_code == 2 and ".html" in result.output
    assert (run / "manifest.jsonl").read_bytes() == before


def test_every_user_text_is_escaped(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 2, names=[HOSTILE_NAME, "plain"],
                        labels=[HOSTILE_TEXT, "b", "c", "d", "e"])
    (run / "runs.jsonl").write_text(json.dumps({
        "command": ["heatmap", "rollout", HOSTILE_NAME], "failures": [f"{HOSTILE_NAME}: cannot read"],
        "model": "demo", "exit_code": 1}) + "\n", encoding="utf-8")
    page = write_run_report(run).read_text(encoding="utf-8")
    assert HOSTILE_NAME not in page and HOSTILE_TEXT not in page
    assert page.count("<script") == page.count("</script>") == 3  # the data block, the kit's, the grid's
    assert "&lt;img src=x onerror=&quot;window.pwned=1&quot;&gt;: cannot read" in page
    data = data_block(page, "run-data")
    assert any(row["name"].endswith(f"{HOSTILE_NAME}.png") for row in data["rows"])
    assert any(cell and cell["label"] == f"0 {HOSTILE_TEXT}" for row in data["rows"] for cell in row["cells"])


def test_addresses_are_relative_to_the_page_wherever_it_is(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "runs" / "run", 3, top_k=2)
    page_path = tmp_path / "pages" / "deep" / "page.html"
    build_report([run], page_path)
    page = page_path.read_text(encoding="utf-8")
    found = addresses(page)
    assert len(found) == 3 * (1 + 2) * 2  # per input: its picture and 2 maps, thumbnail and full size each
    for address in found:
        assert not address.startswith(("/", "file:", "data:")), address
        assert resolved(page_path, address).is_file(), address
    thumbnails = [address for address in found if address.startswith("page_files/")]
    assert len(thumbnails) == 3 * 3  # per input: its picture and 2 maps


def test_embed_inlines_every_picture_and_writes_nothing_else(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 2, top_k=2)
    page_path = tmp_path / "portable.html"
    build_report([run], page_path, embed=True)
    found = addresses(page_path.read_text(encoding="utf-8"))
    assert len(found) == 2 * 3 * 2
    assert all(address.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for address in found)
    assert not files_folder(page_path).exists()


def test_thumbnails_are_made_once_and_remade_only_for_a_changed_file(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 3)
    write_run_report(run)
    folder = files_folder(run / "report.html")
    first = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert len(first) == 3 * 2
    time.sleep(0.01)
    write_run_report(run)
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == first
    overlay = next(run.glob("image0000.rollout.*.png"))
    os.utime(overlay, ns=(time.time_ns(), time.time_ns() + 10**9))
    write_run_report(run)
    second = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert len(second) == len(first) and len(set(second) - set(first)) == 1  # the old one removed


def test_a_2000_entry_run_page_stays_small(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 500, methods=("rollout", "chefer-generic"), top_k=2)
    started = time.perf_counter()
    page_path = write_run_report(run)
    seconds = time.perf_counter() - started
    data = data_block(page_path.read_text(encoding="utf-8"), "run-data")
    assert sum(cell is not None for row in data["rows"] for cell in row["cells"]) == 2000
    size = page_path.stat().st_size
    # measured: 0.53 MB, built in 2.3 s on 2 cores (500 inputs, 2000 maps, 2500 thumbnails made); bound: a few MB
    assert size < 3_000_000, size
    print(f"2000-entry page: {size / 1e6:.2f} MB, built in {seconds:.1f} s")


def test_compare_html_pairs_a_changed_top1_class_into_one_row(tmp_path: Path) -> None:
    baseline = synthetic_run(tmp_path / "baseline", 3, top_k=2)
    candidate = copied_run(baseline, tmp_path / "candidate")
    changed = change_top1_class(candidate, input_index=1)
    drifted = drift_map(candidate, 0)
    page_path = tmp_path / "compare.html"
    code = run_compare(CompareRequest(baseline, candidate, Thresholds(), output="quiet", html=page_path))
    assert code == 1
    page = page_path.read_text(encoding="utf-8")
    assert '<div class="banner fail" id="verdict">FAIL: 2 of 6 entries differ</div>' in page
    rows = re.findall(r'<tr class="entry" data-key="[^"]*" data-input="([^"]*)">', page)
    assert rows.count(changed["input"]) == 1 and rows.count(drifted["input"]) == 1 and len(rows) == 2
    assert f"top-1 class changed: was 1 class1, is {changed['target']} {changed['label']}" in page
    maps = re.findall(r'<img class="map" src="([^"]+)"', page)
    assert len(maps) == 1 + 3  # the drifted entry: its input, baseline, candidate, |difference|
    assert all(resolved(page_path, address).is_file() for address in maps)


def test_eval_page_shows_intervals_curves_and_worst_images(tmp_path: Path) -> None:
    from helpers.report_runs import tiny_png

    image = tiny_png(tmp_path / "scene0.png", seed=1)
    folder = eval_folder(tmp_path / "eval", image)
    page = build_report([folder]).read_text(encoding="utf-8")
    assert "<b>0.220</b><br><span class=\"small muted\">[0.200, 0.250]</span>" in page
    assert page.count('<span class="small muted">[') == 1  # no interval where eval.json records none
    worst = re.findall(r'<section class="worst" data-method="([^"]+)">', page)
    assert worst == ["rollout", "chefer-generic"]
    rollout = page.split('data-method="rollout"')[1].split("</section>")[0]
    # deletion: highest AUC first (scene 2: 0.5); pointing: the miss
    assert rollout.index(">scene 2<") < rollout.index(">scene 1<") and "miss" in rollout
    assert page.count('class="thumb"') == 4  # scene0.png is a file: its thumbnail per method and figure


def test_eval_table_fits_100_columns_with_every_method_and_figure() -> None:
    figures: dict = {key: {figure: 0.5 for _, k, figure, _ in COLUMNS if k == key} for _, key, _, _ in COLUMNS}
    figures["pointing"] = {"rate": 1.0}  # the widest cells: 100.0%* over ±100.0%
    figures["perturbation_positive"] = {"auc": 100.0}
    for block in figures.values():
        block["intervals"] = {figure: [0.0, 2.0] for figure in list(block)}  # ±1.0: ±100.0% for a rate
    figures.update(degenerate=200, lines=200)
    names = [*methods(), "random", "centre"]
    summary = {name: figures for name in names}
    comparisons = {f"{key}.{figure}": {"best": names[0], "tied_with_best": names[1:3]} for _, key, figure, _ in COLUMNS}
    lines = table_text(summary, comparisons, 12).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= TABLE_WIDTH
    assert "…" not in "".join(lines)
    text = "\n".join(lines)
    faithfulness, localisation = 6, 5
    tables = lines[:next(number for number, line in enumerate(lines) if line.startswith("pert+/pert-:"))]
    for name in names:  # whole, each on its own row with every figure, in both tables
        rows = [line for line in tables if line.split() and line.split()[0] == name]
        assert [len(row.split()) for row in rows] == [1 + faithfulness + 1, 1 + localisation]
    assert "100.0%*" in text and "±100.0%" in text and "200/200" in text and "pert+" in text and "mAP" in text


def test_building_pages_imports_no_torch() -> None:
    code = ("import heatmap.report, heatmap.report.run, heatmap.report.compare, heatmap.report.eval, "
            "heatmap.cli.report, sys; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_run_settings_come_from_runs_jsonl_else_from_the_manifest(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", 2)
    page = write_run_report(run).read_text(encoding="utf-8")
    assert "No runs.jsonl here" in page and "<td>rollout</td><td>start_layer=0</td><td>float32</td>" in page
    record = {"command": ["heatmap", "rollout", "in dir/a.png", "--model", "demo"], "started": "2026-01-02T03:04:05Z",
              "seconds": 12.345, "versions": {"vit-heatmap": "0.1.0", "torch": "2.5.0", "transformers": None},
              "model": "demo", "weights": "sha256:" + "ab" * 32, "kind": "classifier", "method": "rollout",
              "options": {"start_layer": 0}, "precision": "float32", "device": "cpu", "inputs": 3, "explained": 2,
              "skipped": 0, "maps": 2, "failures": ["in dir/b.png: cannot read the image; check the file"],
              "exit_code": 1}
    (run / "runs.jsonl").write_text(json.dumps(record) + "\nnot json\n", encoding="utf-8")
    page = write_run_report(run).read_text(encoding="utf-8")
    assert "No runs.jsonl here" not in page
    for shown in ("heatmap rollout &#x27;in dir/a.png&#x27; --model demo", "2026-01-02 03:04:05Z", "12.3 s",
                  "torch 2.5.0, vit-heatmap 0.1.0", "demo · sha256:abababababab<", "2 of 2 input(s), 1 failed",
                  "rollout (start_layer=0)", "<th>exit</th></tr>", '<td class="">1</td></tr>', "1 failure(s)",
                  "<li>in dir/b.png: cannot read the image; check the file</li>"):
        assert shown in page, shown


def test_a_panel_picture_opens_beside_the_overlay(tmp_path: Path) -> None:
    from helpers.report_runs import manifest, tiny_png, write_manifest

    run = synthetic_run(tmp_path / "run", 1)
    entries = manifest(run)
    entries[0]["files"]["panel"] = "panel.png"
    entries[0]["probability"] = 0.25
    tiny_png(run / "panel.png", seed=3)
    write_manifest(run, entries)
    cell = data_block(write_run_report(run).read_text(encoding="utf-8"), "run-data")["rows"][0]["cells"][0]
    assert cell["panel"] == "panel.png" and cell["probability"] == 0.25 and cell["full"].endswith(".png")
