"""Make the README's pictures from real runs of the console script.

    python scripts/readme_pictures.py [--out docs/images]

Runs ``heatmap chefer-generic`` and ``heatmap clip`` with the demo models on a
shipped scene, then puts the scene and the overlays side by side (each
enlarged 2x, nearest neighbour): ``demo_chefer_generic.png`` and
``demo_clip.png`` (overlays above, token strips below). Then every method's
command on a two-object scene for the same target, each overlay labelled
with its method (a method that refuses the model shows its refusal):
``demo_all_methods.png``. Last, the demo CLIP converted to a Hugging Face
transformers ``CLIPModel`` (``heatmap.demo.transformers_clip``) explained
through the API, under the open_clip run of the same scene and texts:
``demo_clip_transformers.png`` (needs the ``hf`` extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_images" / "shapes_000_white-star_green-circle_yellow-cross.png"
CAPTIONS = ("a white star", "a green circle", "a yellow cross")
SCALE, GAP = 2, 8
TWO_OBJECTS, TARGET = ROOT / "sample_images" / "shapes_002_red-heart_pink-cross.png", "heart"


def run(args: list[str]) -> tuple[list[dict], Path]:
    """Run the console script into a fresh folder: the manifest records and the folder."""
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["heatmap", *args, "--model", "demo", "-o", str(folder)], check=True)
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()], folder


def every_method(scene: Image.Image) -> Image.Image:
    """The scene, then each method's overlay for ``TARGET``, a label under each (the refusal, if refused)."""
    from heatmap.explainers.registry import methods
    from heatmap.render import strip_font

    font = strip_font(13)
    size = (scene.width * SCALE, scene.height * SCALE)
    tiles = [("scene", scene.resize(size, Image.NEAREST))]
    for method in methods():
        folder = Path(tempfile.mkdtemp())
        done = subprocess.run(["heatmap", method, str(TWO_OBJECTS), "--model", "demo", "--target", TARGET,
                               "-o", str(folder), "--quiet"], capture_output=True, text=True)
        if done.returncode == 0:
            record = json.loads((folder / "manifest.jsonl").read_text().splitlines()[0])
            overlay = Image.open(folder / record["files"]["png"]).convert("RGB")
            tiles.append((method, overlay.resize(size, Image.NEAREST)))
        else:  # the refusal, word-wrapped onto a blank tile
            tiles.append((method, refusal_tile(done.stderr.strip(), size, font)))
    columns, label_height = (len(tiles) + 1) // 2, 22  # two rows
    cell = (size[0] + GAP, size[1] + label_height + GAP)
    picture = Image.new("RGB", (columns * cell[0] - GAP, 2 * cell[1] - GAP), "white")
    draw = ImageDraw.Draw(picture)
    for index, (label, tile) in enumerate(tiles):
        x, y = (index % columns) * cell[0], (index // columns) * cell[1]
        picture.paste(tile, (x, y))
        draw.text((x + size[0] / 2, y + size[1] + 4), label, fill="black", font=font, anchor="ma")
    return picture


def refusal_tile(message: str, size: tuple[int, int], font: object) -> Image.Image:
    """A grey tile with the refusal's reason (the part before ", so it is not supported")."""
    tile = Image.new("RGB", size, (235, 235, 235))
    reason = message.removeprefix("error: ").split(", so it is not supported")[0]
    lines = textwrap.wrap("refused: " + reason, width=24)
    ImageDraw.Draw(tile).multiline_text((8, 8), "\n".join(lines), fill="black", font=font, spacing=3)
    return tile


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


def transformers_row(scene: Image.Image) -> Image.Image:
    """The scene, then the transformers demo CLIP's overlays for ``CAPTIONS`` (the API, the CLI's renderer)."""
    import heatmap
    from heatmap.demo.transformers_clip import demo_clip_as_transformers
    from heatmap.models import adapter_for
    from heatmap.render import overlay

    model, processor = demo_clip_as_transformers()
    adapter = adapter_for(model, processor=processor)
    result = heatmap.explain(adapter, [scene], "chefer-generic", texts=list(CAPTIONS))
    _, boxes = adapter.preprocess([scene])
    return strip([scene] + [overlay(scene, result.maps[0, t].numpy(), boxes[0]) for t in range(len(CAPTIONS))])


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

    both = Image.new("RGB", (overlays.width, 2 * overlays.height + GAP), "white")
    both.paste(overlays, (0, 0))
    both.paste(transformers_row(scene.convert("RGB")), (0, overlays.height + GAP))
    both.save(args.out / "demo_clip_transformers.png")

    every_method(Image.open(TWO_OBJECTS)).save(args.out / "demo_all_methods.png")
    print(f"wrote {args.out / 'demo_chefer_generic.png'}, {args.out / 'demo_clip.png'}, "
          f"{args.out / 'demo_clip_transformers.png'} and {args.out / 'demo_all_methods.png'}")


if __name__ == "__main__":
    main()
