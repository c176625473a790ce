"""Pointing game of every method with the demo models on held-out scenes.

    python scripts/pointing_game.py [--scenes 100] [--seed 777] [--objects 2-3] [--record demo/pointing_game.json]

For each held-out scene (two or three objects by default) and each object: does the
map for that object's class (classifier) or caption (CLIP) peak on the
object's own pixels? Prints Markdown tables (README.md's come from here).
``--record FILE`` also writes every pair's hit and margin (the map's maximum
on the object minus its maximum elsewhere, on the overlay's 0-1 scale) into
FILE under this run's scene set, keeping the other sets already there:
``tests/test_pointing_game.py`` reruns a sample of those pairs and checks the
totals against README.md.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import heatmap
from heatmap.demo.shapes_world import make_scenes
from heatmap.errors import HeatmapError
from heatmap.evaluation.pointing import pointing_pairs
from heatmap.models import load_clip

MARGIN_DECIMALS = 6  # the margins are in [-1, 1]; 1e-6 is far below any threshold a test reads them with


def scene_set_name(scenes: int, seed: int, objects: str) -> str:
    """The key of one scene set in the record, e.g. ``"100 scenes, seed 777, 2-3 objects"``."""
    return f"{scenes} scenes, seed {seed}, {objects} objects"


def compact_json(value: Any) -> str:
    """``value`` indented, each innermost list (one pair) on one line."""
    text = json.dumps(value, indent=1)
    return re.sub(r"\[[^\[\]{}]*\]", lambda list_: re.sub(r"\n\s*", " ", list_.group()).replace("[ ", "[")
                  .replace(" ]", "]"), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=777, help="held out: training uses other seeds")
    parser.add_argument("--objects", default="2-3", help="objects per scene: N or MIN-MAX")
    parser.add_argument("--record", type=Path, help="a JSON file to add every pair's result to")
    args = parser.parse_args()
    low, _, high = args.objects.partition("-")
    num_objects = (int(low), int(high or low))
    scenes = make_scenes(args.scenes, seed=args.seed, num_objects=num_objects)
    print(f"{args.scenes} scenes with {args.objects} objects, seed {args.seed}\n")
    models = [("classifier", "demo classifier", lambda: heatmap.load("demo", device="cpu")),
              ("clip", "demo CLIP", lambda: load_clip("demo", device="cpu"))]
    recorded: dict[str, Any] = {"scenes": args.scenes, "seed": args.seed, "objects": list(num_objects),
                                "models": {}}
    for key, title, load in models:
        try:
            adapter = load()
        except HeatmapError as error:
            print(f"{title}: {error}\n")
            continue
        methods: dict[str, Any] = {}
        recorded["models"][key] = methods
        print(f"| {title}: method | hits / pairs | pointing game |\n|---|---|---|")
        for method in heatmap.methods():
            try:
                pairs = pointing_pairs(adapter, scenes, method)
            except HeatmapError as error:  # a method the model's structure does not allow: say why
                reason = str(error).split(", so it")[0]
                print(f"| {method} | refused | {reason} |", flush=True)
                methods[method] = {"refused": reason}
                continue
            hits = sum(pair.hit for pair in pairs)
            print(f"| {method} | {hits} / {len(pairs)} | {hits / len(pairs):.1%} |", flush=True)
            methods[method] = {"hits": hits, "pairs": len(pairs),
                               "per_pair": [[pair.scene, pair.target, int(pair.hit),
                                             round(pair.margin, MARGIN_DECIMALS)] for pair in pairs]}
        print()
    if args.record is not None:
        record = json.loads(args.record.read_text()) if args.record.exists() else {}
        record.setdefault("script", "scripts/pointing_game.py")
        record.setdefault("per_pair", ["scene index", "target (class or caption)", "hit",
                                       "margin: maximum on the object - maximum elsewhere, overlay scale 0-1"])
        record.setdefault("sets", {})[scene_set_name(args.scenes, args.seed, args.objects)] = recorded
        args.record.write_text(compact_json(record) + "\n")


if __name__ == "__main__":
    main()
