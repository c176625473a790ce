"""Tests for heatmap.render: colormaps, min-max scaling, overlay geometry and blending."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from heatmap.errors import HeatmapError
from heatmap.render import COLORMAPS, OUTSIDE_BRIGHTNESS, colorize, normalize01, overlay

JET_LOW = [0, 0, 128]  # dark blue
JET_HIGH = [128, 0, 0]  # dark red


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(noise, "RGB")


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def blend(picture: np.ndarray, colour, alpha: float) -> np.ndarray:
    return np.rint((1 - alpha) * picture.astype(np.float64) + alpha * np.asarray(colour, np.float64))


# --- colormaps -----------------------------------------------------------------


def test_required_colormaps_are_256_entry_tables():
    assert {"jet", "viridis", "inferno", "magma", "turbo", "gray"} <= set(COLORMAPS)
    for table in COLORMAPS.values():
        assert table.shape == (256, 3) and table.dtype == np.uint8
        assert not table.flags.writeable


def test_jet_endpoints_and_known_points():
    assert colorize(np.array([0.0, 1.0]), "jet").tolist() == [JET_LOW, JET_HIGH]
    # Entry 51 sits at 0.2: red 0, green (0.2 - 0.125) / 0.25 = 0.3, blue 1.
    # Entry 128 sits at 128/255: red (x - 0.35) / 0.31, green 1, blue (0.65 - x) / 0.31.
    x = 128 / 255
    assert COLORMAPS["jet"][51].tolist() == [0, 77, 255]
    assert COLORMAPS["jet"][128].tolist() == [
        round((x - 0.35) / 0.31 * 255),
        255,
        round((0.65 - x) / 0.31 * 255),
    ]


def test_jet_is_piecewise_linear():
    # Within a linear piece, second differences are only rounding (at most 1
    # level each way); at the few breakpoints they are larger.
    second = np.abs(np.diff(COLORMAPS["jet"].astype(int), n=2, axis=0))
    assert (second > 2).sum() <= 9


def test_other_endpoints():
    assert COLORMAPS["gray"][[0, 255]].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert COLORMAPS["viridis"][[0, 255]].tolist() == [[68, 1, 84], [253, 231, 37]]
    for name in ("inferno", "magma"):
        darkest, brightest = COLORMAPS[name][[0, 255]].astype(int).sum(axis=1)
        assert darkest < 10 and brightest > 550


def test_gray_is_the_identity():
    values = np.arange(256) / 255.0
    assert colorize(values, "gray")[:, 0].tolist() == list(range(256))


def test_colorize_shape_and_clipping():
    values = np.array([[-1.0, 0.0], [1.0, 7.0]])
    coloured = colorize(values, "jet")
    assert coloured.shape == (2, 2, 3) and coloured.dtype == np.uint8
    assert coloured.reshape(4, 3).tolist() == [JET_LOW, JET_LOW, JET_HIGH, JET_HIGH]


def test_colorize_rejects_nan():
    with pytest.raises(ValueError):
        colorize(np.array([0.5, np.nan]))


def test_unknown_colormap_lists_the_choices():
    with pytest.raises(HeatmapError) as error:
        colorize(np.zeros((2, 2)), "rainbowz")
    message = str(error.value)
    assert "rainbowz" in message
    for name in COLORMAPS:
        assert name in message
    with pytest.raises(HeatmapError):
        overlay(random_image(4, 4), np.zeros((2, 2)), colormap="rainbowz")


# --- normalize01 ---------------------------------------------------------------


def test_normalize_min_max():
    result = normalize01(np.array([[2.0, 4.0], [6.0, -2.0]]))
    assert result.dtype == np.float32 and result.shape == (2, 2)
    np.testing.assert_allclose(result, [[0.5, 0.75], [1.0, 0.0]])


@pytest.mark.parametrize(
    "constant",
    [
        np.zeros((3, 4)),
        np.full((3, 4), 0.37),
        np.full((3, 4), -5.0),
        np.array([[1.0, 1.0 + 1e-9], [1.0, 1.0]]),  # float round-off around a constant
    ],
)
def test_normalize_constant_gives_zeros(constant):
    result = normalize01(constant)
    assert not np.isnan(result).any()
    assert (result == 0).all()


def test_normalize_keeps_small_real_contrast():
    result = normalize01(np.array([1e-8, 3e-8, 2e-8]))
    np.testing.assert_allclose(result, [0.0, 1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalize_rejects_non_finite(bad):
    with pytest.raises(ValueError):
        normalize01(np.array([0.0, bad]))


# --- overlay -------------------------------------------------------------------


@pytest.mark.parametrize(
    "box", [None, (16, 16, 240, 240), (-10.0, 3.2, 200.7, 180.0), (100, 50, 900, 700)]
)
def test_overlay_output_has_the_image_size(box):
    result = overlay(random_image(256, 192), np.random.default_rng(1).random((14, 14)), box=box)
    assert result.mode == "RGB" and result.size == (256, 192)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_constant_map_blends_with_the_lowest_colour(alpha):
    image = random_image(50, 30)
    result = overlay(image, np.full((7, 7), 3.5), alpha=alpha)
    expected = blend(np.asarray(image), JET_LOW, alpha)
    # Float32 blending may round a .5 the other way than float64: one level at most.
    assert np.abs(as_array(result) - expected).max() <= 1


def test_single_peak_is_hottest_at_its_location():
    heatmap = np.zeros((14, 14))
    heatmap[3, 5] = 2.0
    result = as_array(overlay(Image.new("RGB", (224, 224), (90, 90, 90)), heatmap, alpha=1.0))
    hottest = (result == JET_HIGH).all(axis=-1)
    rows, cols = np.nonzero(hottest)
    assert rows.size > 0
    # Cell (3, 5) covers rows 48..63 and columns 80..95 of a 224 x 224 image.
    assert rows.min() >= 48 and rows.max() <= 63 and cols.min() >= 80 and cols.max() <= 95
    assert hottest[55:57, 87:89].all()
    assert result[0, 0].tolist() == JET_LOW


def test_single_peak_in_a_box_on_a_wide_image():
    heatmap = np.zeros((4, 4))
    heatmap[0, 3] = 1.0  # top-right cell of the map
    box = (100, 0, 300, 200)  # the model saw the centre 200 x 200 of 400 x 200
    result = as_array(overlay(Image.new("RGB", (400, 200), (90, 90, 90)), heatmap, box=box, alpha=1.0))
    rows, cols = np.nonzero((result == JET_HIGH).all(axis=-1))
    assert rows.size > 0
    assert rows.max() < 50 and cols.min() >= 250 and cols.max() < 300


def test_box_inside_blended_outside_darkened():
    image = random_image(100, 80)
    heatmap = np.random.default_rng(2).random((7, 7))
    box = (10, 20, 60, 70)
    result = as_array(overlay(image, heatmap, box=box, alpha=0.5))
    picture = np.asarray(image).astype(np.float64)

    outside = np.ones((80, 100), dtype=bool)
    outside[20:70, 10:60] = False
    assert (result[outside] == np.rint(picture[outside] * OUTSIDE_BRIGHTNESS)).all()
    # Inside: exactly the overlay of the cropped picture on its own.
    alone = as_array(overlay(image.crop(box), heatmap, alpha=0.5))
    assert (result[20:70, 10:60] == alone).all()
    assert not (result[20:70, 10:60] == np.rint(picture[20:70, 10:60] * OUTSIDE_BRIGHTNESS)).all()


def test_fractional_box_rounds_to_nearest_pixel():
    image = random_image(100, 80)
    heatmap = np.random.default_rng(3).random((5, 5))
    rounded = overlay(image, heatmap, box=(10, 20, 60, 70))
    fractional = overlay(image, heatmap, box=(9.6, 19.5, 60.4, 70.2))
    assert (as_array(rounded) == as_array(fractional)).all()


def test_box_past_the_image_is_clipped_like_padding():
    # A box reaching 20 px past the top-left corner is what a padding
    # transform gives: the map covers the padded canvas, the image only part of it.
    image = random_image(50, 50)
    heatmap = np.random.default_rng(4).random((7, 7))
    result = as_array(overlay(image, heatmap, box=(-20, -20, 50, 50)))

    canvas = Image.new("RGB", (70, 70), (0, 0, 0))
    canvas.paste(image, (20, 20))
    padded = as_array(overlay(canvas, heatmap))
    assert (result == padded[20:, 20:]).all()


def test_alpha_zero_shows_the_image_inside_the_box():
    image = random_image(40, 40)
    result = as_array(overlay(image, np.random.default_rng(5).random((4, 4)), alpha=0.0))
    assert (result == np.asarray(image)).all()


def test_grayscale_image_is_used_as_rgb():
    image = Image.new("L", (20, 10), 100)
    result = overlay(image, np.zeros((2, 2)), alpha=0.5)
    assert result.mode == "RGB" and result.size == (20, 10)
    assert as_array(result)[0, 0].tolist() == [50, 50, 114]  # (100 + 0) / 2, (100 + 128) / 2


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "half"])
def test_alpha_out_of_range_is_a_user_error(alpha):
    with pytest.raises(HeatmapError) as error:
        overlay(random_image(8, 8), np.zeros((2, 2)), alpha=alpha)
    assert "alpha" in str(error.value)


@pytest.mark.parametrize(
    ("heatmap", "box"),
    [
        (np.zeros((2, 2, 2)), None),  # not 2-D
        (np.array([[0.0, np.nan]]), None),  # not finite
        (np.zeros((2, 2)), (10, 10, 10, 20)),  # empty box
        (np.zeros((2, 2)), (100, 100, 150, 150)),  # entirely outside
    ],
)
def test_bugs_upstream_are_value_errors(heatmap, box):
    with pytest.raises(ValueError):
        overlay(random_image(50, 50), heatmap, box=box)


def test_render_does_not_import_torch():
    code = "import sys, heatmap.render; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_token_strips_name_the_characters_their_font_cannot_draw():
    from heatmap.render import displayable, strip_font, text_strip

    font = strip_font(20)
    # U+E000 is a private-use code point no font draws; plain Latin always shows
    assert displayable("a\ue000b", font) == "aU+E000b"
    strip = text_strip(["кот", "\ue000"], np.array([1.0, 0.5]))
    assert strip.size[0] > 40  # the code point's text, not an empty box
