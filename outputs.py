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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from heatmap.render import overlay

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


@dataclass
class ResultWriter:
    """Writes one folder of results and its ``manifest.jsonl``.

    Args:
        out_dir: the folder (created if needed).
        model: the model's name, recorded in the manifest.
        colormap: the overlay's colormap.
        alpha: the overlay's opacity.
    """

    out_dir: Path
    model: str
    colormap: str = "jet"
    alpha: float = 0.5

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, source: Path, stem: str, picture: Image.Image, box, heatmap: np.ndarray, *,
              method: str, target_name: str, record: dict[str, Any],
              extra_images: dict[str, Image.Image] | None = None) -> dict[str, Any]:
        """Write one map (``[gh, gw]``) of one image and target; return its manifest entry.

        Args:
            source: the input image's path.
            stem: its output name (see :func:`output_stems`).
            picture: the input image, for the overlay.
            box: the part of ``picture`` the model saw.
            heatmap: the raw map.
            method: the method's name (part of the file names).
            target_name: the target as it appears in file names.
            record: what the manifest says of this target (class, score, text...).
            extra_images: more pictures to write beside the overlay, by suffix
                (``{"tokens": strip}`` -> ``<base>.tokens.png``).
        """
        base = f"{stem}.{method}.{target_name}"
        heatmap = np.ascontiguousarray(heatmap, dtype=np.float32)
        files = {"npy": f"{base}.npy", "png": f"{base}.png"}
        write_atomically(self.out_dir / files["npy"], npy_bytes(heatmap))
        write_atomically(self.out_dir / files["png"],
                         png_bytes(overlay(picture, heatmap, box, self.colormap, self.alpha)))
        for suffix, image in (extra_images or {}).items():
            files[suffix] = f"{base}.{suffix}.png"
            write_atomically(self.out_dir / files[suffix], png_bytes(image))
        entry = {"input": str(source), "model": self.model, "method": method, **record,
                 "map_shape": list(heatmap.shape), "files": files}
        self.append_manifest(entry)
        return entry

    def append_manifest(self, entry: dict[str, Any]) -> None:
        append_manifest_line(self.out_dir / MANIFEST, entry)


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
