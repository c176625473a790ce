"""Comparing maps: two runs' result folders, or a map and its snapshot.

``heatmap compare`` and the pytest fixture (``heatmap.testing.pytest_plugin``) use the
same metrics and thresholds. Each map is first scaled to max |value| = 1, so
that a map scaled by a constant (a larger logit) is the same map:

- ``max-diff``: the largest absolute difference of the scaled maps;
- ``corr``: the Pearson correlation of their cells;
- ``top-iou``: the overlap (intersection over union) of the cells holding the
  top 10% of each map's values.

The defaults pass for reruns of the same model on the same kind of machine
(byte-identical on CPU) and for float32 round-off between devices, and fail
for a real change of the weights; README "CI regression snapshots" has the
measurements behind them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# numpy and the manifest readers are imported where used: the CLI reads the
# threshold defaults below for `heatmap compare --help`, which must stay quick.

TOP_FRACTION = 0.1
# What makes two maps of the same input, method, options and target differ besides the code: the manifest
# fields of the model's configuration.
CONFIGURATION_FIELDS = ("weights", "precision")


@dataclass(frozen=True)
class Thresholds:
    """When two maps count as the same (README documents the defaults)."""

    max_diff: float = 0.002
    min_corr: float = 0.999
    min_top_iou: float = 0.6


@dataclass(frozen=True)
class MapMetrics:
    """How two maps differ (see the module docstring)."""

    max_diff: float
    corr: float
    top_iou: float

    def failures(self, thresholds: Thresholds) -> list[str]:
        """One phrase per metric outside its threshold, naming the metric; [] when the maps agree."""
        failed = []
        if not self.max_diff <= thresholds.max_diff:  # "not <=" also catches NaN
            failed.append(f"max-diff {self.max_diff:.4g} > {thresholds.max_diff:g}")
        if not self.corr >= thresholds.min_corr:
            failed.append(f"corr {self.corr:.6g} < {thresholds.min_corr:g}")
        if not self.top_iou >= thresholds.min_top_iou:
            failed.append(f"top-iou {self.top_iou:.3g} < {thresholds.min_top_iou:g}")
        return failed


def scaled(heatmap: np.ndarray) -> np.ndarray:
    """``heatmap`` over its max |value| (float64); an all-zero map stays zero."""
    import numpy as np

    values = np.asarray(heatmap, dtype=np.float64)
    peak = np.abs(values).max() if values.size else 0.0
    return values / peak if peak > 0 else values


def top_cells(values: np.ndarray) -> set[int]:
    """The flat indices of the ``ceil(10%)`` largest cells (ties broken by position)."""
    import numpy as np

    count = max(1, math.ceil(TOP_FRACTION * values.size))
    return set(np.argsort(-values.ravel(), kind="stable")[:count].tolist())


def compare_maps(baseline: np.ndarray, candidate: np.ndarray) -> MapMetrics:
    """The metrics of two maps of the same shape.

    Raises:
        ValueError: when the shapes differ.
    """
    import numpy as np

    if np.shape(baseline) != np.shape(candidate):
        raise ValueError(f"map shapes differ: {tuple(np.shape(baseline))} vs {tuple(np.shape(candidate))}")
    a, b = scaled(baseline), scaled(candidate)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return MapMetrics(math.nan, math.nan, math.nan)
    max_diff = float(np.abs(a - b).max()) if a.size else 0.0
    if a.std() == 0 or b.std() == 0:  # Pearson is undefined for a constant map
        corr = 1.0 if np.array_equal(a, b) else 0.0
    else:
        corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    top_a, top_b = top_cells(a), top_cells(b)
    return MapMetrics(max_diff, corr, len(top_a & top_b) / len(top_a | top_b))


def configuration(entry: dict[str, Any]) -> tuple[str, ...]:
    """An entry's weights and precision as its manifest records them ("" for a field it lacks)."""
    return tuple(str(entry.get(name) or "") for name in CONFIGURATION_FIELDS)


def pairing_key(entry: dict[str, Any]) -> tuple[str, ...]:
    """``(input, model, method, options, target, weights, precision)``: the same map of the same configuration."""
    from heatmap.outputs import entry_key

    return (*entry_key(entry), *configuration(entry))


