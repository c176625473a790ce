"""Make the README's pictures from real runs of the console script.

    python scripts/readme_pictures.py [--out docs/images]

Runs ``heatmap chefer-generic`` and ``heatmap clip`` with the demo models on a
shipped scene, then puts the scene and the overlays side by side (each
enlarged 2x, nearest neighbour): ``demo_chefer_generic.png`` and
``demo_clip.png`` (overlays above, token strips below). Then every method
on a two-object scene for the same target, ``heatmap gallery``'s grid (a
method that refuses the model shows its refusal): ``demo_all_methods.png``.
Last, the demo CLIP converted to a Hugging Face transformers ``CLIPModel``
(``heatmap.demo.transformers_clip``) explained through the API, under the
open_clip run of the same scene and texts: ``demo_clip_transformers.png``
(needs the ``hf`` extra). And the labelled panel ``--panel`` writes, of
the CLIP run's best text (``demo_panel_clip.png``) and of a class the
classifier does not predict in the two-object scene (``demo_panel.png``).
Last, a screenshot of ``heatmap report`` of two methods' runs on the four
shipped scenes, taken by headless Chromium when there is one
(``report_run.png``).
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
TWO_OBJECTS, TARGET = ROOT / "sample_images" / "shapes_002_red-heart_pink-cross.png", "heart"


def run(args: list[str]) -> tuple[list[dict], Path]:
    """Run the console script into a fresh folder: the manifest records and the folder."""
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["heatmap", *args, "--model", "demo", "-o", str(folder)], check=True)
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()], folder


def every_method() -> Image.Image:
    """``heatmap gallery`` of the two-object scene for ``TARGET``: every method, a refusal with its reason."""
    folder = Path(tempfile.mkdtemp())
    subprocess.run(["heatmap", "gallery", str(TWO_OBJECTS), "--model", "demo", "--target", TARGET, "-o", str(folder),
                    "--quiet"], check=True)
    (picture,) = folder.glob("*.gallery.*.png")
    return Image.open(picture)


def report_screenshot(path: Path) -> None:
    """``heatmap report`` of chefer-generic's top-2 and rollout's top-1 on the four scenes, as Chromium shows it."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: report_run.png left as it is")
        return
    folder = Path(tempfile.mkdtemp()) / "demo-run"
    for method, targets in (("chefer-generic", ["--top-k", "2"]), ("rollout", [])):
        subprocess.run(["heatmap", method, "sample_images/shapes_00*.png", "--model", "demo", *targets, "--panel", "-o",
                        str(folder), "-q"], check=True, cwd=ROOT)
    subprocess.run(["heatmap", "report", str(folder), "-q"], check=True)
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1050", f"--screenshot={path}", (folder / "report.html").as_uri()],
                   check=True, capture_output=True)


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

    every_method().save(args.out / "demo_all_methods.png")

    records, folder = run(["chefer-generic", str(TWO_OBJECTS), "--target", "star", "--panel"])
    Image.open(folder / records[0]["files"]["panel"]).save(args.out / "demo_panel.png")
    records, folder = run(["clip", str(SCENE), *texts, "--panel"])
    best = max(records, key=lambda record: record["logit"])
    Image.open(folder / best["files"]["panel"]).save(args.out / "demo_panel_clip.png")
    report_screenshot(args.out / "report_run.png")
    print(f"wrote demo_chefer_generic.png, demo_clip.png, demo_clip_transformers.png, demo_all_methods.png, "
          f"demo_panel.png, demo_panel_clip.png and report_run.png in {args.out}")


if __name__ == "__main__":
    main()
