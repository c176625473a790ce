"""Pointing game of every method with the demo classifier on held-out scenes.

    python scripts/pointing_game.py [--scenes 100] [--seed 777]

Prints a Markdown table (the one in README.md comes from this script).
"""

from __future__ import annotations

import argparse

import heatmap
from heatmap.evaluation import pointing_game
from heatmap.explainers import METHODS
from heatmap.models.demo.shapes_world import make_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777, help="held out: training uses other seeds")
    args = parser.parse_args()
    adapter = heatmap.load("demo", device="cpu")
    scenes = make_scenes(args.scenes, seed=args.seed, num_objects=(2, 3))
    print(f"{args.scenes} scenes with 2-3 objects, seed {args.seed}\n")
    print("| method | hits / pairs | pointing game |\n|---|---|---|")
    for method in METHODS:
        result = pointing_game(adapter, scenes, method)
        print(f"| {method} | {result.hits} / {result.pairs} | {result.rate:.1%} |")


if __name__ == "__main__":
    main()
