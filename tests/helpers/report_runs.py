"""Run folders for the report tests: synthetic ones (manifest lines and tiny files, no model) and page reading."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'
"""A file name (no slash: a file may not hold one) that would run a script if the page ever parsed it as HTML."""
HOSTILE_TEXT = "</script><script>window.pwned=1</script>"
"""A label or CLIP text that would end the page's data block early if it were not escaped."""


def tiny_png(path: Path, seed: int, size: int = 8) -> Path:
    """A ``size`` x ``size`` PNG of seeded random colours."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def synthetic_run(folder: Path, inputs: int, methods: tuple[str, ...] = ("rollout",), top_k: int = 1,
                  names: list[str] | None = None, labels: list[str] | None = None, picture_size: int = 8) -> Path:
    """A run folder as the CLI leaves it, without a model: per input and method ``top_k`` entries.

    The inputs live in ``folder/../inputs`` (recorded by absolute path); every entry has an ``.npy`` map
    (seeded), an overlay ``.png`` and a manifest line with rank, score and label.
    """
    folder.mkdir(parents=True, exist_ok=True)
    images = folder.parent / "inputs"
    images.mkdir(exist_ok=True)
    lines = []
    for index in range(inputs):
        stem = names[index] if names is not None else f"image{index:04d}"
        source = images / f"{stem}.png"
        if not source.exists():
            tiny_png(source, seed=index, size=picture_size)
        for method in methods:
            for rank in range(top_k):
                target = (index + rank) % 5
                label = labels[target] if labels is not None else f"class{target}"
                base = f"{stem}.{method}.t{target}.r{rank}"
                np.save(folder / f"{base}.npy", np.random.default_rng([index, rank]).random((4, 4)).astype(np.float32))
                tiny_png(folder / f"{base}.png", seed=10_000 + index * 10 + rank, size=picture_size)
                lines.append({"input": str(source), "model": "demo", "method": method,
                              "options": {"start_layer": 0}, "weights": "sha256:" + "ab" * 32,
                              "precision": "float32", "target": target, "label": label, "rank": rank,
                              "top_k": top_k, "score": float(10 - rank + index * 0.001), "map_shape": [4, 4],
                              "files": {"npy": f"{base}.npy", "png": f"{base}.png"}})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


def copied_run(source: Path, destination: Path) -> Path:
    """A copy of a run folder (manifest and files; no report)."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("report*"))
    return destination


def manifest(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def write_manifest(folder: Path, entries: list[dict[str, Any]]) -> None:
    (folder / "manifest.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")


def change_top1_class(folder: Path, input_index: int = 0) -> dict[str, Any]:
    """Make the rank-0 entry of one input name another class (a changed top-1), as a changed model would.

    Returns:
        the changed entry.
    """
    entries = manifest(folder)
    inputs = list(dict.fromkeys(entry["input"] for entry in entries))
    changed = next(entry for entry in entries if entry["input"] == inputs[input_index] and entry.get("rank") == 0)
    taken = {entry["target"] for entry in entries if entry["input"] == changed["input"]}
    changed["target"] = next(target for target in range(100) if target not in taken)
    changed["label"] = f"changed{changed['target']}"
    write_manifest(folder, entries)
    return changed


def drift_map(folder: Path, entry_index: int) -> dict[str, Any]:
    """Replace one entry's ``.npy`` map by another (a map that drifted); return the entry."""
    entry = manifest(folder)[entry_index]
    path = folder / entry["files"]["npy"]
    drifted = np.load(path)[::-1, ::-1].copy() + np.random.default_rng(9).random(np.load(path).shape).astype(
        np.float32)
    np.save(path, drifted.astype(np.float32))
    return entry


def data_block(page: str, element_id: str) -> Any:
    """The JSON of a page's ``<script type="application/json" id=...>`` block, parsed."""
    found = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    assert found is not None, f"no data block {element_id}"
    return json.loads(found.group(1))


def addresses(page: str) -> list[str]:
    """Every picture address of a page: the ``src`` and ``data-full`` attributes and the data block's."""
    found = re.findall(r'(?:src|data-full)="([^"]+)"', page)
    if 'id="run-data"' in page:
        data = data_block(page, "run-data")
        for row in data["rows"]:
            found += [value for value in (row["thumb"], row["full"]) if value]
            for cell in row["cells"]:
                if cell:
                    found += [cell[key] for key in ("thumb", "full", "tokens", "panel") if cell.get(key)]
    return found


def resolved(page_path: Path, address: str) -> Path:
    """The file a relative address of a page points at."""
    return (page_path.parent / urllib.parse.unquote(address)).resolve()
