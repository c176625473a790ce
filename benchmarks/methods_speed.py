"""Time and peak memory of each method against the bare forward/backward of the same model.

    python benchmarks/methods_speed.py [--model vit_base_patch16_224] [--batch 1 8] [--repeats 5]

Random weights (timing does not depend on them). The baseline is what any
gradient method must at least do: a forward pass and ``loss.backward()`` with
weight gradients, as a training step would. Each method runs through the
public explainer (probe, forward, backward, aggregation), so the ratio is
what a user pays. Median of ``--repeats`` runs after one warm-up.

Every row runs in a fresh process, so that its peak memory is its own: on
the CPU the peak resident size during the runs minus the size before the
first one (model and inputs loaded), on CUDA ``torch.cuda.max_memory_allocated``
minus the memory allocated before.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from timing import median_seconds

BASELINE = "forward + backward (weights)"
FORWARD = "forward only (no grad)"


def measure(model_name: str, what: str, batch: int, repeats: int, device: str) -> dict:
    """Seconds and extra peak MiB of one row, in this process."""
    import timm

    from heatmap.explainers import METHODS
    from heatmap.models import adapter_for

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval().to(device)
    images = torch.randn(batch, 3, *model.pretrained_cfg["input_size"][1:], device=device)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(images).max(dim=1).values.sum().backward()

    def forward_only():
        with torch.no_grad():
            model(images)

    if what == BASELINE:
        run = forward_backward
    elif what == FORWARD:
        run = forward_only
    else:
        explainer = METHODS[what].explainer_class()(adapter_for(model, model_name))
        run = lambda: explainer.explain(images)  # noqa: E731
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    seconds = median_seconds(run, repeats)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "extra_mib": (peak - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row, in a child process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(measure(args.model, args.row, args.batch[0], args.repeats, args.device)))
        return

    from heatmap.explainers import METHODS

    print(f"{args.model}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}\n")
    print("| batch | what | seconds | x forward+backward | extra peak MiB | x forward+backward |\n"
          "|---|---|---|---|---|---|")
    for batch in args.batch:
        results = {}
        for what in (FORWARD, BASELINE, *METHODS):
            child = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--batch", str(batch), "--repeats",
                 str(args.repeats), "--device", args.device, "--row", what],
                capture_output=True, text=True, check=True)
            results[what] = json.loads(child.stdout.strip().splitlines()[-1])
        base = results[BASELINE]
        for what, row in results.items():
            print(f"| {batch} | {what} | {row['seconds']:.3f} | {row['seconds'] / base['seconds']:.2f} | "
                  f"{row['extra_mib']:.0f} | {row['extra_mib'] / base['extra_mib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
