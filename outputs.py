"""Writing and reading results: the raw ``.npy`` map, the overlay ``.png``, the manifest.

Shared by every command. Each file is written to a temporary name in the
same folder and renamed into place, so an interrupted run never leaves a
truncated file, and a manifest line is appended only once its files exist.
A manifest line names what made its map (input, model, method, options,
target), which is how a resumed run knows what is done and how
``heatmap compare`` pairs two runs' maps.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from heatmap.errors import HeatmapError
from heatmap.render import overlay, text_strip

if TYPE_CHECKING:
    from heatmap.models.protocols import Box
    from heatmap.pipeline import MapRecord

MANIFEST = "manifest.jsonl"
RUNS = "runs.jsonl"  # one line per run into the folder: its command, versions, device, counts and failures


class OutputError(HeatmapError):
    """A file of one input could not be written; the input fails, the run goes on."""


# Byte budgets of the parts of a file name (most file systems allow 255 bytes): a part
# over its budget is cut and gets a hash of the whole, so it stays distinct.
STEM_BYTES = 80
TARGET_BYTES = 60


def short_hash(text: str, length: int = 8) -> str:
    """The first ``length`` hex digits of ``text``'s sha256: a stable, run-independent tag."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def slug(text: str) -> str:
    """A file-name-safe form of a label: letters and digits of every script kept, the rest ``_``.

    ``"tabby, tabby cat"`` -> ``"tabby_tabby_cat"``, ``"красное сердце"`` -> ``"красное_сердце"``.
    """
    return re.sub(r"[\W_]+", "_", text).strip("_") or "x"


def fitted(name: str, budget: int) -> str:
    """``name`` when it fits in ``budget`` UTF-8 bytes, else cut to fit with a hash of the whole appended."""
    if len(name.encode("utf-8")) <= budget:
        return name
    tag = "-" + short_hash(name)
    cut = name.encode("utf-8")[:budget - len(tag)].decode("utf-8", errors="ignore")
    return cut + tag


