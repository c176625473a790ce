"""What ``heatmap eval`` costs per image, against one forward pass of the same model.

    python benchmarks/eval_cost.py [--model demo] [--method chefer-generic] [--images 3] [--batch-size 64]

Per protocol (the map is computed once and shared; its cost is its own row),
the median over ``--images`` random images of the seconds per image and per
target, and that time over one forward pass of one image (median of 20).
The perturbation test runs 18 perturbed copies, deletion/insertion 202, ROAD
18 imputed ones; the sanity checks explain the image once more per block
(randomised copies, built on the first image and kept) and for another class;
``--batch-size`` copies go through the model per pass. Pixel rankings break
their ties with a seeded order, as ``heatmap eval`` does. The bootstrap's cost
(all images at once, after the run) is the last row: 1,000 resamplings of
``--images`` images, for one method's figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image
from timing import median_seconds

import heatmap
from heatmap.evaluation.data import split_normalisation
from heatmap.evaluation.evaluate import ImageEvaluation
from heatmap.evaluation.measures import overlay_map, pixel_order, seeded
from heatmap.evaluation.protocols import PixelScorer, deletion_insertion, perturbation_test
from heatmap.evaluation.road import road_test
from heatmap.evaluation.sanity import SanityChecks
from heatmap.evaluation.summary import summarise


def seconds(function) -> float:
    """Wall time of one call: each image's protocols are timed once, cold, as a run meets them."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--method", default="chefer-generic")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from heatmap.explainers.driver import Driver

    adapter = heatmap.load(args.model, device="cpu")
    _, mean, std = split_normalisation(adapter.transform)
    scorer = PixelScorer(adapter, mean, std, batch_size=args.batch_size)
    driver = Driver(adapter, args.method)
    size = adapter.preprocess([Image.new("RGB", (8, 8))])[0].shape[-2:]  # the model's input size
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, *size)
    forward = median_seconds(lambda: scorer.logits(images[:1]), repeats=20)
    rows: dict[str, list[float]] = {"map (explanation)": [], "perturbation (18 copies)": [],
                                    "deletion + insertion (202 copies)": [], "ROAD (18 imputed copies)": [],
                                    "sanity checks": []}
    sanity = SanityChecks(adapter, [args.method])
    classes = int(getattr(adapter, "num_classes", 2))
    maps: list[torch.Tensor] = []
    lines = []
    for number, image in enumerate(images):
        target = int(scorer.logits(image[None])[0].argmax())
        rows["map (explanation)"].append(seconds(lambda image=image, target=target: maps.append(
            driver.explain(scorer.normalised(image[None]), torch.tensor([[target]])).maps[0, 0])))
        scaled = overlay_map(maps[-1], tuple(size))
        ties = f"0:{number}:{target}"
        line = ImageEvaluation(f"image {number}", args.method, target, None)
        rows["perturbation (18 copies)"].append(seconds(
            lambda image=image, scaled=scaled, target=target, line=line, ties=ties: setattr(
                line, "perturbation", perturbation_test(scorer, image, scaled, target, True, ties))))
        rows["deletion + insertion (202 copies)"].append(seconds(
            lambda image=image, scaled=scaled, target=target, ties=ties: deletion_insertion(
                scorer, image, scaled, target, ties)))
        rows["ROAD (18 imputed copies)"].append(seconds(
            lambda image=image, scaled=scaled, target=target, ties=ties: road_test(
                scorer, image, pixel_order(scaled, True, f"{ties}:morf"), pixel_order(scaled, False, f"{ties}:lerf"),
                target, True, seeded(f"{ties}:noise"))))
        other = (target + 1) % classes
        rows["sanity checks"].append(seconds(
            lambda image=image, target=target, other=other: sanity.measure(scorer.normalised(image[None]), target,
                                                                          other)))
        lines.append(line)
    print(f"{adapter.name}, {args.method}, {tuple(size)} input, batch size {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; one forward of one image: "
          f"{forward * 1000:.1f} ms\n")
    print("| per image and target | seconds | x one forward |\n|---|---|---|")
    total = 0.0
    for name, times in rows.items():
        median = statistics.median(times)
        total += median
        print(f"| {name} | {median:.3f} | {median / forward:.0f} |")
    print(f"| all protocols (pointing, energy, segmentation: no forward pass) | {total:.3f} | {total / forward:.0f} |")
    bootstrap = seconds(lambda: summarise(lines))
    print(f"| the bootstrap of one method's figures over {len(lines)} images (once per run) | {bootstrap:.3f} | "
          f"{bootstrap / forward:.0f} |")


if __name__ == "__main__":
    main()
