"""Every method on a GPU against the same method on the CPU, judged by `heatmap compare`'s thresholds.

    python scripts/cuda_check.py [--device cuda] [--models demo,demo-clip,vit,clip,bf16]
                                 [--precision auto|float64]

For each model and method, the same images and targets are explained on the
CPU and on ``--device``, both at ``--precision``; the two maps are compared with
``heatmap.compare.metrics.compare_maps`` under the default ``Thresholds`` (the
ones ``heatmap compare`` and the pytest fixture apply). Targets are the CPU's
top-1 class, passed to both devices, so a near-tie cannot pick another class.

Models (random weights are built from the libraries' configs; nothing is downloaded):

- ``demo``: the shipped demo classifier on the shipped scenes;
- ``demo-clip``: the shipped demo CLIP on the shipped scenes, three captions;
- ``vit``: timm ``vit_base_patch16_224`` (random weights, seed 0) on the sample photos;
- ``clip``: open_clip ``ViT-B-32`` (random weights, seed 0) on the sample photos, two texts;
- ``bf16``: the ``vit`` model cast to bfloat16 on the device, which the driver
  explains in float32 (docs/METHODS.md, "Precision"); its reference is the CPU
  float32 explanation of the same bfloat16-rounded weights.

``--precision float64`` runs both sides in float64: the LRP methods divide by
sums that can be near zero, so on random weights their float32 maps move by
more than the thresholds between any two float32 runs (CPU float32 against CPU
float64 included); in float64 what remains is the device's own difference.

Prints one line per model and method (worst image and target) and exits 1
when any map falls outside a threshold, 0 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import heatmap
from heatmap.compare.metrics import MapMetrics, Thresholds, compare_maps
from heatmap.errors import HeatmapError
from heatmap.models import load_clip

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
SCENES = sorted(SAMPLES.glob("shapes_*.png"))
PHOTOS = sorted(path for path in SAMPLES.iterdir() if path.suffix in {".jpg", ".png"} and path not in SCENES)
CAPTIONS = ["a red heart", "a cyan star", "a yellow cross"]
TEXTS = ["a photo of a cat", "a rocket on its launch pad"]


def random_vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False).eval()


def random_clip() -> torch.nn.Module:
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32").eval()


def worst(pairs: list[tuple[np.ndarray, np.ndarray]]) -> MapMetrics:
    """The worst value of each metric over the pairs (reference, candidate)."""
    metrics = [compare_maps(reference, candidate) for reference, candidate in pairs]
    return MapMetrics(max(m.max_diff for m in metrics), min(m.corr for m in metrics),
                      min(m.top_iou for m in metrics))


def classifier_pairs(cpu_model: object, device_model: object, images: list[Path], method: str, precision: str,
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    reference = heatmap.explain(cpu_model, images, method, precision=precision)
    targets = reference.targets.reshape(-1).tolist()
    candidate = heatmap.explain(device_model, images, method, target=targets, precision=precision)
    assert candidate.maps.dtype == reference.maps.dtype, f"explained in {candidate.maps.dtype}"
    return list(zip(reference.maps.reshape(len(images), -1, *reference.maps.shape[-2:]).numpy(),
                    candidate.maps.cpu().reshape(len(images), -1, *candidate.maps.shape[-2:]).numpy(),
                    strict=True))


def clip_pairs(cpu_model: object, device_model: object, images: list[Path], texts: list[str], method: str,
               precision: str) -> list[tuple[np.ndarray, np.ndarray]]:
    reference = heatmap.explain(cpu_model, images, method, texts=texts, precision=precision)
    candidate = heatmap.explain(device_model, images, method, texts=texts, precision=precision)
    return list(zip(reference.maps.reshape(-1, *reference.maps.shape[-2:]).numpy(),
                    candidate.maps.cpu().reshape(-1, *candidate.maps.shape[-2:]).numpy(), strict=True))


def cases(device: str, precision: str) -> dict[str, Callable[[str], list[tuple[np.ndarray, np.ndarray]]]]:
    """Per model: a function of the method giving the (CPU, device) map pairs."""

    def demo(method: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return classifier_pairs(heatmap.load("demo", device="cpu"), heatmap.load("demo", device=device),
                                SCENES, method, precision)

    def demo_clip(method: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return clip_pairs(load_clip("demo", device="cpu"), load_clip("demo", device=device), SCENES, CAPTIONS,
                          method, precision)

    vit = random_vit()
    clip = random_clip()

    def vit_case(method: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return classifier_pairs(vit, copy.deepcopy(vit).to(device), PHOTOS, method, precision)

    def clip_case(method: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return clip_pairs(clip, copy.deepcopy(clip).to(device), PHOTOS, TEXTS, method, precision)

    def bf16_case(method: str) -> list[tuple[np.ndarray, np.ndarray]]:
        rounded = copy.deepcopy(vit).to(torch.bfloat16)
        pairs = classifier_pairs(copy.deepcopy(rounded).float(), rounded.to(device), PHOTOS, method, precision)
        assert next(rounded.parameters()).dtype == torch.bfloat16, "the caller's model was converted"
        return pairs

    return {"demo": demo, "demo-clip": demo_clip, "vit": vit_case, "clip": clip_case, "bf16": bf16_case}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="demo,demo-clip,vit,clip,bf16")
    parser.add_argument("--precision", default="auto", choices=["auto", "float64"])
    args = parser.parse_args()
    thresholds = Thresholds()
    print(f"{args.device} against cpu, precision {args.precision}; thresholds: max-diff <= {thresholds.max_diff}, "
          f"corr >= {thresholds.min_corr}, top-iou >= {thresholds.min_top_iou}")
    table = cases(args.device, args.precision)
    failed = 0
    for model in args.models.split(","):
        for method in heatmap.methods():
            try:
                metrics = worst(table[model](method))
            except HeatmapError as error:  # the model's structure does not allow the method: say so
                print(f"{model:10} {method:24} refused: {str(error).split(', so it')[0][:90]}", flush=True)
                continue
            problems = metrics.failures(thresholds)
            failed += bool(problems)
            verdict = "FAIL " + "; ".join(problems) if problems else "ok"
            print(f"{model:10} {method:24} max-diff {metrics.max_diff:.2e}  corr {metrics.corr:.7f}  "
                  f"top-iou {metrics.top_iou:.3f}  {verdict}", flush=True)
    print(f"{failed} model-method pair(s) outside the thresholds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
