"""Time of each method against the bare forward/backward of the same model.

    python benchmarks/methods_speed.py [--model vit_base_patch16_224] [--batch 1 8] [--repeats 5]

Random weights (timing does not depend on them). The baseline is what any
gradient method must at least do: a forward pass and ``loss.backward()`` with
weight gradients, as a training step would. Each method runs through the
public explainer (probe, forward, backward, aggregation), so the ratio is
what a user pays. Median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import timm
import torch

from heatmap.explainers import METHODS
from heatmap.models import adapter_for
from timing import median_seconds



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(args.device)
    adapter = adapter_for(model, args.model)
    size = model.pretrained_cfg["input_size"][1:]
    print(f"{args.model}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print("| batch | what | seconds | x forward+backward |\n|---|---|---|---|")
    for batch in args.batch:
        images = torch.randn(batch, 3, *size, device=args.device)

        def forward_backward():
            model.zero_grad(set_to_none=True)
            model(images).max(dim=1).values.sum().backward()

        def forward_only():
            with torch.no_grad():
                model(images)

        baseline = median_seconds(forward_backward, args.repeats)
        rows = [("forward only (no grad)", median_seconds(forward_only, args.repeats)),
                ("forward + backward (weights)", baseline)]
        for name, method in METHODS.items():
            explainer = method.explainer_class()(adapter)
            rows.append((name, median_seconds(lambda: explainer.explain(images), args.repeats)))
        for what, seconds in rows:
            print(f"| {batch} | {what} | {seconds:.3f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
