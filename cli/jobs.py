"""Which inputs a run explains: expansion, order, shards, and what is already done.

The inputs are expanded (files, folders, glob patterns), sorted by path and
named (output stems) before anything is left out, so that every shard of a
job array, and every resumed run, sees the same order and the same names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from heatmap.errors import HeatmapError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """The K-th (1-based) of N contiguous slices of the sorted inputs."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/4"`` -> ``Shard(2, 4)``; raises :class:`UsageError` with the fix."""
        number, _, count = text.partition("/")
        if not (number.strip().isdigit() and count.strip().isdigit()):
            raise UsageError(f"--shard {text!r} is not K/N; write e.g. --shard 2/4 (the 2nd of 4 slices)")
        shard = cls(int(number), int(count))
        if not 1 <= shard.index <= shard.count:
            raise UsageError(f"--shard {text}: K must be 1..N (K counts from 1, as in 1/{max(shard.count, 1)})")
        return shard

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's slice: item i goes to shard ``floor(i * N / len) + 1``, so sizes differ by at most one."""
        total = len(items)
        start = (self.index - 1) * total // self.count
        stop = self.index * total // self.count
        return list(items[start:stop])


@dataclass(frozen=True)
class Job:
    """One input: its path as the user spelled it, and its output stem."""

    path: Path
    stem: str


def plan_jobs(inputs: Sequence[Path], recursive: bool = False, shard: Shard | None = None,
              out_dir: Path | None = None, left_out: list[str] | None = None) -> tuple[list[Job], int, list[str]]:
    """The jobs of this run (sorted by path), how many inputs all shards hold, and the failed arguments.

    Each argument is expanded on its own, so one bad argument loses no others.
    Output stems are chosen over all inputs before sharding, so a shard names
    its files exactly as the unsharded run would.
    """
    from heatmap.inputs import collect_inputs
    from heatmap.outputs import output_stems

    paths: dict[Path, Path] = {}
    failures = []
    for argument in inputs:
        try:
            for path in collect_inputs([argument], recursive=recursive, out_dir=out_dir, left_out=left_out):
                paths.setdefault(path.resolve(), path)
        except HeatmapError as error:
            failures.append(str(error))
    ordered = sorted(paths.values(), key=lambda path: (str(path), path.parts))
    jobs = [Job(path, stem) for path, stem in zip(ordered, output_stems(ordered), strict=False)]
    return (shard.select(jobs) if shard else jobs), len(jobs), failures


def canonical(options: dict[str, Any]) -> str:
    """Options (or overlay settings) as the manifest stores them, in a form that compares equal across runs."""
    return json.dumps(json.loads(json.dumps(options)), sort_keys=True)


def wanted_files(entry: dict[str, Any]) -> set[str]:
    """The kinds of file a run writes for the map of ``entry``: the map and the overlay, the token strip
    of a CLIP text whose word pieces have relevance (``heatmap.outputs.default_writers``), and the panel
    when its pictures were drawn with one (``--panel``)."""
    tokens = {"tokens"} if entry.get("token_relevance") is not None else set()
    panel = {"panel"} if isinstance(entry.get("overlay"), dict) and entry["overlay"].get("panel") else set()
    return {"npy", "png"} | tokens | panel


class DoneMaps:
    """The maps an output folder already holds for one model, weights, method, options, precision and overlay.

    A map counts as done only when its manifest line exists, every file it
    names is there and whole (``heatmap.outputs.files_complete``), and those
    are every file this run would write for it: the map, the overlay drawn
    with this run's settings, and (a CLIP text with word-piece relevance) the
    token strip. A line that does not record how its overlay was drawn (one
    written before overlays were recorded) is not done: its colormap and
    opacity cannot be read back from the picture, so the map is explained
    again and the new overlay, whose name carries its settings, is written
    beside the old one.

    Args:
        out_dir: the output folder.
        model, weights, method: as the manifest records them.
        options: the method's options as resolved (defaults filled in).
        precision: the dtype the maps are computed in (``"float32"``); a line
            without one comes from a run that always computed in float32.
        overlay: how this run draws its overlays (``OverlayWriter.settings``).
    """

    def __init__(self, out_dir: Path, model: str, weights: str | None, method: str,
                 options: dict[str, Any], precision: str = "float32", *, overlay: dict[str, Any]) -> None:
        from heatmap.outputs import files_complete, read_manifest

        wanted = canonical(options)
        wanted_overlay = canonical(overlay)
        self._entries: dict[Path, list[dict[str, Any]]] = {}
        for entry in read_manifest(out_dir):
            if (entry.get("model"), entry.get("weights"), entry.get("method")) != (model, weights, method):
                continue
            if entry.get("precision", "float32") != precision:
                continue
            if canonical(entry.get("options", {})) != wanted:
                continue
            if "overlay" not in entry or canonical(entry["overlay"]) != wanted_overlay:
                continue
            if not wanted_files(entry) <= set(entry["files"]) or not files_complete(out_dir, entry):
                continue
            self._entries.setdefault(Path(entry["input"]).resolve(), []).append(entry)

    def has_targets(self, path: Path, field: str, targets: Sequence[object]) -> bool:
        """Whether every one of ``targets`` (values of the entry ``field``: class index or text) is done."""
        entries = self._entries.get(path.resolve(), [])
        done = {entry.get(field) for entry in entries}
        return all(target in done for target in targets)

    def has_top_k(self, path: Path, top_k: int) -> bool:
        """Whether the ``top_k`` highest classes are done (from a run with at least as large a top-k)."""
        entries = self._entries.get(path.resolve(), [])
        ranks = {entry.get("rank") for entry in entries if (entry.get("top_k") or 0) >= top_k}
        return all(rank in ranks for rank in range(top_k))
