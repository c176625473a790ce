"""Pointing game of every method with the demo models on held-out scenes.

    python scripts/pointing_game.py [--scenes 100] [--seed 777] [--objects 2-3]

For each held-out scene (two or three objects by default) and each object: does the
map for that object's class (classifier) or caption (CLIP) peak on the
object's own pixels? Prints Markdown tables (README.md's come from here).
"""

from __future__ import annotations

import argparse

import heatmap
from heatmap.demo.shapes_world import make_scenes
from heatmap.errors import HeatmapError
from heatmap.evaluation.pointing import pointing_game
from heatmap.models import load_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777, help="held out: training uses other seeds")
    parser.add_argument("--objects", default="2-3", help="objects per scene: N or MIN-MAX")
    args = parser.parse_args()
    low, _, high = args.objects.partition("-")
    scenes = make_scenes(args.scenes, seed=args.seed, num_objects=(int(low), int(high or low)))
    print(f"{args.scenes} scenes with {args.objects} objects, seed {args.seed}\n")
    models = [("demo classifier", lambda: heatmap.load("demo", device="cpu")),
              ("demo CLIP", lambda: load_clip("demo", device="cpu"))]
    for title, load in models:
        try:
            adapter = load()
        except HeatmapError as error:
            print(f"{title}: {error}\n")
            continue
        print(f"| {title}: method | hits / pairs | pointing game |\n|---|---|---|")
        for method in heatmap.methods():
            try:
                result = pointing_game(adapter, scenes, method)
            except HeatmapError as error:  # a method the model's structure does not allow: say why
                print(f"| {method} | refused | {str(error).split(', so it')[0]} |", flush=True)
                continue
            print(f"| {method} | {result.hits} / {result.pairs} | {result.rate:.1%} |", flush=True)
        print()


if __name__ == "__main__":
    main()
