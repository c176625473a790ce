"""The pictures of a page: links relative to the page, or data URIs; thumbnails made once and cached.

A page shows small JPEG thumbnails and opens the full-size file on a click.
Without ``embed``, the thumbnails live in a folder beside the page named
after it (``report.html`` -> ``report_files/``), named by a hash of the
source's path, size and modification time: a source that did not change is
never thumbnailed again, and a thumbnail nobody uses any more is removed.
With ``embed``, every picture is a data URI and nothing but the page is
written: one portable file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import urllib.parse
from pathlib import Path

from PIL import Image

from heatmap.outputs import write_atomically

THUMBNAIL_SIDE = 160
TOKEN_STRIP_BOX = (480, 48)
JPEG_QUALITY = 82
# what this module writes into the pictures folder; anything else there is never touched
OWN_FILE = re.compile(r"^[0-9a-f]{24}\.(jpg|png)$")
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
              ".webp": "image/webp", ".bmp": "image/bmp"}


def files_folder(page: Path) -> Path:
    """The folder of a page's thumbnails: beside it, named after it (``report.html`` -> ``report_files``)."""
    return page.parent / f"{page.stem}_files"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class PictureStore:
    """The addresses of one page's pictures.

    Args:
        page: where the page will be written.
        embed: data URIs for every picture (nothing else written) instead of relative links.
    """

    def __init__(self, page: Path, embed: bool = False) -> None:
        self.page = Path(page).absolute()
        self.embed = embed
        self.folder = files_folder(self.page)
        self.used: set[str] = set()
        self.made = 0  # thumbnails made (not found in the cache): what a rebuild saves

    def link(self, source: Path | None) -> str | None:
        """The address of ``source`` full size: relative to the page, or a data URI; None when it is not a file."""
        if source is None or not source.is_file():
            return None
        if self.embed:
            return data_uri(source.read_bytes(), MIME_TYPES.get(source.suffix.lower(), "application/octet-stream"))
        return self.relative(source)

    def relative(self, path: Path) -> str:
        """``path`` as a URL relative to the page's folder (each part quoted: ``#``, ``?``, ``<`` stay names)."""
        relative = os.path.relpath(Path(path).absolute(), self.page.parent)
        return "/".join(urllib.parse.quote(part) for part in Path(relative).parts)

    def thumbnail(self, source: Path | None, box: tuple[int, int] = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)) -> str | None:
        """A JPEG of ``source`` fitting ``box``; None when it is not a readable picture."""
        if source is None or not source.is_file():
            return None
        stat = source.stat()
        key = f"{source.absolute()}|{stat.st_size}|{stat.st_mtime_ns}|{box}"
        name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".jpg"
        cached = self.folder / name
        if not self.embed and cached.is_file():
            self.used.add(name)
            return self.relative(cached)
        try:
            data = _jpeg(source, box)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        return self.put(name, data, "image/jpeg")

    def put(self, name: str, data: bytes, mime: str) -> str:
        """A picture made for the page (``name`` as :data:`OWN_FILE`): written beside the page, or inline."""
        if self.embed:
            return data_uri(data, mime)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / name, data)
        self.made += 1
        self.used.add(name)
        return self.relative(self.folder / name)

    def generated(self, key: str, data: bytes) -> str:
        """A PNG made for the page from ``data``, named by a hash of ``key`` and the bytes."""
        name = hashlib.sha256(key.encode("utf-8", "surrogateescape") + data).hexdigest()[:24] + ".png"
        if not self.embed and (self.folder / name).is_file():
            self.used.add(name)
            return self.relative(self.folder / name)
        return self.put(name, data, "image/png")

    def prune(self) -> int:
        """Remove this module's pictures of the folder that the page no longer shows; return how many."""
        if self.embed or not self.folder.is_dir():
            return 0
        removed = 0
        for path in self.folder.iterdir():
            if OWN_FILE.match(path.name) and path.name not in self.used and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _jpeg(source: Path, box: tuple[int, int]) -> bytes:
    with Image.open(source) as image:
        image.draft("RGB", box)  # a large JPEG decodes at a fraction of its size: far quicker
        picture = image.convert("RGBA")
    picture.thumbnail(box, Image.Resampling.LANCZOS)
    flat = Image.new("RGB", picture.size, "white")  # JPEG has no transparency: lay it on white
    flat.paste(picture, mask=picture.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


__all__ = ["PictureStore", "TOKEN_STRIP_BOX", "data_uri", "files_folder", "png"]
