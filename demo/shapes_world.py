"""Shapes world: synthetic scenes of coloured shapes on textured backgrounds.

The shipped demo classifier is trained on these scenes, and the tests use them
because every object comes with its exact pixel mask: a heatmap can be checked
against ground truth instead of by eye.

A scene holds one to a few objects. Within a scene every object has a different
shape class, so a class target names exactly one object. Objects never overlap
(each mask is the object's full silhouette), their colours are drawn
independently of their shape, and the background is a random gradient, stripe
pattern or smooth noise in random colours, so that a classifier has to look at
the shapes themselves rather than at global colour statistics.

Pure numpy and PIL; deterministic for a given seed or generator state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "COLORS",
    "SHAPES",
    "Scene",
    "SceneObject",
    "make_scene",
    "iter_scenes",
    "make_scenes",
    "write_samples",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 225, 30),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "cyan": (30, 220, 230),
    "pink": (250, 120, 190),
}

# Object side lengths as fractions of the image side: 18..40 px on 96 px, big
# enough that a shape spans several 8-px patches, small enough that three fit.
_MIN_OBJECT_FRACTION = 0.19
_MAX_OBJECT_FRACTION = 0.42
# Free pixels kept between object boxes so that masks never touch.
_GAP = 2
# Silhouettes are drawn at this multiple of the final resolution and averaged
# down, which gives anti-aliased edges without a dependency on PIL's drawing
# quality.
_SUPERSAMPLE = 4
# Object colours must differ this much (Euclidean RGB) from every background
# colour, or the shape would be invisible against its surroundings.
_MIN_CONTRAST = 110.0


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    Attributes:
        shape: the class name, one of ``SHAPES``.
        color: the colour name, a key of ``COLORS``.
        mask: bool array ``[H, W]``, True on the object's own pixels
            (anti-aliased coverage of at least one half).
        box: ``(left, top, right, bottom)`` in pixels, right and bottom
            exclusive (the PIL ``crop`` convention), tight around ``mask``.
    """

    shape: str
    color: str
    mask: np.ndarray
    box: tuple[int, int, int, int]

    @property
    def caption(self) -> str:
        """A short description such as ``"a red circle"``."""
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """An image and the objects drawn in it.

    Attributes:
        image: RGB ``PIL.Image`` of ``size x size`` pixels.
        objects: the objects, in the order they were placed; no two share a
            shape class.
    """

    image: Image.Image
    objects: tuple[SceneObject, ...]

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot float32 array ``[len(SHAPES)]``: 1 for each shape present."""
        labels = np.zeros(len(SHAPES), dtype=np.float32)
        for obj in self.objects:
            labels[SHAPES.index(obj.shape)] = 1.0
        return labels


def _shape_outline(shape: str) -> np.ndarray:
    """Polygon vertices of a shape, float ``[K, 2]`` (x, y with y pointing down)."""
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "square":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        # A plus sign whose arms are two thirds of its width apart.
        a, b = 1.0, 0.34
        return np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
             [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    if shape == "heart":
        t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y], axis=1)
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def _object_coverage(rng: np.random.Generator, shape: str, side: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], float ``[side, side]``, of one randomly posed shape."""
    from PIL import ImageDraw

    points = _shape_outline(shape)
    # Random pose: rotation and a mild stretch keep the class recognisable
    # while making sure the model cannot match one fixed template.
    angle = rng.uniform(-np.pi, np.pi) if shape != "heart" else rng.uniform(-0.5, 0.5)
    stretch = rng.uniform(0.85, 1.15)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (points * np.array([stretch, 1.0 / stretch])) @ rotation.T
    # Fit the posed outline into the square so the object fills its box.
    low, high = points.min(axis=0), points.max(axis=0)
    scale = (side * _SUPERSAMPLE - 1) / (high - low).max()
    points = (points - (low + high) / 2.0) * scale + (side * _SUPERSAMPLE) / 2.0
    canvas = Image.new("L", (side * _SUPERSAMPLE, side * _SUPERSAMPLE), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    coverage: np.ndarray = fine.reshape(side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(1, 3))
    return coverage


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random textured background.

    Returns:
        The image, float ``[size, size, 3]`` in 0..255, and its palette,
        float ``[K, 3]``: the colours the texture mixes, used to keep objects
        visible.
    """
    palette = rng.uniform(0.0, 200.0, size=(2, 3))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:
        # Linear gradient in a random direction.
        angle = rng.uniform(0.0, 2.0 * np.pi)
        ramp = np.cos(angle) * xs + np.sin(angle) * ys
        weight = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    elif kind == 1:
        # Soft stripes of random period and direction.
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(0.08, 0.3)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        ramp = np.cos(angle) * xs + np.sin(angle) * ys
        weight = 0.5 + 0.5 * np.sin(2.0 * np.pi * ramp / period + phase)
    else:
        # Smooth blobs: coarse random values upsampled bicubically.
        cells = int(rng.integers(3, 8))
        coarse = rng.uniform(0.0, 255.0, size=(cells, cells)).astype(np.uint8)
        smooth = Image.fromarray(coarse, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        weight = np.asarray(smooth, dtype=np.float32) / 255.0
    weight = weight[..., None]
    image = (1.0 - weight) * palette[0] + weight * palette[1]
    return image, palette


def _pick_color(rng: np.random.Generator, palette: np.ndarray) -> str:
    """A random colour name that stands out against every colour of ``palette``."""
    names = list(COLORS)
    values = np.array([COLORS[name] for name in names], dtype=np.float64)
    contrast = np.linalg.norm(values[:, None, :] - palette[None, :, :], axis=2).min(axis=1)
    visible = [name for name, c in zip(names, contrast, strict=False) if c >= _MIN_CONTRAST]
    if not visible:
        return names[int(np.argmax(contrast))]
    return visible[int(rng.integers(len(visible)))]


def _place(
    rng: np.random.Generator, size: int, side: int, taken: list[tuple[int, int, int, int]]
) -> tuple[int, int] | None:
    """Top-left corner for a ``side``-px square that keeps ``_GAP`` px from ``taken`` boxes."""
    for _ in range(60):
        left = int(rng.integers(0, size - side + 1))
        top = int(rng.integers(0, size - side + 1))
        if all(
            left + side + _GAP <= other_left or left >= right + _GAP or top + side + _GAP <= other_top
            or top >= bottom + _GAP
            for other_left, other_top, right, bottom in taken
        ):
            return left, top
    return None


def make_scene(
    rng: np.random.Generator,
    size: int = 96,
    num_objects: int | tuple[int, int] = (1, 3),
) -> Scene:
    """Draws one random scene.

    Args:
        rng: the random generator; the scene depends on nothing else.
        size: side of the square image in pixels.
        num_objects: the number of objects, or an inclusive ``(low, high)``
            range to draw it from. At most ``len(SHAPES)``.

    Returns:
        The scene: an RGB image ``size x size`` and its objects, all of
        different shape classes and without overlap.

    Raises:
        ValueError: if more objects are asked for than there are shape classes.
    """
    if isinstance(num_objects, int):
        count = num_objects
    else:
        low, high = num_objects
        count = int(rng.integers(low, high + 1))
    if not 0 <= count <= len(SHAPES):
        raise ValueError(f"num_objects must be between 0 and {len(SHAPES)}, got {count}")

    image, palette = _background(rng, size)
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:count]]
    min_side = max(4, round(_MIN_OBJECT_FRACTION * size))
    max_side = max(min_side, round(_MAX_OBJECT_FRACTION * size))

    objects: list[SceneObject] = []
    taken: list[tuple[int, int, int, int]] = []
    for shape in shapes:
        side = int(rng.integers(min_side, max_side + 1))
        corner = _place(rng, size, side, taken)
        # A crowded scene shrinks the next object instead of overlapping it.
        while corner is None and side > min_side:
            side = max(min_side, int(side * 0.85))
            corner = _place(rng, size, side, taken)
        if corner is None:
            continue
        left, top = corner
        coverage = np.zeros((size, size), dtype=np.float32)
        coverage[top : top + side, left : left + side] = _object_coverage(rng, shape, side)
        color = _pick_color(rng, palette)
        image = image * (1.0 - coverage[..., None]) + coverage[..., None] * np.array(COLORS[color])
        mask = coverage >= 0.5
        rows, cols = np.nonzero(mask)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        taken.append((left, top, left + side, top + side))
        objects.append(SceneObject(shape=shape, color=color, mask=mask, box=box))

    # Sensor-like noise over everything, so flat colour areas carry no signal.
    image = image + rng.normal(0.0, 6.0, size=image.shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image=Image.fromarray(pixels, mode="RGB"), objects=tuple(objects))


def make_scenes(
    count: int,
    seed: int,
    size: int = 96,
    num_objects: int | tuple[int, int] = (1, 3),
) -> list[Scene]:
    """Draws ``count`` scenes from one seed; the same arguments give the same scenes.

    Args:
        count: how many scenes.
        seed: seed of the ``numpy.random.default_rng`` the scenes are drawn from.
        size: side of each square image in pixels.
        num_objects: as in ``make_scene``.

    Returns:
        The scenes, in order.
    """
    return list(iter_scenes(count, seed, size=size, num_objects=num_objects))


def iter_scenes(
    count: int,
    seed: int,
    size: int = 96,
    num_objects: int | tuple[int, int] = (1, 3),
) -> Iterator[Scene]:
    """The scenes of ``make_scenes``, drawn one at a time as they are asked for (memory flat in ``count``)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield make_scene(rng, size=size, num_objects=num_objects)


def write_samples(
    folder: str | Path,
    count: int,
    seed: int,
    size: int = 96,
    num_objects: int | tuple[int, int] = (1, 3),
) -> list[Path]:
    """Writes ``count`` scenes as PNG files named after their objects.

    A file is named ``shapes_<index>_<captions>.png``, for example
    ``shapes_003_red-circle_blue-star.png``, so a sample's content can be read
    from its name.

    Args:
        folder: where to write; created if missing.
        count: how many scenes.
        seed: as in ``make_scenes``.
        size: side of each square image in pixels.
        num_objects: as in ``make_scene``.

    Returns:
        The paths written, in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, scene in enumerate(make_scenes(count, seed, size=size, num_objects=num_objects)):
        names = "_".join(f"{obj.color}-{obj.shape}" for obj in scene.objects)
        path = folder / f"shapes_{index:03d}_{names}.png"
        scene.image.save(path)
        paths.append(path)
    return paths
