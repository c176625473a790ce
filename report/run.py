"""The run page: one row per input, one column per method and target, of one or several run folders.

Columns are keyed by folder, model, method, options, weights, precision and
the target's slot: the rank (``top-1``, ``top-2``) for entries of the
model's own choice (``--top-k``, or the default top-1), so that rows line
up although each input's class differs; the class or the text otherwise.
The rows travel as JSON and the page's script draws them as the page
scrolls, so a run of thousands of maps opens at once.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heatmap.report.folders import RunFolder, input_file
from heatmap.report.images import TOKEN_STRIP_BOX, PictureStore
from heatmap.report.page import escape, json_block

# What tells two columns of one method apart, besides the target: shown in a column's heading where it varies.
DESCRIBING_FIELDS = ("folder", "model", "weights", "precision", "options")


@dataclass(frozen=True)
class ColumnKey:
    folder: int
    model: str
    method: str
    options: str
    weights: str
    precision: str
    slot: str


def slot_of(entry: dict[str, Any]) -> str:
    """The target's place in its column: ``top-<rank+1>``, else the class (``3 star``) or the CLIP text."""
    if entry.get("rank") is not None:
        return f"top-{int(entry['rank']) + 1}"
    if "text" in entry and "target" not in entry:
        return str(entry["text"])
    return " ".join(str(part) for part in (entry.get("target"), entry.get("label")) if part is not None)


def column_key(folder: int, entry: dict[str, Any]) -> ColumnKey:
    return ColumnKey(folder, str(entry.get("model", "")), str(entry.get("method", "")),
                     json.dumps(entry.get("options", {}), sort_keys=True), str(entry.get("weights") or ""),
                     str(entry.get("precision") or ""), slot_of(entry))


def short_weights(weights: str) -> str:
    return weights[:len("sha256:") + 12] if weights.startswith("sha256:") else weights


def options_text(options_json: str) -> str:
    options = json.loads(options_json) or {}
    return ", ".join(f"{name}={value}" for name, value in sorted(options.items())) or "defaults"


def cell_data(entry: dict[str, Any], folder: Path, store: PictureStore) -> dict[str, Any]:
    """What a cell shows of one manifest entry: pictures' addresses, label or text, score, probability."""
    files = entry.get("files", {})

    def picture(kind: str) -> Path | None:
        return folder / files[kind] if isinstance(files.get(kind), str) else None

    clip = "text" in entry and "target" not in entry
    label = str(entry["text"]) if clip else " ".join(
        str(part) for part in (entry.get("target"), entry.get("label")) if part is not None)
    score = entry.get("logit") if clip else entry.get("score")
    return {"thumb": store.thumbnail(picture("png")), "full": store.link(picture("png")),
            "panel": store.link(picture("panel")),
            "tokens": store.thumbnail(picture("tokens"), TOKEN_STRIP_BOX) if "tokens" in files else None,
            "label": label, "score": _finite(score), "scoreName": "logit" if clip else "score",
            "probability": _finite(entry.get("probability"))}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def grid_data(folders: list[RunFolder], store: PictureStore) -> dict[str, Any]:
    """The rows and columns the page's script draws (see the module docstring)."""
    keys: dict[ColumnKey, int] = {}
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    cells: dict[tuple[str, ColumnKey], dict[str, Any]] = {}
    for index, folder in enumerate(folders):
        for entry in folder.entries:
            key = column_key(index, entry)
            keys.setdefault(key, len(keys))
            rows.setdefault(str(entry["input"]), {})
            cells[(str(entry["input"]), key)] = cell_data(entry, folder.path, store)
    ordered = sorted(keys, key=lambda key: (key.folder, key.method, key.model, key.options, key.weights,
                                            key.precision, _slot_order(key.slot)))
    varying = {name: len({_described(name, key, folders) for key in ordered}) > 1 for name in DESCRIBING_FIELDS}
    columns = []
    for key in ordered:
        notes = [_described(name, key, folders) for name in DESCRIBING_FIELDS if varying[name]]
        columns.append({"method": key.method, "slot": key.slot, "folder": folders[key.folder].path.name,
                        "title": f"{key.method} · {key.slot}", "notes": " · ".join(notes)})
    table = []
    for name in sorted(rows):
        source = input_file(name, folders[0].path) or next(
            (found for folder in folders[1:] if (found := input_file(name, folder.path)) is not None), None)
        table.append({"name": name, "thumb": store.thumbnail(source), "full": store.link(source),
                      "cells": [cells.get((name, key)) for key in ordered]})
    return {"columns": columns, "rows": table}


