"""Reading input images faithfully, and expanding the user's inputs into files.

``load_image`` turns whatever PIL can open into the RGB picture a person would
see: EXIF orientation applied, transparency composited over white, 16/32-bit
and float grayscale scaled by their real range (not clipped, not stretched per
image), first frame of an animation. Every failure is a ``HeatmapError`` that
names the file. ``collect_inputs`` turns files, folders and glob patterns into
a sorted, de-duplicated list of paths.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from heatmap.errors import HeatmapError

__all__ = ["IMAGE_SUFFIXES", "load_image", "collect_inputs"]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo",
        ".png", ".apng",
        ".bmp", ".dib",
        ".gif",
        ".tif", ".tiff",
        ".webp", ".avif",
        ".ppm", ".pgm", ".pbm", ".pnm", ".pfm",
        ".tga", ".qoi", ".pcx", ".ico",
        ".jp2", ".j2k",
    }
)
"""Lower-case suffixes of raster formats PIL reads that a folder input picks up.

Only used to pick files out of folders; a file named explicitly is always
handed to the loader, which says if it is not an image.
"""

_GLOB_CHARACTERS = frozenset("*?[")
_WHITE = 255.0


def load_image(path: str | os.PathLike[str], name: str | None = None) -> Image.Image:
    """Read an image file into a fully loaded RGB image.

    Args:
        path: The image file. Any format and mode PIL can read.
        name: what errors call it (default: the path as given).

    Returns:
        A new ``PIL.Image.Image`` in mode ``"RGB"`` with the EXIF orientation
        applied (so its size is the size a viewer shows), decoupled from the
        file (the file is closed).

    Raises:
        HeatmapError: The path is missing, a folder, empty, unreadable, not an
            image, truncated or damaged, or larger than PIL's
            ``Image.MAX_IMAGE_PIXELS`` safety limit. The message names the file.
    """
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise HeatmapError(f"{name}: no such file; check the path")
    if path.is_dir():
        raise HeatmapError(f"{name}: is a folder, not an image file; pass an image file inside it")
    try:
        if path.stat().st_size == 0:
            raise HeatmapError(f"{name}: empty file (0 bytes); copy or download it again")
    except PermissionError:
        raise HeatmapError(f"{name}: permission denied; make the file readable") from None
    return decode_image(path, name)


def decode_image(source: Path | io.BytesIO, name: str) -> Image.Image:
    """Decode a file, or a file's bytes, as :func:`load_image` does; ``name`` is what its errors call it.

    Raises:
        HeatmapError: as :func:`load_image`, for what is wrong with the data.
    """
    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS PIL only warns (an error only at twice the
            # limit); a huge image would exhaust memory later, so refuse it here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                # Decoding is lazy: force it inside the try so that a truncated
                # or damaged file fails here, with its name, not deep in a model.
                opened.load()
                frames = getattr(opened, "n_frames", 1)
                oriented = ImageOps.exif_transpose(opened)
    except PermissionError:
        raise HeatmapError(f"{name}: permission denied; make the file readable") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HeatmapError(
            f"{name}: image too large to decode safely ({_one_line(exc)}); downscale it"
        ) from None
    except UnidentifiedImageError:
        raise HeatmapError(
            f"{name}: not an image PIL can read (unknown format); pass a JPEG, PNG, "
            "WebP, TIFF, BMP or GIF file"
        ) from None
    except Exception as exc:  # PIL signals damaged data with many exception types
        raise HeatmapError(
            f"{name}: cannot decode the image ({type(exc).__name__}: {_one_line(exc)}); "
            "the file is probably truncated or damaged, copy it again"
        ) from None
    picture = _to_rgb(oriented)
    picture.info["frames"] = frames  # a multi-page TIFF or an animated GIF: the first frame is explained
    return picture


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to RGB as it would be displayed."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _deep_gray_to_l(image).convert("RGB")
    # Premultiplied modes convert to their straight-alpha forms first; PIL has
    # no direct "La" -> RGBA path.
    if mode == "La":
        image = image.convert("LA")
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in image.info:
        # "transparency" covers palette images with transparent entries and
        # PNG tRNS colour keys on L and RGB images.
        return _composite_over_white(image.convert("RGBA"))
    # P, L, 1, CMYK, YCbCr, LAB, HSV, RGBX: PIL's own conversions are correct.
    return image.convert("RGB")


def _composite_over_white(rgba: Image.Image) -> Image.Image:
    pixels = np.asarray(rgba, dtype=np.float32)
    colour, opacity = pixels[..., :3], pixels[..., 3:] / 255.0
    blended = colour * opacity + _WHITE * (1.0 - opacity)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8), "RGB")


def _deep_gray_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float grayscale image to 8 bits.

    Integers are scaled by the range of their storage type, so a dark 16-bit
    image stays dark (PIL's own ``convert("L")`` clips at 255 instead, turning
    almost everything white). Floats have no storage range: values in [0, 1]
    are read as intensities, values in [0, 255] as 8-bit levels, anything else
    is min-max scaled.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif low >= 0.0 and high <= 255.0:
            low, high = 0.0, 255.0
    else:
        low, high = _integer_range(image, values)
    if high <= low:
        scaled = np.zeros_like(values)
    else:
        scaled = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _integer_range(image: Image.Image, values: np.ndarray) -> tuple[float, float]:
    """The value range of the integer type an "I" or "I;16*" image was stored as."""
    if image.mode.startswith("I;16"):
        return 0.0, 65535.0
    # Mode "I" holds 16-bit PNG/PGM data in older Pillow and 32-bit TIFF data;
    # TIFF says which, other formats only ever put 16-bit data here.
    tags = getattr(image, "tag_v2", None)
    bits = sample_format = None
    if tags is not None:
        bits_per_sample = tags.get(258)
        bits = bits_per_sample[0] if isinstance(bits_per_sample, tuple) else bits_per_sample
        sample_format = tags.get(339)
        sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    signed = sample_format == 2 or (values.size > 0 and values.min() < 0)
    if bits is None:
        bits = 16 if values.size == 0 or (values.min() >= 0 and values.max() <= 65535) else 32
    if signed:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def collect_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = False,
                   out_dir: Path | None = None, left_out: list[str] | None = None) -> list[Path]:
    """Expand files, folders and glob patterns into the list of files to explain.

    A path that exists is taken literally (even if it contains glob
    characters). A file is kept whatever its suffix (the loader says if it is
    not an image). A folder gives its files whose suffix is in
    ``IMAGE_SUFFIXES`` (case-insensitive), skipping hidden files and, when
    ``recursive``, descending into subfolders except hidden ones and the
    output folder ``out_dir``. Files a vit-heatmap run wrote (named in the
    ``manifest.jsonl`` of their folder) are never inputs. A string
    with ``*``, ``?`` or ``[`` that is not an existing path is expanded by
    ``glob.glob(..., recursive=True)`` (so ``**`` works); the files it
    matches are kept as they are, folders it matches are ignored.

    Args:
        inputs: Paths and patterns, in the order the user gave them.
        recursive: Whether folders are searched in their subfolders too.
        out_dir: The run's output folder, never searched for inputs.
        left_out: Where to name each file a folder held that is not taken
            (not an image by its suffix, a broken link, a linked folder, an
            earlier run's output), one line each.

    Returns:
        Paths, spelled as the user's input plus the found names: inputs in the
        order given, each one's expansion sorted by path. A file reached twice
        (also through another spelling or a symlink) is kept at its first
        place. Empty if ``inputs`` is empty.

    Raises:
        HeatmapError: An input does not exist, a folder holds no images, a
            pattern matches no files, or a folder cannot be read.
    """
    collected: list[Path] = []
    seen: set[Path] = set()
    written: dict[Path, set[str]] = {}  # per folder, read once
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_dir():
            expanded = _images_in_folder(path, recursive, out_dir, left_out)
        elif path.exists():
            expanded = [path]
        elif any(character in _GLOB_CHARACTERS for character in text):
            expanded = [Path(match) for match in sorted(glob.glob(text, recursive=True))]
            expanded = [match for match in expanded if not match.is_dir()]
            if not expanded:
                raise HeatmapError(f"pattern {text} matched no files; check the pattern and quote it")
        else:
            raise HeatmapError(f"no such file or folder: {text}; check the path")
        for found in expanded:
            identity = found.resolve()
            if found.parent not in written:
                written[found.parent] = written_by_a_run(found.parent)
            if found.name in written[found.parent]:
                if left_out is not None:
                    left_out.append(f"{found}: written by an earlier run (in its folder's manifest.jsonl)")
                continue
            if identity not in seen:
                seen.add(identity)
                collected.append(found)
    return collected


def written_by_a_run(folder: Path) -> set[str]:
    """The names of the files vit-heatmap runs wrote into ``folder`` (its manifest's ``files``)."""
    from heatmap.outputs import read_manifest

    try:
        return {name for entry in read_manifest(folder) for name in entry["files"].values()}
    except OSError:
        return set()


def _images_in_folder(folder: Path, recursive: bool, out_dir: Path | None = None,
                      left_out: list[str] | None = None) -> list[Path]:
    found: list[Path] = []
    skip = out_dir.resolve() if out_dir is not None else None
    noted: list[str] = []
    try:
        if recursive:
            # os.walk swallows errors by default; make an unreadable subfolder loud.
            def fail(error: OSError) -> None:
                raise error

            for directory, subfolders, names in os.walk(folder, onerror=fail):
                kept = []
                for sub in subfolders:
                    path = Path(directory) / sub
                    if path.is_symlink():  # os.walk does not follow it: say so
                        noted.append(f"{path}: a linked folder, not followed")
                    elif not sub.startswith(".") and path.resolve() != skip:
                        kept.append(sub)
                subfolders[:] = kept
                found.extend(_taken(Path(directory), names, noted))
        else:
            found = _taken(folder, [entry.name for entry in folder.iterdir()], noted, recursive=False)
    except PermissionError:
        raise HeatmapError(f"cannot read folder {folder}: permission denied; make it readable") from None
    except OSError as exc:
        raise HeatmapError(f"cannot read folder {folder}: {_one_line(exc)}") from None
    if left_out is not None:
        left_out.extend(sorted(noted))
    if not found:
        where = "or its subfolders" if recursive else "(subfolders are searched only when recursive)"
        raise HeatmapError(
            f"no images in folder {folder} {where}; images need a suffix such as .jpg, .png, .webp"
        )
    return sorted(found)


def _taken(folder: Path, names: Sequence[str], noted: list[str], recursive: bool = True) -> list[Path]:
    """The image files among ``names`` in ``folder``; every other visible entry is named in ``noted``."""
    taken = []
    for name in names:
        path = folder / name
        if name.startswith("."):
            continue  # hidden: vit-heatmap's own temporaries, editors' files
        if path.is_dir():
            if not recursive:
                continue  # subfolders are searched with --recursive; the help says so
            noted.append(f"{path}: a folder")
        elif not _is_image_name(name):
            noted.append(f"{path}: not an image by its suffix")
        elif not path.is_file():
            noted.append(f"{path}: a broken link")
        else:
            taken.append(path)
    return taken


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
