"""Make the README's pictures from real runs of the console script.

    python scripts/readme_pictures.py [--out docs/images]

Runs ``heatmap chefer-generic`` and ``heatmap clip`` with the demo models on a
shipped scene, then puts the scene and the overlays side by side (each
enlarged 2x, nearest neighbour): ``demo_chefer_generic.png`` and
``demo_clip.png`` (overlays above, token strips below).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_images" / "shapes_000_white-star_green-circle_yellow-cross.png"
CAPTIONS = ("a white star", "a green circle", "a yellow cross")
SCALE, GAP = 2, 8


def run(args: list[str]) -> tuple[list[dict], Path]:
    """Run the console script into a fresh folder: the manifest records and the folder."""
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["heatmap", *args, "--model", "demo", "-o", str(folder)], check=True)
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()], folder


def strip(pictures: list[Image.Image]) -> Image.Image:
    """Pictures in a row on white, each enlarged ``SCALE`` times."""
    pictures = [p.convert("RGB").resize((p.width * SCALE, p.height * SCALE), Image.NEAREST) for p in pictures]
    row = Image.new("RGB", (sum(p.width for p in pictures) + GAP * (len(pictures) - 1),
                            max(p.height for p in pictures)), "white")
    x = 0
    for picture in pictures:
        row.paste(picture, (x, 0))
        x += picture.width + GAP
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scene = Image.open(SCENE)

    records, folder = run(["chefer-generic", str(SCENE), "--top-k", "3"])
    strip([scene] + [Image.open(folder / r["files"]["png"]) for r in records]).save(
        args.out / "demo_chefer_generic.png")

    texts = [arg for caption in CAPTIONS for arg in ("--text", caption)]
    records, folder = run(["clip", str(SCENE), *texts])
    overlays = strip([scene] + [Image.open(folder / r["files"]["png"]) for r in records])
    tokens = [Image.open(folder / r["files"]["tokens"]) for r in records]
    token_row = Image.new("RGB", (overlays.width, max(t.height for t in tokens)), "white")
    x = scene.width * SCALE + GAP
    for picture in tokens:
        token_row.paste(picture.convert("RGB"), (x, 0))
        x += scene.width * SCALE + GAP
    both = Image.new("RGB", (overlays.width, overlays.height + GAP + token_row.height), "white")
    both.paste(overlays, (0, 0))
    both.paste(token_row, (0, overlays.height + GAP))
    both.save(args.out / "demo_clip.png")
    print(f"wrote {args.out / 'demo_chefer_generic.png'} and {args.out / 'demo_clip.png'}")


if __name__ == "__main__":
    main()