def shown_value(field_name: str, value: Any) -> str:
    """A configuration field as a table shows it: a weights hash cut to 12 digits."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if field_name == "weights" and text.startswith("sha256:"):
        return text[:len("sha256:") + 12]
    return text


def entry_score(entry: dict[str, Any]) -> float | None:
    """The target score a manifest entry records: the logit (CLIP) or the class score."""
    value = entry.get("logit", entry.get("score"))
    return float(value) if value is not None else None


@dataclass
class EntryComparison:
    """One entry of the baseline or the candidate, and how it compares.

    Attributes:
        key: the entry's :func:`~heatmap.outputs.entry_key`, or its :func:`pairing_key` when the
            folders pair by configuration.
        baseline, candidate: the manifest entries (None where it is missing).
        metrics: the map metrics, when both maps could be read.
        score_change: candidate minus baseline target score.
        problems: why the entry fails; empty when it passes.
        named_fields: the configuration fields (:data:`CONFIGURATION_FIELDS`) the entry's name shows,
            those that tell apart entries that would otherwise share a name.
    """

    key: tuple[str, ...]
    baseline: dict[str, Any] | None
    candidate: dict[str, Any] | None
    metrics: MapMetrics | None = None
    score_change: float | None = None
    problems: list[str] = field(default_factory=list)
    named_fields: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def source(self) -> dict[str, Any]:
        """The baseline's entry, or the candidate's where the baseline has none."""
        entry = self.baseline or self.candidate
        if entry is None:
            raise ValueError("an entry comparison has a baseline or a candidate entry, or both")
        return entry

    def configuration_of(self, field_name: str) -> dict[str, Any]:
        """``{"baseline": value, "candidate": value}`` of a configuration field (None for a side without the
        entry, or an entry without the field)."""
        return {"baseline": self.baseline.get(field_name) if self.baseline is not None else None,
                "candidate": self.candidate.get(field_name) if self.candidate is not None else None}

    @property
    def name(self) -> str:
        """``input [method, target]``, how a person names the entry; with its weights and precision where
        the folders hold entries of several."""
        from heatmap.outputs import entry_target

        entry = self.source
        target = " ".join(str(part) for part in (entry_target(entry), entry.get("label")) if part is not None)
        named = "".join(f", {name} {shown_value(name, entry.get(name))}" for name in self.named_fields)
        return f"{entry['input']} [{entry['method']}, {target}{named}]"


@dataclass
class FolderComparison:
    """Every entry of two result folders, paired.

    Attributes:
        broken_lines: per side (``baseline``, ``candidate``), the numbers of
            manifest lines that are not entries (left out).
        configurations: per side, its configurations (weights, precision; see :func:`configuration`).
        by_configuration: whether entries pair only with the same weights and precision (a folder
            holds several configurations), else across them (one each: the CI case of a changed model).
        differing_fields: the configuration fields whose values differ between the entries.
    """

    baseline_dir: Path
    candidate_dir: Path
    thresholds: Thresholds
    entries: list[EntryComparison]
    broken_lines: dict[str, list[int]] = field(default_factory=dict)
    configurations: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    by_configuration: bool = False
    differing_fields: tuple[str, ...] = ()

    @property
    def nothing_paired(self) -> bool:
        """No entry of the baseline found its partner: the runs differ in kind, not in maps."""
        return all(entry.baseline is None or entry.candidate is None for entry in self.entries)

    @property
    def failed(self) -> list[EntryComparison]:
        return [entry for entry in self.entries if not entry.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def worst_first(self) -> list[EntryComparison]:
        """Failures first, then by falling correlation and rising max-diff."""
        def badness(entry: EntryComparison) -> tuple[bool, float, float]:
            metrics = entry.metrics
            if metrics is None:
                return (entry.passed, -math.inf, math.inf)
            corr = -math.inf if math.isnan(metrics.corr) else metrics.corr
            return (entry.passed, corr, -metrics.max_diff if not math.isnan(metrics.max_diff) else -math.inf)
        return sorted(self.entries, key=badness)


def compare_folders(baseline_dir: Path, candidate_dir: Path, thresholds: Thresholds = Thresholds()
                    ) -> FolderComparison:
    """Pair the entries of two result folders by (input, model, method, options, target) and compare each.

    When each folder holds maps of one configuration (weights, precision), entries pair across them: the
    current model against the baseline's. When a folder holds several, entries pair only with the same
    weights and precision too, so that no configuration hides another whatever the order of the runs.
    An entry of the baseline with no partner in the candidate is "missing",
    one of the candidate with none in the baseline "extra"; both fail.

    Raises:
        FileNotFoundError: when a folder has no manifest.
    """
    from heatmap.outputs import entry_key, manifest_lines

    baseline_dir, candidate_dir = Path(baseline_dir), Path(candidate_dir)
    read, broken = {}, {}
    for label, folder in (("baseline", baseline_dir), ("candidate", candidate_dir)):
        entries, broken[label] = manifest_lines(folder)
        if not entries:
            raise FileNotFoundError(f"{label} {folder} has no manifest.jsonl with entries; "
                                    "give a folder a heatmap run wrote")
        read[label] = entries
    configurations = {label: sorted({configuration(entry) for entry in entries}) for label, entries in read.items()}
    by_configuration = any(len(found) > 1 for found in configurations.values())
    key_of = pairing_key if by_configuration else entry_key
    # a map written again (a rerun into the same folder) counts once, the last
    baseline = {key_of(entry): entry for entry in read["baseline"]}
    candidate = {key_of(entry): entry for entry in read["candidate"]}
    results = []
    for key in [*baseline, *(key for key in candidate if key not in baseline)]:
        results.append(_compare_entry(key, baseline.get(key), candidate.get(key), baseline_dir, candidate_dir,
                                      thresholds))
    differing = tuple(name for name in CONFIGURATION_FIELDS
                      if len({entry.get(name) for side in (baseline, candidate) for entry in side.values()}) > 1)
    if by_configuration:
        for result in results:
            result.named_fields = differing
    return FolderComparison(baseline_dir, candidate_dir, thresholds, _changed_targets(results, by_configuration),
                            broken, configurations, by_configuration, differing)


def _changed_targets(results: list[EntryComparison], by_configuration: bool = False) -> list[EntryComparison]:
    """A top-k class that changed (missing as one class, extra as another, same rank) as ONE changed entry."""
    def slot(entry: dict[str, Any]) -> tuple[Any, ...]:
        return (entry["input"], entry["model"], entry["method"], json.dumps(entry.get("options", {}), sort_keys=True),
                entry.get("top_k"), entry.get("rank"), configuration(entry) if by_configuration else None)

    extra = {slot(result.candidate): result for result in results
             if result.baseline is None and result.candidate is not None and result.candidate.get("rank") is not None}
    merged, used = [], set()
    for result in results:
        partner = extra.get(slot(result.baseline)) if result.candidate is None and result.baseline is not None \
            and result.baseline.get("rank") is not None else None
        if partner is None:
            merged.append(result)
            continue
        used.add(id(partner))
        was, now = result.baseline, partner.candidate
        assert was is not None and now is not None
        rank = int(was["rank"]) + 1
        changed = EntryComparison(result.key, was, now, score_change=None, named_fields=result.named_fields, problems=[
            f"top-{rank} class changed: was {was['target']} {was.get('label') or ''}".rstrip()
            + f", is {now['target']} {now.get('label') or ''}".rstrip()])
        merged.append(changed)
    return [result for result in merged if id(result) not in used]


def _compare_entry(key: tuple[str, ...], baseline: dict[str, Any] | None, candidate: dict[str, Any] | None,
                   baseline_dir: Path, candidate_dir: Path, thresholds: Thresholds) -> EntryComparison:
    import numpy as np

    result = EntryComparison(key, baseline, candidate)
    if candidate is None:
        result.problems.append("missing in the candidate")
        return result
    if baseline is None:
        result.problems.append("extra in the candidate (not in the baseline)")
        return result
    maps = []
    for label, folder, entry in (("baseline", baseline_dir, baseline), ("candidate", candidate_dir, candidate)):
        try:
            maps.append(np.load(folder / entry["files"]["npy"], allow_pickle=False))
        except (OSError, ValueError, KeyError) as error:
            result.problems.append(f"{label} map unreadable: {error}")
    before, after = entry_score(baseline), entry_score(candidate)
    if before is not None and after is not None:
        result.score_change = after - before
    if len(maps) == 2:
        try:
            result.metrics = compare_maps(*maps)
        except ValueError as error:
            result.problems.append(str(error))
        else:
            result.problems.extend(result.metrics.failures(thresholds))
    return result


__all__ = ["CONFIGURATION_FIELDS", "EntryComparison", "FolderComparison", "MapMetrics", "Thresholds",
           "compare_folders", "compare_maps", "configuration", "pairing_key"]