def text_name(text: str) -> str:
    """How a CLIP text appears in file names: its slug, with a hash of the text when the slug lost anything.

    Two texts that slug alike (``"🙂"`` and ``"🙃"``, ``"a cat"`` and ``"a-cat"``) get distinct names;
    a text's name never depends on the other texts of the run.
    """
    name = slug(text)
    if name != text:
        name = f"{name}-{short_hash(text)}"
    return fitted(name, TARGET_BYTES)


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct output name per input, chosen over all inputs of a run.

    Its stem; where stems clash (also only by case: ``Cat.jpg``, ``cat.png``),
    its path below their common folder with the suffix kept (``a__cat.jpg``,
    ``b__cat.jpg``); a name still shared after that (or cut to fit) gets a
    hash of the input's full path. Never two inputs with one name.
    """
    counts = Counter(path.stem.casefold() for path in paths)
    clashing = [path.resolve() for path in paths if counts[path.stem.casefold()] > 1]
    root = Path(os.path.commonpath(clashing)) if clashing else None
    names = [path.stem if counts[path.stem.casefold()] == 1
             else "__".join(path.resolve().relative_to(root).parts)  # type: ignore[arg-type]
             for path in paths]
    names = [fitted(name, STEM_BYTES) for name in names]
    taken = Counter(name.casefold() for name in names)
    return [name if taken[name.casefold()] == 1 else fitted(f"{name}-{short_hash(str(path.resolve()))}", STEM_BYTES)
            for name, path in zip(names, paths, strict=True)]


def configuration_tag(fields: dict[str, Any]) -> str:
    """A short tag of everything that makes a map other than its input and target.

    ``fields``: model, weights, kind (classifier or CLIP), method, options,
    precision. Part of every file name, so two configurations never write
    the same file (README, "Outputs").
    """
    return short_hash(json.dumps(fields, sort_keys=True, default=str))


def target_names(labels: Sequence[str] | None) -> dict[int, str]:
    """Class index -> the name used in file names: the label's slug, or the index.

    Labels whose slugs collide ("crane" the bird, "crane" the machine) get
    their index in front.
    """
    if labels is None:
        return {}
    slugs = [fitted(slug(label), TARGET_BYTES) for label in labels]
    counts = Counter(name.casefold() for name in slugs)
    return {i: (name if counts[name.casefold()] == 1 else f"{i}-{name}") for i, name in enumerate(slugs)}


TEMPORARY_MARK = ".tmp-"


# New files are created, never opened: a name planted in a shared folder (a symbolic link
# to a file elsewhere, say) makes the open fail instead of redirecting the write.
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def refuse_link(path: Path) -> None:
    """Raise :class:`OSError` (``ELOOP``) when ``path`` is a symbolic link: nothing is written through one."""
    if os.path.islink(path):
        raise OSError(errno.ELOOP, f"{path} is a symbolic link; refusing to write through it (remove it)",
                      str(path))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    The temporary file is created new (``O_EXCL``, never following a link)
    under an unpredictable name; ``path`` itself is refused when it is a
    symbolic link (:class:`OSError`), so no write lands outside its folder.
    The temporary file is removed if anything (Ctrl-C included) interrupts
    the write; only a killed process leaves one, which
    :func:`remove_stale_temporaries` clears on the next run.
    """
    path = Path(path)
    refuse_link(path)
    # the pid stays last: remove_stale_temporaries reads it there
    prefix = f".{path.name}{TEMPORARY_MARK}{socket.gethostname()}-"
    while True:
        temporary = path.with_name(f"{prefix}{secrets.token_hex(4)}-{os.getpid()}")
        try:
            fd = os.open(temporary, CREATE_NEW, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        refuse_link(path)
        # rename replaces a directory entry and never follows a link at the destination
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


OVERLAY_SIZE = 2048  # the overlay's longest side by default: a 24 MP photo's would cost seconds and GBs


@dataclass
class OverlayWriter:
    """The map over the picture it explains, as ``<base>.<settings tag>.png``.

    The name carries a tag of :attr:`settings`, so overlays of one map drawn
    otherwise (another colormap, opacity or size) never replace each other.

    Attributes:
        colormap, alpha: the overlay's colours and opacity.
        max_side: the overlay's longest side in pixels (the picture is scaled
            down to it first, never up); 0: the picture's own size.
    """

    colormap: str = "jet"
    alpha: float = 0.5
    max_side: int = OVERLAY_SIZE
    value_range: tuple[float, float] | None = None
    kind = "png"

    @property
    def settings(self) -> dict[str, Any]:
        """How the overlay is drawn: recorded in the manifest line (``overlay``), tagged in the file name."""
        return {"colormap": self.colormap, "alpha": float(self.alpha), "overlay_size": int(self.max_side),
                **scale_settings(self.value_range)}

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None:
        if picture is None:
            return None
        picture, box = scaled_down(picture, record.box, self.max_side)
        heatmap = np.ascontiguousarray(record.heatmap, dtype=np.float32)
        name = f"{base}.{configuration_tag(self.settings)}.png"
        write_atomically(folder / name, png_bytes(overlay(picture, heatmap, box, self.colormap, self.alpha,
                                                          self.value_range)))
        return name


def scale_settings(value_range: tuple[float, float] | None) -> dict[str, Any]:
    """How maps are scaled to colours, as settings record it: nothing for each map's own range (the
    default, so names of such pictures never change), else the range shared by the run (``--scale batch``)."""
    return {} if value_range is None else {"scale": "batch", "value_range": [float(v) for v in value_range]}


@dataclass
class PanelWriter:
    """The labelled picture of the map (``heatmap.render.panel``), as ``<base>.<settings tag>.panel.png``.

    Attributes:
        method, model: named in the caption.
        colormap, alpha: as the overlay's.
        value_range: the raw values the colours' ends stand for, shared by the
            run (``--scale batch``); None: each map's own range.
        top_k: a class ranked below the top ``top_k`` is flagged in the caption.
    """

    method: str
    model: str | None
    colormap: str = "jet"
    alpha: float = 0.5
    value_range: tuple[float, float] | None = None
    top_k: int = 1
    kind = "panel"

    @property
    def settings(self) -> dict[str, Any]:
        return {"panel": True, "colormap": self.colormap, "alpha": float(self.alpha), "top_k": self.top_k,
                **scale_settings(self.value_range)}

    def __call__(self, folder: Path, base: str, picture: Image.Image | None, record: MapRecord) -> str | None:
        from heatmap.render.panel import caption_of, panel

        if picture is None:
            return None
        caption = caption_of(self.method, self.model, record.fields, self.top_k)
        drawn = panel(picture, record.heatmap, record.box, caption, self.colormap, self.alpha, self.value_range,
                      record.word_pieces, record.token_relevance)
        name = f"{base}.{configuration_tag(self.settings)}.panel.png"
        write_atomically(folder / name, png_bytes(drawn))
        return name


def scaled_down(picture: Image.Image, box: Box | None, max_side: int) -> tuple[Image.Image, Box | None]:
    """``picture`` scaled so its longest side is at most ``max_side`` (0: as it is), and ``box`` with it."""
    longest = max(picture.size)
    if not max_side or longest <= max_side:
        return picture, box
    factor = max_side / longest
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    scaled_box = None if box is None else (box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor)
    return picture.resize(size, Image.Resampling.LANCZOS), scaled_box


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


def default_writers(colormap: str = "jet", alpha: float = 0.5, overlay_size: int = OVERLAY_SIZE,
                    value_range: tuple[float, float] | None = None) -> list[FileWriter]:
    """What every explaining command writes: the map, the overlay, and (CLIP) the token strip."""
    return [NpyWriter(), OverlayWriter(colormap, alpha, overlay_size, value_range), TokenStripWriter()]


def run_writers(method: str, model: str, colormap: str, alpha: float, overlay_size: int,
                value_range: tuple[float, float] | None = None, panel: bool = False,
                panel_top_k: int = 1) -> list[FileWriter]:
    """A run's writers: :func:`default_writers`, and the labelled panel when asked for (``--panel``).

    ``panel_top_k``: the top-k of a run that names no class (the panel flags a class ranked below it).
    """
    writers = default_writers(colormap, alpha, overlay_size, value_range)
    if panel:
        writers.append(PanelWriter(method, model, colormap, alpha, value_range, panel_top_k))
    return writers


@dataclass
class ResultWriter:
    """Writes one folder of results: each record's files, then its ``manifest.jsonl`` line.

    Args:
        out_dir: the folder (created if needed).
        model: the model's name, recorded in the manifest.
        writers: the file writers, each one kind of file.
        tag: the run's :func:`configuration_tag`, the last part of every file's base name.
    """

    out_dir: Path
    model: str
    writers: list[FileWriter] = field(default_factory=default_writers)
    tag: str = ""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, source: Path, stem: str, picture: Image.Image | None, record: MapRecord, *, method: str,
              target_name: str, common: dict[str, Any]) -> dict[str, Any]:
        """Write one record's files and its manifest line; return the manifest entry (see :meth:`write_files`)."""
        entry = self.write_files(source, stem, picture, record, method=method, target_name=target_name,
                                 common=common)
        append_manifest_line(self.out_dir / MANIFEST, entry)
        return entry

    def write_files(self, source: Path, stem: str, picture: Image.Image | None, record: MapRecord, *, method: str,
                    target_name: str, common: dict[str, Any]) -> dict[str, Any]:
        """Write one record's files; return its manifest entry, for the caller to append once they are written.

        Args:
            source: the input image's path.
            stem: its output name (see :func:`output_stems`).
            picture: the input image, for the overlay.
            record: the map and what the manifest says of its target.
            method: the method's name (part of the file names).
            target_name: the target as it appears in file names.
            common: what the manifest says of every map of the run (weights, precision, options).
        """
        base = ".".join(part for part in (stem, method, target_name, self.tag) if part)
        files = {}
        try:
            for writer in self.writers:
                name = writer(self.out_dir, base, picture, record)
                if name is not None:
                    files[writer.kind] = name
        except OSError as error:
            # this input's failure (a name the file system refuses, a full disk): the run goes on
            raise OutputError(f"{source}: cannot write {base}.*: {error.strerror or error}") from error
        return {"input": str(source), "model": self.model, "method": method, **common, **record.fields,
                "map_shape": list(record.heatmap.shape), "files": files}