def _slot_order(slot: str) -> tuple[int, int, str]:
    """Ranks in rank order, then classes by index, then texts as they come."""
    if slot.startswith("top-") and slot[4:].isdigit():
        return (0, int(slot[4:]), "")
    head = slot.split(" ", 1)[0]
    return (1, int(head), slot) if head.isdigit() else (2, 0, slot)


def _described(name: str, key: ColumnKey, folders: list[RunFolder]) -> str:
    if name == "folder":
        return folders[key.folder].path.name or str(folders[key.folder].path)
    if name == "options":
        return options_text(key.options)
    if name == "weights":
        return short_weights(key.weights)
    return str(getattr(key, name))


def settings_html(folder: RunFolder) -> str:
    """The folder's runs as ``runs.jsonl`` records them; else the configurations its manifest names."""
    parts = [f'<h2>{escape(folder.path.name or folder.path)} <span class="muted small mono">'
             f"{escape(folder.path)}</span></h2>"]
    if folder.runs:
        parts.append(runs_html(folder.runs))
    else:
        configurations: dict[tuple[str, ...], int] = {}
        for entry in folder.entries:
            found = (str(entry.get("model")), str(entry.get("weights") or "-"), str(entry.get("method")),
                     json.dumps(entry.get("options", {}), sort_keys=True), str(entry.get("precision") or "-"))
            configurations[found] = configurations.get(found, 0) + 1
        rows = "".join(
            f"<tr><td>{escape(model)}</td><td class=\"mono\">{escape(short_weights(weights))}</td>"
            f"<td>{escape(method)}</td><td>{escape(options_text(options))}</td><td>{escape(precision)}</td>"
            f'<td class="num">{count}</td></tr>'
            for (model, weights, method, options, precision), count in configurations.items())
        parts.append('<p class="muted small">No runs.jsonl here: the settings below are what the manifest '
                     "records.</p>"
                     '<table class="list"><tr><th>model</th><th>weights</th><th>method</th><th>options</th>'
                     f'<th>precision</th><th class="num">maps</th></tr>{rows}</table>')
    if folder.broken_lines:
        parts.append(f'<p class="problems">{len(folder.broken_lines)} manifest line(s) that are not entries left '
                     f"out (line {escape(', '.join(map(str, folder.broken_lines)))}).</p>")
    return "".join(parts)


RUN_COLUMNS = ("started", "command", "model", "method", "precision", "device", "maps", "took", "exit")


def runs_html(runs: list[dict[str, Any]]) -> str:
    """The folder's runs, one table row each (``runs.jsonl``), the library versions they used under it,
    then each run's failures with their messages."""
    rows = "".join("<tr>" + "".join(f'<td class="{"mono small" if name == "command" else ""}">{escape(value)}</td>'
                                    for name, value in _run_cells(run).items()) + "</tr>"
                   for run in runs)
    head = "".join(f"<th>{name}</th>" for name in RUN_COLUMNS)
    versions: dict[str, str] = {}
    for run in runs:
        if isinstance(run.get("versions"), dict):
            versions.update({str(name): str(value) for name, value in run["versions"].items() if value})
    parts = [f'<table class="list runs"><tr>{head}</tr>{rows}</table>']
    if versions:
        listed = ", ".join(f"{name} {value}" for name, value in sorted(versions.items()))
        parts.append(f'<p class="muted small">versions: {escape(listed)}</p>')
    for run in runs:
        failures = run.get("failures") or []
        if isinstance(failures, list) and failures:
            listed = "".join(f"<li>{escape(message)}</li>" for message in failures)
            parts.append(f'<h3 class="problems">{len(failures)} failure(s) of the run started '
                         f'{escape(run.get("started", "?"))}</h3><ul class="failures">{listed}</ul>')
    return "".join(parts)


