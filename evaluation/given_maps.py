"""``heatmap eval --maps RUN_DIR`` and ``--save-maps DIR``: maps an explaining run wrote, read back for scoring,
and the maps an evaluation computed, written as an explaining run writes them.

:class:`GivenMaps` reads a run folder's manifest (the latest entry of each
map, only those whose files are whole), so an evaluation can score maps it
did not compute. :class:`MapSaver` writes an evaluation's maps through the
same :class:`~heatmap.outputs.ResultWriter` as ``heatmap <method>``, so
``heatmap compare``, ``heatmap report`` and :class:`GivenMaps` read the folder
as they read any run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from heatmap.errors import UsageError
from heatmap.outputs import (
    MANIFEST,
    OVERLAY_SIZE,
    RUNS,
    STEM_BYTES,
    OverlayWriter,
    ResultWriter,
    append_manifest_line,
    configuration_tag,
    default_writers,
    entry_target,
    files_complete,
    fitted,
    latest_entries,
    output_stems,
    read_manifest,
    remove_stale_temporaries,
    repair_manifest,
    short_hash,
    slug,
)

if TYPE_CHECKING:
    from heatmap.models.protocols import Box
    from heatmap.pipeline import MapRecord

# What makes two entries of one method the same configuration: the same maps come only from the same of each
CONFIGURATION_FIELDS = ("model", "weights", "options", "precision")


@dataclass(frozen=True)
class GivenMap:
    """One map of a run folder, as :meth:`GivenMaps.maps_for` hands it out before loading.

    Attributes:
        target: the class index (classifier) or the text's index in :attr:`GivenMaps.texts` (CLIP).
        label: the class name (or None) or the text.
        path: the ``.npy`` file.
    """

    target: int
    label: str | None
    path: Path


@dataclass
class GivenMaps:
    """The maps of one earlier run folder, by input and method.

    Build it with :meth:`read`. Inputs and methods keep the manifest's order.

    Attributes:
        folder: the run folder.
        kind: ``"classifier"`` or ``"clip"`` (CLIP entries name a ``text``).
        models: the model names of the entries (one: a folder of several models is refused).
        inputs: the inputs as the run recorded them, in manifest order, each once.
        methods: the methods, in manifest order, each once.
        texts: CLIP: the texts in ``text_index`` order; empty for a classifier.
        incomplete: one line per map left out because its files are missing or broken.
    """

    folder: Path
    kind: str
    models: list[str]
    inputs: list[str]
    methods: list[str]
    texts: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    _maps: dict[tuple[str, str], list[GivenMap]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, run_dir: Path, methods: Sequence[str] | None = None) -> GivenMaps:
        """The latest, complete maps of ``run_dir``'s manifest.

        Args:
            run_dir: a folder an explaining command (or ``heatmap eval --save-maps``) wrote.
            methods: only these methods' maps (None: every method of the folder).

        Raises:
            UsageError: the folder has no manifest, no complete map (of ``methods``), maps of
                several models, several configurations of one method, CLIP and classifier maps
                together, or two texts with one index.
        """
        folder = Path(run_dir)
        if not (folder / MANIFEST).is_file():
            raise UsageError(f"--maps {folder}: no {MANIFEST} there; point --maps at the output folder of a "
                             "heatmap run (its -o/--out)")
        entries = list(latest_entries(read_manifest(folder)).values())
        if methods is not None:
            entries = _of_methods(folder, entries, methods)
        complete, incomplete = _split_complete(folder, entries)
        if not complete:
            raise UsageError(f"--maps {folder}: none of its {len(entries)} map(s) has its files complete; run the "
                             "heatmap command again into that folder (or point --maps at another run)")
        _check_one_configuration(folder, complete)
        kind = _kind(folder, complete)
        texts = _texts(folder, complete) if kind == "clip" else []
        return cls(folder, kind, _unique(entry["model"] for entry in complete),
                   _unique(entry["input"] for entry in complete), _unique(entry["method"] for entry in complete),
                   texts, incomplete, _by_input_and_method(folder, complete, texts))

    def maps_for(self, input: str, method: str) -> list[tuple[int, str | None, torch.Tensor]]:
        """``(target, label or text, raw map)`` of each map of ``input`` by ``method``, in manifest order.

        ``input`` as the run recorded it (one of :attr:`inputs`); the map is float32 ``[gh, gw]``, as the
        ``.npy`` holds it. [] when the folder has no such map.
        """
        return [(given.target, given.label, torch.from_numpy(_load_map(given.path)))
                for given in self._maps.get((input, method), [])]

    def targets_for(self, input: str, method: str) -> list[tuple[int, str | None]]:
        """``(target, label or text)`` of each map of ``input`` by ``method``, without loading a map."""
        return [(given.target, given.label) for given in self._maps.get((input, method), [])]

    def resolve(self, recorded: str) -> Path | None:
        """The image file of the recorded input ``recorded`` (see :func:`resolve_input`)."""
        return resolve_input(recorded, self.folder)


def resolve_input(recorded: str, run_dir: Path) -> Path | None:
    """The image file a run recorded as ``recorded``, where it can be found now; None when nowhere.

    Inputs are recorded as typed, relative to the folder the run ran in. Tried in order: the path as
    is when absolute; from each ``cwd`` of ``run_dir``'s ``runs.jsonl`` (latest run first); from the
    current folder; from ``run_dir`` and each folder above it.
    """
    from heatmap.report.folders import input_file

    # the report's pictures are found the same way: one rule for every reader of a run folder
    return input_file(recorded, Path(run_dir))


def _of_methods(folder: Path, entries: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The entries of ``methods``; a method the folder has no map of is refused, naming those it has."""
    present = _unique(entry["method"] for entry in entries)
    missing = [name for name in methods if name not in present]
    if missing:
        raise UsageError(f"--maps {folder} has no map of {', '.join(missing)} (its methods: "
                         f"{', '.join(present) or 'none'}); choose --methods among them")
    return [entry for entry in entries if entry["method"] in methods]


