"""Many texts per image: one forward pass per image against one per (image, text) pair.

    python benchmarks/clip_texts.py [--model ViT-B-32] [--texts 5] [--method chefer-generic] [--repeats 5]

Random weights (timing does not depend on them). Three ways to explain one
image against T texts, all through the driver (``Driver.explain_texts``), so all give the
same maps:

- per pair: one explain() call per text, which runs the image tower once per
  text, as the authors' notebook does by repeating the image for each text;
- shared, retained graph: one call, the image tower runs once, then T + B
  backward passes through a retained graph (the default);
- shared, batched backward: one call, the T + B gradients in two vectorised
  backward passes (``batched_backward=True``).

Also the bare forward and forward/backward of the image tower, for scale.
Median of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse

import open_clip
import torch
from timing import median_seconds

from heatmap.explainers.driver import Driver
from heatmap.models import adapter_for

TEXTS = ["a photo of a cat", "a dog on a sofa", "a red car", "two people talking", "a bowl of soup",
         "a mountain lake", "a plate of food", "a bald man"]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--texts", type=int, default=5)
    parser.add_argument("--method", default="chefer-generic")
    parser.add_argument("--start-layer", type=int, default=None, help="default: the method's CLIP default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = open_clip.create_model(args.model).eval().to(args.device)
    adapter = adapter_for(model, args.model)
    size = model.visual.image_size
    image = torch.randn(1, 3, *size, device=args.device)
    texts = (TEXTS * 4)[:args.texts]
    options = {} if args.start_layer is None else {"start_layer": args.start_layer}
    retained = Driver(adapter, args.method, **options)
    batched = Driver(adapter, args.method, batched_backward=True, **options)

    def image_forward_backward():
        model.zero_grad(set_to_none=True)
        model.encode_image(image).sum().backward()

    def image_forward():
        with torch.no_grad():
            model.encode_image(image)

    rows = [
        ("image tower forward (no grad)", median_seconds(image_forward, args.repeats)),
        ("image tower forward + backward (weights)", median_seconds(image_forward_backward, args.repeats)),
        ("per pair: one call per text", median_seconds(
            lambda: [retained.explain_texts(image, [text]) for text in texts], args.repeats)),
        ("shared, retained graph (default)",
         median_seconds(lambda: retained.explain_texts(image, texts), args.repeats)),
        ("shared, batched backward", median_seconds(lambda: batched.explain_texts(image, texts), args.repeats)),
    ]
    per_pair = rows[2][1]
    print(f"{args.model}, {args.method} {retained.options}, {args.device}, 1 image x {args.texts} texts, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| what | seconds | speed-up over per pair |\n|---|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.3f} | {per_pair / seconds:.2f}x |")


if __name__ == "__main__":
    main()
