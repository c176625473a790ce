"""How far maps move under float round-off and under a small weight change: the basis of compare's defaults.

    python benchmarks/compare_thresholds.py [--scenes 40] [--change 0.05]

For the demo classifier on held-out scenes and every method, prints the
largest max-diff (``heatmap.compare.metrics``) between the explanation in float32
and in float64 (``precision="float64"``: round-off, as between machines),
and the median and largest max-diff after one weight tensor
(``blocks.2.attn.qkv.weight``) is moved by ``--change`` times its standard
deviation (seeded noise). Then the float32-vs-float64 gap of every method
on the demo CLIP (each scene against its objects' captions). README.md's
tables "How the defaults were chosen" and "Precision" come from here.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import heatmap
from heatmap.compare.metrics import compare_maps
from heatmap.demo.shapes_world import make_scenes
from heatmap.models import load_clip

TENSOR = "blocks.2.attn.qkv.weight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--change", type=float, default=0.05, help="noise, in standard deviations of the tensor")
    args = parser.parse_args()
    adapter = heatmap.load("demo", device="cpu")
    scenes = make_scenes(args.scenes, seed=11, num_objects=(1, 3))
    images, _ = adapter.preprocess([scene.image for scene in scenes])
    changed = copy.deepcopy(adapter.model)
    with torch.no_grad():
        weight = changed.get_parameter(TENSOR)
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
        weight.add_(args.change * weight.std() * noise)
    print(f"| method | float64 vs float32: largest max-diff | {TENSOR} + {args.change:.0%} noise: "
          "median / largest max-diff |\n|---|---|---|")
    for method in heatmap.methods():
        base = heatmap.explain(adapter, images, method)
        targets = base.targets.tolist()
        rounded = heatmap.explain(adapter, images, method, target=targets, precision="float64").maps.float()
        moved = heatmap.explain(changed, images, method, target=targets).maps
        round_off = max(compare_maps(b.numpy(), r.numpy()).max_diff for b, r in zip(base.maps, rounded, strict=False))
        change = sorted(compare_maps(b.numpy(), m.numpy()).max_diff for b, m in zip(base.maps, moved, strict=False))
        print(f"| {method} | {round_off:.2g} | {statistics.median(change):.2g} / {change[-1]:.2g} |")
    clip_round_off(scenes)


def clip_round_off(scenes) -> None:
    """The largest float32-vs-float64 max-diff of every method on the demo CLIP."""
    clip = load_clip("demo", device="cpu")
    print("\n| method | demo CLIP, float64 vs float32: largest max-diff |\n|---|---|")
    for method in heatmap.methods():
        worst = 0.0
        for scene in scenes:
            if not scene.objects:
                continue
            captions = [obj.caption for obj in scene.objects]
            single = heatmap.explain(clip, [scene.image], method, texts=captions).maps[0]
            double = heatmap.explain(clip, [scene.image], method, texts=captions, precision="float64").maps[0]
            worst = max(worst, *(compare_maps(a.numpy(), b.float().numpy()).max_diff
                                 for a, b in zip(single, double, strict=True)))
        print(f"| {method} | {worst:.2g} |")


if __name__ == "__main__":
    main()