def open_manifest(path: Path) -> int:
    """A descriptor of the manifest ``path`` for reading and appending (created if needed), never through a link.

    Raises:
        HeatmapError: ``path`` is a symbolic link (in a shared folder, one planted to make the run
            append to a file elsewhere).
    """
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                       0o644)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            raise HeatmapError(_linked_manifest(path)) from None
        raise


def _linked_manifest(path: Path) -> str:
    return (f"{path} is a symbolic link, not a manifest: remove it or choose another --out "
            "(nothing is written through a link)")


def check_manifest(folder: Path) -> None:
    """Raise :class:`HeatmapError` when ``folder``'s manifest is a symbolic link (see :func:`open_manifest`)."""
    path = Path(folder) / MANIFEST
    if os.path.islink(path):
        raise HeatmapError(_linked_manifest(path))


@contextmanager
def locked_manifest(path: Path) -> Iterator[int]:
    """An open, exclusively locked descriptor of the manifest ``path`` (created if needed).

    Appends and repairs take this lock, so a repair never loses a concurrent
    shard's line; after a repair replaced the file, a waiting writer reopens
    the new one.
    """
    while True:
        fd = open_manifest(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.lstat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def append_manifest_line(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one line, in one write: a reader never sees half an entry.

    A last line left without its newline by a killed writer is closed first,
    so the new entry starts on a line of its own (readers skip the broken one,
    and :func:`repair_manifest` removes it).
    """
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with locked_manifest(path) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)


def manifest_lines(folder: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The entries of ``folder``'s manifest in order, and the numbers (from 1) of the lines that are none.

    A line that is not a whole entry (a writer killed mid-line, or text put
    there by hand) is left out of the entries and counted.
    """
    path = Path(folder) / MANIFEST
    if not path.exists():
        return [], []
    entries, broken = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("files"), dict) and "input" in entry:
            entries.append(entry)
        elif line.strip():
            broken.append(number)
    return entries, broken


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``folder``'s manifest, in order; [] when there is none (broken lines left out)."""
    return manifest_lines(folder)[0]


def repair_manifest(folder: Path) -> list[int]:
    """Rewrite ``folder``'s manifest without its broken lines, atomically; return their numbers.

    A run does this before it appends, so a fragment a killed run left does
    not stay forever.
    """
    path = Path(folder) / MANIFEST
    check_manifest(folder)
    if not path.exists():
        return []
    with locked_manifest(path):
        entries, broken = manifest_lines(folder)
        if broken:
            write_atomically(path, "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries).encode())
    return broken


def entry_target(entry: dict[str, Any]) -> str:
    """What an entry explains: the class index (classifiers) or the text (CLIP)."""
    return str(entry["target"]) if "target" in entry else str(entry.get("text"))


def entry_key(entry: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """``(input, model, method, options, target)``: what pairs two runs' maps of the same thing."""
    options = json.dumps(entry.get("options", {}), sort_keys=True)
    return entry["input"], entry["model"], entry["method"], options, entry_target(entry)


def latest_entries(entries: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
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
