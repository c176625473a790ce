"""Inputs for runs of the shipped demo classifier: held-out scenes on disk and a changed copy of its weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from heatmap.demo.shapes_world import make_scenes

DEMO_WEIGHTS = Path(__file__).parents[2] / "demo" / "classifier.safetensors"


def scene_folder(folder: Path, count: int) -> Path:
    """``count`` shapes-world scenes (seed 77, two or three objects) as ``scene<i>.png`` in ``folder``."""
    for i, scene in enumerate(make_scenes(count, seed=77, num_objects=(2, 3))):
        scene.image.save(folder / f"scene{i}.png")
    return folder


def perturbed_demo_weights(path: Path) -> Path:
    """The demo classifier with one weight tensor moved by 5% of its spread (seeded noise), saved at ``path``."""
    weights = load_file(DEMO_WEIGHTS)
    tensor = weights["blocks.2.attn.qkv.weight"]
    noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(0))
    weights["blocks.2.attn.qkv.weight"] = tensor + 0.05 * tensor.std() * noise
    save_file(weights, path)
    return path
