"""Wall time of ``heatmap METHOD IMAGES --ray local`` against the same run without Ray, on the demo classifier.

    python benchmarks/ray_vs_plain.py [--images 200] [--method rollout] [--rounds 3] [--workers 1 2]
                                      [--options "--top-k 3 --panel"]

Writes ``--images`` demo scenes into a temporary folder, then times, in
interleaved rounds, whole command-line runs in new processes (each into a
fresh output folder): the plain run, and a ``--ray local`` run per
``--workers`` value, which starts a Ray cluster on this machine, its actors
(each imports torch and loads the model), explains, writes and stops the
cluster: every start-up is counted. Prints the median seconds of each and its
ratio to the plain run's median, and checks that every run's maps are
byte-identical to the plain run's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from heatmap.demo.shapes_world import make_scenes


def timed_run(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def largest_difference(plain: Path, other: Path) -> float:
    """The largest |difference| between two runs' maps relative to the map's peak; 0.0: byte-identical files."""
    maps = sorted(plain.glob("*.npy"))
    assert maps and all((other / path.name).exists() for path in maps), f"{other}: maps missing"
    if all((other / path.name).read_bytes() == path.read_bytes() for path in maps):
        return 0.0
    return max(float(np.abs(np.load(other / path.name) - np.load(path)).max() / np.abs(np.load(path)).max())
               for path in maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--method", default="rollout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--options", default="", help="more options of the command, for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        images = root / "images"
        images.mkdir()
        for i, scene in enumerate(make_scenes(args.images, seed=77, num_objects=(2, 3))):
            scene.image.save(images / f"scene{i}.png")
        base = [sys.executable, "-m", "heatmap.cli", args.method, str(images), "--model", "demo", "-q",
                *args.options.split()]
        rows: dict[str, list[float]] = {"plain": [], **{f"--ray local --ray-workers {n}": [] for n in args.workers}}
        differences: dict[str, float] = {}
        for round_ in range(args.rounds):
            for name in rows:
                out = root / f"{name.replace(' ', '_')}-{round_}"
                extra = name.split() if name != "plain" else []
                rows[name].append(timed_run([*base, "-o", str(out), *extra]))
                if name != "plain":
                    difference = largest_difference(root / f"plain-{round_}", out)
                    differences[name] = max(differences.get(name, 0.0), difference)
        plain = statistics.median(rows["plain"])
        print(f"{args.images} demo images, {args.method} {args.options}, {torch.get_num_threads()} threads in a plain "
              f"run; median "
              f"of {args.rounds} interleaved rounds")
        print(f"{'run':<32} {'seconds':>8} {'ratio':>6}  maps against the plain run's")
        for name, seconds in rows.items():
            median = statistics.median(seconds)
            difference = differences.get(name)
            agreement = ("" if difference is None else "byte-identical" if difference == 0.0
                         else f"within {difference:.1e} of the peak (another thread count)")
            print(f"{name:<32} {median:8.1f} {median / plain:5.2f}x  {agreement}")


if __name__ == "__main__":
    main()
