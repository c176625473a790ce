"""Tests for heatmap.inputs: faithful RGB conversion, load errors, input expansion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap import inputs
from heatmap.errors import HeatmapError
from heatmap.inputs import IMAGE_SUFFIXES, collect_inputs, load_image


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def stored_mode(path: Path) -> str:
    """The mode PIL opens a file in (to show the test exercises that mode)."""
    with Image.open(path) as opened:
        return opened.mode


def gray_row(image: Image.Image) -> list[int]:
    """The first row of an RGB image known to be gray, one value per pixel."""
    array = pixels(image)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    return array[0, :, 0].tolist()


# --- modes ---------------------------------------------------------------------


def test_sixteen_bit_png_is_scaled_by_its_type_range_not_clipped(tmp_path):
    values = np.array([[0, 257 * 10, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert stored_mode(path) == "I;16"
    assert gray_row(load_image(path)) == [0, 10, 128, 255]


def test_dark_sixteen_bit_png_stays_dark(tmp_path):
    # Not min-max per image: a faint 16-bit image must not be stretched to white.
    path = tmp_path / "faint.png"
    Image.fromarray(np.array([[0, 257, 514]], dtype=np.uint16)).save(path)
    assert gray_row(load_image(path)) == [0, 1, 2]


def test_sixteen_bit_pgm_opened_as_mode_i(tmp_path):
    path = tmp_path / "deep.pgm"
    path.write_bytes(b"P5\n3 1\n65535\n" + np.array([0, 32768, 65535], ">u2").tobytes())
    assert stored_mode(path) == "I"
    assert gray_row(load_image(path)) == [0, 128, 255]


def test_sixteen_bit_tiff(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert gray_row(load_image(path)) == [0, 128, 255]


def test_signed_32_bit_tiff_is_scaled_by_int32_range(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)).save(path)
    assert stored_mode(path) == "I"
    assert gray_row(load_image(path)) == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # intensities in [0, 1]
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 8-bit levels stored as float
        ([-1.0, 0.0, 3.0], [0, 64, 255]),  # no natural range: min-max
        ([np.nan, 0.25, 1.0], [0, 64, 255]),  # non-finite pixels become 0
    ],
)
def test_float_tiff(tmp_path, values, expected):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    assert stored_mode(path) == "F"
    assert gray_row(load_image(path)) == expected


def test_eight_bit_gray(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(path)
    assert gray_row(load_image(path)) == [0, 77, 255]


def test_one_bit(tmp_path):
    path = tmp_path / "bits.png"
    bitmap = Image.new("1", (2, 1), 0)
    bitmap.putpixel((1, 0), 1)
    bitmap.save(path)
    assert stored_mode(path) == "1"
    assert gray_row(load_image(path)) == [0, 255]


def test_rgba_composites_over_white(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = np.array([[[200, 10, 10, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    assert pixels(load_image(path))[0].tolist() == [
        [255, 255, 255],  # fully transparent -> background
        [10, 20, 30],  # opaque -> unchanged
        [127, 127, 127],  # 255 * (1 - 128/255) = 127
    ]


def test_gray_with_alpha(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA").save(path)
    assert gray_row(load_image(path)) == [255, 50]


def test_palette_with_transparent_entry(tmp_path):
    path = tmp_path / "palette.png"
    paletted = Image.new("P", (2, 1), 0)
    paletted.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    paletted.putpixel((1, 0), 1)
    paletted.save(path, transparency=1)
    assert stored_mode(path) == "P"
    assert pixels(load_image(path))[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.gif"
    paletted = Image.new("P", (2, 1), 0)
    paletted.putpalette([0, 128, 0, 30, 60, 90] + [0, 0, 0] * 254)
    paletted.putpixel((1, 0), 1)
    paletted.save(path)
    assert stored_mode(path) == "P"
    assert pixels(load_image(path))[0].tolist() == [[0, 128, 0], [30, 60, 90]]


def test_rgb_colour_key_transparency(tmp_path):
    path = tmp_path / "trns.png"
    keyed = Image.new("RGB", (2, 1), (10, 20, 30))
    keyed.putpixel((1, 0), (1, 2, 3))
    keyed.save(path, transparency=(1, 2, 3))
    assert pixels(load_image(path))[0].tolist() == [[10, 20, 30], [255, 255, 255]]


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as opened:
        assert opened.n_frames == 2
    assert (pixels(load_image(path)) == [255, 0, 0]).all()


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.tif"
    cmyk = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(path)
    assert stored_mode(path) == "CMYK"
    assert pixels(load_image(path))[0].tolist() == [[255, 255, 255], [0, 0, 0], [0, 255, 255]]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)
    assert stored_mode(path) == "CMYK"
    red = pixels(load_image(path))
    assert np.abs(red - [255, 0, 0]).max() <= 3


def test_ycbcr(tmp_path):
    path = tmp_path / "ycbcr.tif"
    Image.new("YCbCr", (1, 1), (128, 128, 255)).save(path)
    assert stored_mode(path) == "YCbCr"
    # R = Y + 1.402 (Cr - 128) clips at 255; G = Y - 0.714 (Cr - 128) ~ 37.
    red, green, blue = pixels(load_image(path))[0, 0]
    assert red == 255 and abs(green - 37) <= 1 and blue == 128


def test_lab(tmp_path):
    path = tmp_path / "lab.tif"
    lab = Image.new("LAB", (2, 1), (255, 128, 128))  # L = 100, a = b = 0: white
    lab.putpixel((1, 0), (0, 128, 128))  # L = 0: black
    lab.save(path)
    assert stored_mode(path) == "LAB"
    white, black = pixels(load_image(path))[0]
    assert (white >= 253).all() and (black <= 2).all()


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("PA", None, [255, 255, 255]),  # palette + alpha, alpha 0
        ("La", (80, 255), [80, 80, 80]),
        ("RGBa", (50, 25, 0, 128), [177, 152, 127]),  # premultiplied: c + 255 (1 - a)
        ("HSV", (0, 255, 255), [255, 0, 0]),
    ],
)
def test_modes_no_file_format_writes(mode, value, expected):
    # PIL cannot save these modes, so the conversion step is checked directly.
    image = Image.new(mode, (1, 1), value) if value is not None else Image.new(mode, (1, 1))
    assert pixels(inputs._to_rgb(image))[0, 0].tolist() == expected


def test_exif_orientation_6_rotates(tmp_path):
    # Stored 40 wide x 20 high with a red block at the stored top-left corner.
    # Orientation 6 means "rotate 90 degrees clockwise to display", which
    # moves the stored top-left corner to the displayed top-right.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[...] = (0, 0, 255)
    stored[:6, :6] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.size == (20, 40)
    shown = pixels(loaded)
    assert np.abs(shown[2, 17] - [255, 0, 0]).max() < 40  # top-right: red
    assert np.abs(shown[2, 2] - [0, 0, 255]).max() < 40  # top-left: blue
    assert np.abs(shown[37, 17] - [0, 0, 255]).max() < 40


def test_loaded_image_does_not_need_the_file(tmp_path):
    path = tmp_path / "gone.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    loaded = load_image(path)
    path.unlink()
    assert pixels(loaded)[1, 1].tolist() == [1, 2, 3]


def test_sample_images_load():
    folder = Path(__file__).resolve().parent.parent / "sample_images"
    photos = collect_inputs([folder])
    assert {photo.name for photo in photos} >= {"astronaut.jpg", "chelsea.png", "coffee.png", "rocket.jpg"}
    chelsea = load_image(folder / "chelsea.png")
    assert chelsea.mode == "RGB" and chelsea.size == (451, 300)


# --- load errors ---------------------------------------------------------------


def assert_error_names(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(noise).save(whole)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HeatmapError) as error:
        load_image(cut)
    assert_error_names(error, cut, "truncated")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    assert_error_names(error, path, "empty")


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    assert_error_names(error, path, "not an image")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.png"
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    assert_error_names(error, path, "no such file")


def test_directory(tmp_path):
    with pytest.raises(HeatmapError) as error:
        load_image(tmp_path)
    assert_error_names(error, tmp_path, "folder")


@pytest.mark.parametrize("side", [11, 20])  # 121 px: over the limit (warning); 400 px: over twice (error)
def test_decompression_bomb(tmp_path, monkeypatch, side):
    path = tmp_path / "big.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    assert_error_names(error, path, "too large")


def test_image_at_the_pixel_limit_loads(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    Image.new("RGB", (10, 10)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(path).size == (10, 10)


def test_permission_denied_reported(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(HeatmapError) as error:
        load_image(path)
    assert_error_names(error, path, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_real_file(tmp_path):
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(HeatmapError) as error:
            load_image(path)
        assert_error_names(error, path, "permission denied")
    finally:
        path.chmod(0o644)


# --- collect_inputs ------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """photos/ with images, a non-image, hidden entries and nested folders; cwd = tmp_path."""
    for name in [
        "photos/b.JPG",
        "photos/a.png",
        "photos/c.webp",
        "photos/notes.txt",
        "photos/.hidden.jpg",
        "photos/._a.png",
        "photos/sub/d.jpeg",
        "photos/sub/deeper/e.tif",
        "photos/.cache/f.png",
        "other/z.png",
    ]:
        touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def names(paths: list[Path]) -> list[str]:
    return [path.as_posix() for path in paths]


def test_folder_sorted_images_only_no_hidden(tree):
    assert names(collect_inputs(["photos"])) == ["photos/a.png", "photos/b.JPG", "photos/c.webp"]


def test_folder_recursive_skips_hidden_folders(tree):
    assert names(collect_inputs(["photos"], recursive=True)) == [
        "photos/a.png",
        "photos/b.JPG",
        "photos/c.webp",
        "photos/sub/d.jpeg",
        "photos/sub/deeper/e.tif",
    ]


def test_file_taken_whatever_its_suffix(tree):
    assert names(collect_inputs(["photos/notes.txt"])) == ["photos/notes.txt"]


def test_inputs_keep_their_order(tree):
    assert names(collect_inputs(["other", "photos/c.webp", "photos/a.png"])) == [
        "other/z.png",
        "photos/c.webp",
        "photos/a.png",
    ]


def test_duplicates_removed_first_kept(tree):
    found = collect_inputs(["photos/c.webp", "photos", "./photos/a.png", "photos/*.png"])
    assert names(found) == ["photos/c.webp", "photos/a.png", "photos/b.JPG"]


def test_glob_sorted(tree):
    assert names(collect_inputs(["photos/*.*"])) == [
        "photos/a.png",
        "photos/b.JPG",
        "photos/c.webp",
        "photos/notes.txt",  # a pattern's files are kept as they are
    ]


def test_glob_double_star_and_folders_ignored(tree):
    assert names(collect_inputs(["photos/**/*.jp*g"])) == ["photos/sub/d.jpeg"]
    assert names(collect_inputs(["photos/s?b/*"])) == ["photos/sub/d.jpeg"]  # sub/deeper/ ignored


def test_existing_path_with_glob_characters_is_literal(tree):
    touch(tree / "odd" / "x[1].png")
    assert names(collect_inputs(["odd/x[1].png"])) == ["odd/x[1].png"]


def test_absolute_paths(tree):
    assert collect_inputs([tree / "other"]) == [tree / "other" / "z.png"]


def test_empty_input_list():
    assert collect_inputs([]) == []


def test_suffix_set_is_lower_case_and_readable_by_pil():
    Image.init()
    readable = Image.registered_extensions()
    for suffix in IMAGE_SUFFIXES:
        assert suffix == suffix.lower() and suffix.startswith(".")
        assert suffix in readable


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("nowhere.jpg", ["no such file or folder", "nowhere.jpg"]),
        ("photos/*.bmp", ["pattern photos/*.bmp matched no files"]),
        ("photos/s*", ["pattern photos/s* matched no files"]),  # matches only a folder
        ("empty", ["no images in folder empty"]),
        ("textonly", ["no images in folder textonly"]),
        ("nested", ["no images in folder nested", "recursive"]),  # images only deeper down
    ],
)
def test_collect_errors(tree, given, words):
    (tree / "empty").mkdir()
    touch(tree / "textonly" / "readme.txt")
    touch(tree / "nested" / "inner" / "x.png")
    with pytest.raises(HeatmapError) as error:
        collect_inputs(["photos/a.png", given])
    for word in words:
        assert word in str(error.value)
