"""Pointing game of every method with the demo models on held-out scenes.

    python scripts/pointing_game.py [--scenes 100] [--seed 777]

For each held-out scene with two or three objects and each object: does the
map for that object's class (classifier) or caption (CLIP) peak on the
object's own pixels? Prints Markdown tables (README.md's come from here).
"""

from __future__ import annotations

import argparse

import heatmap
from heatmap.errors import HeatmapError
from heatmap.evaluation import clip_pointing_game, pointing_game
from heatmap.explainers import METHODS
from heatmap.models import load_clip
from heatmap.models.demo.shapes_world import make_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777, help="held out: training uses other seeds")
    args = parser.parse_args()
    scenes = make_scenes(args.scenes, seed=args.seed, num_objects=(2, 3))
    print(f"{args.scenes} scenes with 2-3 objects, seed {args.seed}\n")
    models = [("demo classifier", lambda: heatmap.load("demo", device="cpu"), pointing_game),
              ("demo CLIP", lambda: load_clip("demo", device="cpu"), clip_pointing_game)]
    for title, load, game in models:
        try:
            adapter = load()
        except HeatmapError as error:
            print(f"{title}: {error}\n")
            continue
        print(f"| {title}: method | hits / pairs | pointing game |\n|---|---|---|")
        for method, spec in METHODS.items():
            if game is clip_pointing_game and not spec.supports_clip:
                continue
            result = game(adapter, scenes, method)
            print(f"| {method} | {result.hits} / {result.pairs} | {result.rate:.1%} |")
        print()


if __name__ == "__main__":
    main()