def _split_complete(folder: Path, entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries whose files are whole and whose map is 2-D, and a line for each other."""
    complete, incomplete = [], []
    for entry in entries:
        if files_complete(folder, entry) and len(entry.get("map_shape", [])) == 2:
            complete.append(entry)
        else:
            incomplete.append(f"{entry['input']} [{entry['method']}, {entry_target(entry)}]: files missing or "
                              f"broken ({', '.join(map(str, entry['files'].values())) or 'none recorded'})")
    return complete, incomplete


def _configuration(entry: dict[str, Any]) -> str:
    """``model demo, weights sha256:..., options {...}, precision float32``: what the refusal names."""
    return ", ".join(f"{name} {json.dumps(entry.get(name), sort_keys=True) if name == 'options' else entry.get(name)}"
                     for name in CONFIGURATION_FIELDS)


def _check_one_configuration(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Refuse maps of several models, or of one method in several configurations: which to score is unclear."""
    models = _unique(entry["model"] for entry in entries)
    if len(models) > 1:
        raise UsageError(f"--maps {folder} holds maps of several models ({', '.join(models)}); point --maps at "
                         "the folder of one run")
    configurations: dict[str, list[str]] = {}
    for entry in entries:
        own = configurations.setdefault(entry["method"], [])
        if _configuration(entry) not in own:
            own.append(_configuration(entry))
    for method, found in configurations.items():
        if len(found) > 1:
            raise UsageError(f"--maps {folder} holds maps of {method} in {len(found)} configurations "
                             f"({'; '.join(found)}); point --maps at the folder of one run")


def _kind(folder: Path, entries: list[dict[str, Any]]) -> str:
    """``"clip"`` when the entries name texts, else ``"classifier"``; both at once are refused."""
    kinds: list[str] = _unique("clip" if "text" in entry else "classifier" for entry in entries)
    if len(kinds) > 1:
        raise UsageError(f"--maps {folder} holds both classifier and CLIP maps; point --maps at the folder of one "
                         "run")
    return kinds[0]


def _texts(folder: Path, entries: list[dict[str, Any]]) -> list[str]:
    """The texts in ``text_index`` order; two texts at one index (runs of other texts) are refused."""
    by_index: dict[int, str] = {}
    for entry in entries:
        index, text = int(entry["text_index"]), str(entry["text"])
        if by_index.setdefault(index, text) != text:
            raise UsageError(f"--maps {folder}: text {index} is {by_index[index]!r} in one map and {text!r} in "
                             "another (runs with other texts); point --maps at the folder of one run")
    texts = [by_index[index] for index in sorted(by_index)]
    duplicated = _unique(text for text in texts if texts.count(text) > 1)
    if duplicated:
        raise UsageError(f"--maps {folder}: the text {duplicated[0]!r} has several indices (runs with other "
                         "texts); point --maps at the folder of one run")
    return texts


def _by_input_and_method(folder: Path, entries: list[dict[str, Any]],
                         texts: list[str]) -> dict[tuple[str, str], list[GivenMap]]:
    maps: dict[tuple[str, str], list[GivenMap]] = {}
    for entry in entries:
        if texts:
            # its place among the texts: its text_index, unless every map of a text before it was left out
            given = GivenMap(texts.index(str(entry["text"])), str(entry["text"]), folder / entry["files"]["npy"])
        else:
            given = GivenMap(int(entry["target"]), entry.get("label"), folder / entry["files"]["npy"])
        maps.setdefault((entry["input"], entry["method"]), []).append(given)
    return maps


def _load_map(path: Path) -> np.ndarray:
    # files_complete loaded it once already: a file changed since is the user's doing
    return np.ascontiguousarray(np.load(path, allow_pickle=False), dtype=np.float32)


def _unique(values: Any) -> list[Any]:
    return list(dict.fromkeys(values))


def pixels_picture(pixels: torch.Tensor) -> Image.Image:
    """An evaluation image's pixels (``[3, H, W]`` in [0, 1]) as an RGB picture, to draw its overlays on."""
    array = (pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())  # uint8 [H, W, 3]: RGB


class MapSaver:
    """Writes an evaluation's maps into a folder as ``heatmap <method>`` writes them.

    The same file names (stem, method, target, configuration tag), files (map,
    overlay, CLIP token strip) and manifest lines as the explaining commands,
    so ``heatmap compare``, ``heatmap report`` and :meth:`GivenMaps.read` read
    the folder unchanged. An input without a file (a demo-world scene) is
    recorded under its name.

    Args:
        out_dir: the folder (created if needed).
        model: the model's name, as its adapter says it.
        weights: what identifies its weights (``heatmap.models.weights_identity``), or None.
        precision: the dtype the maps were computed in (``"float32"``).
        inputs: every input file of the evaluation, when known before the first map: each
            gets the name ``heatmap <method>`` would give it over these inputs.
        colormap, alpha, overlay_size: how the overlays are drawn.

    Attributes:
        repaired: the numbers of the broken manifest lines an interrupted run had left in
            ``out_dir``, removed before the first map is written (as the explaining commands do).
        maps: how many maps were written.

    Raises:
        HeatmapError: ``out_dir``'s manifest is a symbolic link.
    """

    def __init__(self, out_dir: Path, model: str, weights: str | None, precision: str,
                 inputs: Sequence[Path] = (), colormap: str = "jet", alpha: float = 0.5,
                 overlay_size: int = OVERLAY_SIZE) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # as a rerun of an explaining command into the folder: no stale temporary, no half line to append after
        remove_stale_temporaries(self.out_dir)
        self.repaired = repair_manifest(self.out_dir)
        self.model, self.weights, self.precision = model, weights, precision
        self.writers = default_writers(colormap, alpha, overlay_size)
        self.overlay = OverlayWriter(colormap, alpha, overlay_size).settings
        self.stems = dict(zip((str(path) for path in inputs), output_stems(list(inputs)), strict=True))
        self.maps = 0
        self.methods: list[str] = []

    def save(self, name: str, method: str, options: dict[str, Any], records: Sequence[MapRecord],
             picture: Image.Image | None = None, image_path: Path | None = None,
             box: Box | None = None) -> list[dict[str, Any]]:
        """Write one input's maps by one method; return their manifest entries.

        Args:
            name: the input as the manifest records it (its path as given, or a scene's name).
            method: the method's name.
            options: the method's options, complete (``Driver.options``).
            records: its maps (``heatmap.pipeline.classifier_records`` / ``clip_records``).
            picture: the picture to draw the overlays on (None: no overlay).
            image_path: the input's file (None: it has none), for its output name.
            box: the part of ``picture`` the model saw, when the records do not say it (the
                evaluation explains pixels already cropped: their records have none); None: the
                records' own (None: all of the picture).

        Raises:
            OutputError: a file cannot be written.
        """
        from dataclasses import replace

        kind = "clip" if any("text" in record.fields for record in records) else "classifier"
        tag = configuration_tag({"model": self.model, "weights": self.weights, "kind": kind, "method": method,
                                 "options": options, "precision": self.precision})
        writer = ResultWriter(self.out_dir, self.model, self.writers, tag)
        common = {"weights": self.weights, "precision": self.precision, "options": options,
                  "overlay": self.overlay}
        stem = self._stem(name, image_path)
        entries = [writer.write(Path(name), stem, picture, record if box is None else replace(record, box=box),
                                method=method,
                                target_name=record.target_name, common=common) for record in records]
        self.maps += len(entries)
        self.methods = _unique([*self.methods, method])
        return entries

    def record_run(self, command: Sequence[str], kind: str, inputs: int, seconds: float = 0.0) -> None:
        """Append the evaluation's line to the folder's ``runs.jsonl``: its ``cwd`` lets relative inputs be found.

        Args:
            command: the command line as typed.
            kind: ``"classifier"`` or ``"clip"``.
            inputs: how many inputs the maps are of.
            seconds: how long the evaluation took.
        """
        from datetime import datetime, timedelta, timezone

        started = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        line = {"command": list(command), "cwd": os.getcwd(), "started": started.isoformat(timespec="seconds"),
                "seconds": round(seconds, 2), "model": self.model, "weights": self.weights, "kind": kind,
                "method": ", ".join(self.methods), "precision": self.precision, "inputs": inputs,
                "explained": inputs, "maps": self.maps, "failures": [], "exit_code": 0}
        append_manifest_line(self.out_dir / RUNS, line)

    def _stem(self, name: str, image_path: Path | None) -> str:
        """The input's output name: as the explaining commands name it, or its name made file-safe; one per input."""
        if name not in self.stems:
            stem = Path(image_path).stem if image_path is not None else fitted(slug(name), STEM_BYTES)
            if stem.casefold() in {taken.casefold() for taken in self.stems.values()}:
                # another input has it (a/cat.png, b/cat.png): a distinct name, stable for this input
                stem = fitted(f"{stem}-{short_hash(str(Path(name).resolve()) if image_path else name)}",
                              STEM_BYTES)
            self.stems[name] = stem
        return self.stems[name]
