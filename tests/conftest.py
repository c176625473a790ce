"""Fixtures every test module may use; the shared functions are in ``helpers``."""

from __future__ import annotations

import pytest
import torch

from helpers.models import random_images


@pytest.fixture
def images() -> torch.Tensor:
    """Three 32x32 images for the tiny ViTs."""
    return random_images(3, seed=123)


@pytest.fixture
def clip_images() -> torch.Tensor:
    """Two 32x32 images for the tiny CLIPs."""
    return random_images(2, seed=5)
