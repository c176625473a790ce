"""What a page is built from: output folders as the commands leave them, read without torch.

A run folder holds ``manifest.jsonl`` (and ``runs.jsonl`` when the CLI
recorded its runs), an evaluation folder ``eval.json`` and ``eval.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from heatmap.errors import UsageError

Kind = Literal["run", "eval"]
RUNS_LOG = "runs.jsonl"


def folder_kind(folder: Path) -> Kind:
    """``run`` (a ``manifest.jsonl``) or ``eval`` (an ``eval.json``).

    Raises:
        UsageError: for a folder that is neither.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the output folder of a heatmap run or of heatmap eval")
    if (folder / "manifest.jsonl").is_file():
        return "run"
    if (folder / "eval.json").is_file():
        return "eval"
    raise UsageError(f"{folder} holds neither a manifest.jsonl (a heatmap run) nor an eval.json (heatmap eval); "
                     "give a folder one of them wrote")


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; lines that are not one (a killed writer's) left out."""
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def input_file(name: str, folder: Path) -> Path | None:
    """The picture a manifest or eval line names, where it can be found; None when nowhere.

    Inputs are recorded as they were given, relative to where the command ran:
    tried from there (each run's ``cwd`` in ``runs.jsonl``), as given (from here), then from
    the output folder and each folder above it.
    """
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() else None
    for base in (*recorded_folders(folder.absolute()), Path.cwd(), folder.absolute(), *folder.absolute().parents):
        if (base / path).is_file():
            return base / path
    return None


def recorded_folders(folder: Path) -> tuple[Path, ...]:
    """The folders the runs into ``folder`` ran in (``cwd`` of its ``runs.jsonl`` lines), latest first."""
    folders = [Path(run["cwd"]) for run in reversed(json_lines(folder / RUNS_LOG)) if isinstance(run.get("cwd"), str)]
    return tuple(dict.fromkeys(folders))


@dataclass
class RunFolder:
    """One run folder: its latest manifest entries, its runs (``runs.jsonl``), its broken manifest lines."""

    path: Path
    entries: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    broken_lines: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> RunFolder:
        from heatmap.outputs import latest_entries, manifest_lines

        entries, broken = manifest_lines(folder)
        return cls(Path(folder), list(latest_entries(entries).values()), json_lines(Path(folder) / RUNS_LOG), broken)


__all__ = ["Kind", "RunFolder", "folder_kind", "input_file", "json_lines"]