def _run_cells(run: dict[str, Any]) -> dict[str, Any]:
    command = run.get("command")
    options = run.get("options")
    seconds = run.get("seconds")
    method = str(run.get("method") or "")
    if isinstance(options, dict) and options:
        method += f" ({options_text(json.dumps(options, sort_keys=True))})"
    model = str(run.get("model") or "")
    if run.get("weights"):
        model += f" · {short_weights(str(run['weights']))}"
    counts = (f"{run.get('maps', '?')} of {run.get('explained', '?')} input(s)"
              + (f", {run['skipped']} skipped" if run.get("skipped") else "")
              + (f", {len(run['failures'])} failed" if run.get("failures") else ""))
    return {"started": str(run.get("started", "")).replace("T", " ").removesuffix("+00:00"),
            "command": shlex.join(map(str, command)) if isinstance(command, list) and command else command or "",
            "model": model, "method": method, "precision": run.get("precision", ""), "device": run.get("device", ""),
            "maps": counts, "took": f"{float(seconds):.1f} s" if isinstance(seconds, (int, float)) else "",
            "exit": run.get("exit_code", "")}


GRID = """
<div class="controls">
  <span><label for="filter-method">method</label> <select id="filter-method"></select></span>
  <span><label for="filter-target">target</label> <select id="filter-target"></select></span>
  <span id="folder-control"><label for="filter-folder">folder</label> <select id="filter-folder"></select></span>
  <span><label for="sort">sort rows by</label> <select id="sort"></select></span>
  <span class="muted small" id="counts"></span>
</div>
<style id="hidden-columns"></style>
<table class="grid" id="grid"><thead></thead><tbody></tbody></table>
<div id="sentinel" style="height: 1px"></div>
"""

