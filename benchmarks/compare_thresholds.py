"""How far maps move under float round-off and under a small weight change: the basis of compare's defaults.

    python benchmarks/compare_thresholds.py [--scenes 40] [--change 0.05]

For the demo classifier on held-out scenes and every method, prints the
largest max-diff (``heatmap.comparison``) between the model in float32 and
in float64 (round-off, as between machines), and the median and largest
max-diff after one weight tensor (``blocks.2.attn.qkv.weight``) is moved by
``--change`` times its standard deviation (seeded noise). README.md's table
"How the defaults were chosen" comes from here.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import heatmap
from heatmap.comparison import compare_maps
from heatmap.models.demo.shapes_world import make_scenes

TENSOR = "blocks.2.attn.qkv.weight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--change", type=float, default=0.05, help="noise, in standard deviations of the tensor")
    args = parser.parse_args()
    adapter = heatmap.load("demo", device="cpu")
    images, _ = adapter.preprocess([scene.image for scene in make_scenes(args.scenes, seed=11, num_objects=(1, 3))])
    in_float64 = copy.deepcopy(adapter.model).double()
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
        rounded = heatmap.explain(in_float64, images.double(), method, target=targets).maps.float()
        moved = heatmap.explain(changed, images, method, target=targets).maps
        round_off = max(compare_maps(b.numpy(), r.numpy()).max_diff for b, r in zip(base.maps, rounded))
        change = sorted(compare_maps(b.numpy(), m.numpy()).max_diff for b, m in zip(base.maps, moved))
        print(f"| {method} | {round_off:.2g} | {statistics.median(change):.2g} / {change[-1]:.2g} |")


if __name__ == "__main__":
    main()
