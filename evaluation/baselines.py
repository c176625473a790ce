"""The maps every evaluation table is read against: chance and the photographer's bias.

- ``random``: a uniform random map at the model's patch grid, drawn per
  image and target from a seeded generator: what any figure is worth by chance;
- ``centre``: a Gaussian at the centre of the model's input, sigma a quarter of
  each side: the prior that objects sit in the middle of a picture.

They are scored exactly as a method's maps are (upsampled, min-max scaled),
so a method whose interval overlaps ``random``'s has not shown it beats chance.
"""

from __future__ import annotations

import torch

from heatmap.evaluation.measures import seeded

BASELINES = ("random", "centre")
CENTRE_SIGMA = 0.25  # of each side


def baseline_map(name: str, grid: tuple[int, int], size: tuple[int, int], seed_text: str) -> torch.Tensor:
    """The raw map of baseline ``name`` for one image and target, float64.

    Args:
        name: ``random`` or ``centre``.
        grid: the model's patch grid ``(gh, gw)`` (the random map's shape).
        size: the model's input ``(H, W)`` (the centre map's shape).
        seed_text: the draw's seed (image, target and run seed), so a map never depends on other images.
    """
    if name == "random":
        return torch.rand(grid, generator=seeded(seed_text), dtype=torch.float64)
    if name == "centre":
        height, width = size
        rows = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2) / (CENTRE_SIGMA * height)
        columns = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2) / (CENTRE_SIGMA * width)
        return torch.exp(-0.5 * (rows[:, None] ** 2 + columns[None, :] ** 2))
    raise ValueError(f"unknown baseline {name!r}")
