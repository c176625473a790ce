"""Writing results: the raw ``.npy`` map, the overlay ``.png``, the manifest.

Shared by every command. Each file is written to a temporary name in the
same folder and renamed into place, so an interrupted run never leaves a
truncated file, and a manifest line is appended only once its files exist.
"""

from __future__ import annotations

import io
import json
import os
import re
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


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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
        # One write of one whole line: a reader never sees half an entry.
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.out_dir / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
