"""What explaining a transformers ViT costs next to the same architecture in timm.

    python benchmarks/transformers_vs_timm.py [--rounds 7] [--batch 1]

ViT-B/16 at 224 px in both libraries, random weights (timing does not depend
on them; nothing is downloaded): timm's ``vit_base_patch16_224`` and
transformers' ``ViTForImageClassification`` with the default ``ViTConfig``
(the same sizes), the latter with its default attention (SDPA). Rows, per
library: the forward pass (no grad); the floor, a forward and a backward pass
with FROZEN weights and the input requiring grad; and a few methods through
the public explainer. Every row lives in this one process and is timed in
interleaved rounds (one warm-up call each first); a figure is the median over
rounds of the per-round ratio to the same library's forward, and of the
transformers row to the timm row of the same method.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from methods_speed import explainer_rows, frozen

METHODS = ("rollout", "chefer-generic", "transformer-attribution", "legrad")


def library_rows(library: str, model: torch.nn.Module, images: torch.Tensor,
                 logits: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable[[], object]]:
    """Row name -> a call doing the row's work once, for one library's model."""
    from heatmap.models import adapter_for

    def forward() -> None:
        with torch.no_grad():
            logits(images)

    def floor() -> None:
        inputs = images.detach().requires_grad_(True)
        torch.autograd.grad(logits(inputs).max(dim=1).values.sum(), inputs)

    explained, refused = explainer_rows(adapter_for(model), lambda driver: driver.explain(images),
                                        {method: (method, {}) for method in METHODS}, None)
    assert not refused, refused
    rows: dict[str, Callable[[], object]] = {f"{library}: forward": forward, f"{library}: floor": floor}
    rows.update({f"{library}: {name}": function for name, function in explained.items()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    import timm
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    timm_model = frozen(timm.create_model("vit_base_patch16_224", pretrained=False))
    hf_model = frozen(ViTForImageClassification(ViTConfig(num_labels=1000)))
    images = torch.randn(args.batch, 3, 224, 224)
    rows = {**library_rows("timm", timm_model, images, timm_model),
            **library_rows("transformers", hf_model, images, lambda x: hf_model(pixel_values=x).logits)}
    for function in rows.values():
        function()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, function in rows.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)

    def ratio(row: str, to: str) -> float:
        return statistics.median(a / b for a, b in zip(seconds[row], seconds[to], strict=True))

    print(f"ViT-B/16, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds (medians)\n")
    print("| row | timm s | x timm forward | transformers s | x transformers forward | transformers / timm |")
    print("|---|---|---|---|---|---|")
    for row in ["forward", "floor", *METHODS]:
        timm_row, hf_row = f"timm: {row}", f"transformers: {row}"
        print(f"| {row} | {statistics.median(seconds[timm_row]):.3f} | {ratio(timm_row, 'timm: forward'):.2f} | "
              f"{statistics.median(seconds[hf_row]):.3f} | {ratio(hf_row, 'transformers: forward'):.2f} | "
              f"{ratio(hf_row, timm_row):.2f} |")


if __name__ == "__main__":
    main()