GRID_SCRIPT = """
(function () {
  const data = kit.data("run-data");
  const table = document.getElementById("grid");
  const body = table.tBodies[0];
  const head = kit.el("tr", {}, kit.el("th", { text: "input" }));
  data.columns.forEach((column, index) => head.append(kit.el("th", { class: "c" + index, "data-column": index },
    column.title, column.notes ? kit.el("span", { class: "sub", text: column.notes }) : null)));
  table.tHead.append(head);

  const percent = (value) => (100 * value).toFixed(1) + "%";
  const scoreLine = (cell) => {
    const parts = [];
    if (cell.score !== null) parts.push(cell.scoreName + " " + cell.score.toFixed(3));
    if (cell.probability !== null) parts.push("p " + percent(cell.probability));
    return parts.join(" · ");
  };
  const picture = (thumb, full, caption, panel) => thumb
    ? kit.el("img", { class: "thumb", src: thumb, alt: caption, loading: "lazy", "data-full": full || thumb,
                      "data-panel": panel, "data-caption": caption })
    : kit.el("div", { class: "empty", text: "no picture" });

  function renderRow(position) {
    const row = data.rows[order[position]];
    const shortName = row.name.split(/[\\\\/]/).pop();
    const tr = kit.el("tr", { "data-name": row.name },
      kit.el("td", { class: "input" }, picture(row.thumb, row.full, row.name, null),
             kit.el("div", { class: "name", title: row.name, text: shortName })));
    row.cells.forEach((cell, index) => {
      const td = kit.el("td", { class: "c" + index, "data-column": index });
      if (cell === null) {
        td.append(kit.el("div", { class: "empty", text: "—" }));
      } else {
        td.dataset.score = cell.score === null ? "" : String(cell.score);
        const caption = shortName + " · " + data.columns[index].title + " · " + cell.label
          + (scoreLine(cell) ? " · " + scoreLine(cell) : "");
        td.append(picture(cell.thumb, cell.full, caption, cell.panel),
                  kit.el("div", { class: "label", text: cell.label }),
                  kit.el("div", { class: "score", text: scoreLine(cell) }));
        if (cell.tokens) td.append(kit.el("img", { class: "tokens", src: cell.tokens, alt: "word relevance",
                                                   loading: "lazy" }));
      }
      tr.append(td);
    });
    return tr;
  }

  const fill = (id, everything, values) => {
    const select = document.getElementById(id);
    select.append(kit.el("option", { value: "", text: everything }));
    for (const value of values) select.append(kit.el("option", { value: value, text: value }));
    return select;
  };
  const unique = (name) => [...new Set(data.columns.map((column) => column[name]))];
  const methodSelect = fill("filter-method", "all", unique("method"));
  const targetSelect = fill("filter-target", "all", unique("slot"));
  const folderSelect = fill("filter-folder", "all", unique("folder"));
  if (unique("folder").length < 2) document.getElementById("folder-control").hidden = true;
  const sortSelect = document.getElementById("sort");
  sortSelect.append(kit.el("option", { value: "name", text: "name" }));
  data.columns.forEach((column, index) => sortSelect.append(kit.el("option", { value: String(index),
    text: "score: " + column.title + (column.notes ? " (" + column.notes + ")" : "") })));

  const hiddenStyle = document.getElementById("hidden-columns");
  function applyFilters() {
    const hidden = [];
    data.columns.forEach((column, index) => {
      const shown = (!methodSelect.value || column.method === methodSelect.value)
        && (!targetSelect.value || column.slot === targetSelect.value)
        && (!folderSelect.value || column.folder === folderSelect.value);
      if (!shown) hidden.push(".c" + index);
    });
    // one rule hides a column's every cell, drawn now or later
    hiddenStyle.textContent = hidden.length ? hidden.join(",") + " { display: none; }" : "";
    document.getElementById("counts").textContent = data.rows.length + " inputs × "
      + (data.columns.length - hidden.length) + " of " + data.columns.length + " columns";
  }

  let order = data.rows.map((_, index) => index);
  function sortRows() {
    const by = sortSelect.value;
    order = data.rows.map((_, index) => index);
    if (by !== "name") {
      const column = Number(by);
      const score = (index) => { const cell = data.rows[index].cells[column];
                                 return cell && cell.score !== null ? cell.score : -Infinity; };
      order.sort((a, b) => score(b) - score(a) || (data.rows[a].name < data.rows[b].name ? -1 : 1));
    }
    rows.restart();
  }

  for (const select of [methodSelect, targetSelect, folderSelect]) select.addEventListener("change", applyFilters);
  sortSelect.addEventListener("change", sortRows);
  applyFilters();
  // the column headings stick right under the controls, whatever their height
  const controls = document.querySelector(".controls");
  const stick = () => document.documentElement.style.setProperty("--controls-height", controls.offsetHeight + "px");
  stick();
  window.addEventListener("resize", stick);
  const rows = kit.progressive(body, document.getElementById("sentinel"), data.rows.length, renderRow, 40);
  window.heatmapReport = { rendered: () => rows.rendered(), total: data.rows.length };
})();
"""


def run_section(folders: list[RunFolder], store: PictureStore) -> tuple[str, list[str]]:
    """The run part of a page: each folder's settings, then the grid; its HTML and its script."""
    data = grid_data(folders, store)
    maps = sum(cell is not None for row in data["rows"] for cell in row["cells"])
    summary = (f'<p class="muted">{len(data["rows"])} input(s), {len(data["columns"])} column(s), {maps} map(s). '
               "Click a picture to see it full size.</p>")
    settings = "".join(settings_html(folder) for folder in folders)
    return settings + "<h2>Maps</h2>" + summary + GRID + json_block("run-data", data), [GRID_SCRIPT]


__all__ = ["column_key", "grid_data", "run_section", "settings_html", "slot_of"]
