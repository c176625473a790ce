"""Writing and reading results: the raw ``.npy`` map, the overlay ``.png``, the manifest.

Shared by every command. Each file is written to a temporary name in the
same folder and renamed into place, so an interrupted run never leaves a
truncated file, and a manifest line is appended only once its files exist.
A manifest line names what made its map (input, model, method, options,
target), which is how a resumed run knows what is done and how
``heatmap compare`` pairs two runs' maps.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from heatmap.render import overlay, text_strip

if TYPE_CHECKING:
    from heatmap.pipeline import MapRecord

MANIFEST = "manifest.jsonl"


def slug(text: str) -> str:
    """A file-name-safe form of a label: ``"tabby, tabby cat"`` -> ``"tabby_tabby_cat"``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "x"


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per input: its stem, or, where stems clash
    (``a/cat.jpg``, ``b/cat.jpg``), its path below their common folder
    (``a__cat_jpg``, ``b__cat_jpg``)."""
    counts = Counter(path.stem for path in paths)
    clashing = [path.resolve() for path in paths if counts[path.stem] > 1]
    root = Path(os.path.commonpath(clashing)) if clashing else None
    return [path.stem if counts[path.stem] == 1
            else "__".join(path.resolve().relative_to(root).parts).replace(".", "_")
            for path in paths]


def target_names(labels: Sequence[str] | None) -> dict[int, str]:
    """Class index -> the name used in file names: the label's slug, or the index.

    Labels whose slugs collide ("crane" the bird, "crane" the machine) get
    their index in front.
    """
    if labels is None:
        return {}
    slugs = [slug(label) for label in labels]
    counts = Counter(slugs)
    return {i: (s if counts[s] == 1 else f"{i}-{s}") for i, s in enumerate(slugs)}


TEMPORARY_MARK = ".tmp-"


def _temporary_suffix() -> str:
    return f"{TEMPORARY_MARK}{socket.gethostname()}-{os.getpid()}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    The temporary file is removed if anything (Ctrl-C included) interrupts
    the write; only a killed process leaves one, which
    :func:`remove_stale_temporaries` clears on the next run.
    """
    temporary = path.with_name(f".{path.name}{_temporary_suffix()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Remove temporary files this host's killed runs left in ``folder``; return how many.

    Only files of this host whose process is gone: a run still writing (on
    this host or another sharing the folder) keeps its own.
    """
    host_mark = f"{TEMPORARY_MARK}{socket.gethostname()}-"
    removed = 0
    for path in Path(folder).glob(f".*{host_mark}*"):
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and not _process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class NpyWriter:
    """The raw map, float32, as ``<base>.npy``."""

    kind = "npy"

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None:
        name = f"{base}.npy"
        write_atomically(folder / name, npy_bytes(np.ascontiguousarray(record.heatmap, dtype=np.float32)))
        return name


@dataclass
class OverlayWriter:
    """The map over the picture it explains, as ``<base>.png``."""

    colormap: str = "jet"
    alpha: float = 0.5
    kind = "png"

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None:
        if picture is None:
            return None
        heatmap = np.ascontiguousarray(record.heatmap, dtype=np.float32)
        name = f"{base}.png"
        write_atomically(folder / name, png_bytes(overlay(picture, heatmap, record.box, self.colormap, self.alpha)))
        return name


class TokenStripWriter:
    """A CLIP text with each word piece shaded by its relevance, as ``<base>.tokens.png``."""

    kind = "tokens"

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None:
        if record.word_pieces is None or record.token_relevance is None:
            return None
        name = f"{base}.tokens.png"
        write_atomically(folder / name, png_bytes(text_strip(record.word_pieces, record.token_relevance)))
        return name


class FileWriter(Protocol):
    """Writes one kind of file of one record; returns its name, or None when it has nothing to write."""

    kind: str

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None: ...


def default_writers(colormap: str = "jet", alpha: float = 0.5) -> list[FileWriter]:
    """What every explaining command writes: the map, the overlay, and (CLIP) the token strip."""
    return [NpyWriter(), OverlayWriter(colormap, alpha), TokenStripWriter()]


@dataclass
class ResultWriter:
    """Writes one folder of results: each record's files, then its ``manifest.jsonl`` line.

    Args:
        out_dir: the folder (created if needed).
        model: the model's name, recorded in the manifest.
        writers: the file writers, each one kind of file.
    """

    out_dir: Path
    model: str
    writers: list[FileWriter] = field(default_factory=default_writers)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, source: Path, stem: str, picture: Image.Image | None, record: MapRecord, *, method: str,
              target_name: str, common: dict[str, Any]) -> dict[str, Any]:
        """Write one record's files and its manifest line; return the manifest entry.

        Args:
            source: the input image's path.
            stem: its output name (see :func:`output_stems`).
            picture: the input image, for the overlay.
            record: the map and what the manifest says of its target.
            method: the method's name (part of the file names).
            target_name: the target as it appears in file names.
            common: what the manifest says of every map of the run (weights, precision, options).
        """
        base = f"{stem}.{method}.{target_name}"
        files = {}
        for writer in self.writers:
            name = writer(self.out_dir, base, picture, record)
            if name is not None:
                files[writer.kind] = name
        entry = {"input": str(source), "model": self.model, "method": method, **common, **record.fields,
                 "map_shape": list(record.heatmap.shape), "files": files}
        append_manifest_line(self.out_dir / MANIFEST, entry)
        return entry


def append_manifest_line(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one line, in one write: a reader never sees half an entry.

    A last line left without its newline by a killed writer is closed first,
    so the new entry starts on a line of its own (readers skip the broken one).
    """
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``folder``'s manifest, in order; [] when there is none.

    A line that is not a whole JSON object (a writer killed mid-line) is
    skipped: its files, if any, are rewritten by the next run.
    """
    path = Path(folder) / MANIFEST
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "files" in entry:
            entries.append(entry)
    return entries


def entry_target(entry: dict[str, Any]) -> str:
    """What an entry explains: the class index (classifiers) or the text (CLIP)."""
    return str(entry["target"]) if "target" in entry else str(entry.get("text"))


def entry_key(entry: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """``(input, model, method, options, target)``: what pairs two runs' maps of the same thing."""
    options = json.dumps(entry.get("options", {}), sort_keys=True)
    return entry["input"], entry["model"], entry["method"], options, entry_target(entry)


def latest_entries(entries: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Entries by :func:`entry_key`; a map written again (a rerun into the same folder) counts once, the last."""
    return {entry_key(entry): entry for entry in entries}


def files_complete(folder: Path, entry: dict[str, Any]) -> bool:
    """Whether every file of ``entry`` is there and whole (the map loads with its recorded shape)."""
    folder = Path(folder)
    try:
        paths = {name: folder / file for name, file in entry["files"].items()}
        if not all(path.is_file() and path.stat().st_size > 0 for path in paths.values()):
            return False
        heatmap = np.load(paths["npy"], allow_pickle=False)
        for name, path in paths.items():
            if name != "npy":
                with Image.open(path) as image:
                    image.verify()
    except (OSError, ValueError, KeyError, SyntaxError):
        return False
    return list(heatmap.shape) == list(entry.get("map_shape", heatmap.shape))
