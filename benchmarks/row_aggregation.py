"""What the row-only aggregation saves: the query row as vector-matrix products against the full products.

    python benchmarks/row_aggregation.py [--blocks 12] [--repeats 5]

For token counts of ViT-B/16 at 224 px (197), ViT-B/16 at 384 px (577) and
DINOv2-B/14 at 518 px (1,370 with its class token), one image, float32: the
median seconds of rollout's and transformer-attribution's aggregation as the
full ``[N, N]`` products followed by their query row (what the methods
computed before) and as the row alone (what they compute now), measured in
turn in one process, and the largest difference of the two rows relative
to the row's largest entry.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from heatmap.explainers.aggregation import normalized_rollout_row, unnormalized_rollout_row


def full_rollout(fused: list[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """``q @ M_last @ ... @ M_first`` by forming the products, as before."""
    relevance = torch.eye(fused[0].shape[-1], dtype=fused[0].dtype).expand_as(fused[0])
    for matrix in fused:
        with_skip = matrix + torch.eye(matrix.shape[-1], dtype=matrix.dtype)
        relevance = (with_skip / with_skip.sum(dim=-1, keepdim=True)) @ relevance
    return torch.einsum("bn,bnm->bm", query, relevance)


def full_unnormalised(fused: list[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(fused[0].shape[-1], dtype=fused[0].dtype)
    relevance = fused[0] + eye
    for matrix in fused[1:]:
        relevance = (matrix + eye) @ relevance
    return torch.einsum("bn,bnm->bm", query, relevance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.blocks} blocks, one image, float32\n")
    print("| tokens | aggregation | full products, s | row only, s | speed-up | largest difference |")
    print("|---|---|---|---|---|---|")
    for tokens in (197, 577, 1370):
        fused = [0.1 * torch.softmax(3 * torch.randn(1, tokens, tokens, generator=generator), dim=-1)
                 for _ in range(args.blocks)]
        query = torch.zeros(1, tokens)
        query[0, 0] = 1.0
        for name, full, row in (("rollout", full_rollout, normalized_rollout_row),
                                ("transformer-attribution", full_unnormalised, unnormalized_rollout_row)):
            full_time = median_seconds(lambda full=full, fused=fused, query=query: full(fused, query), args.repeats)
            row_time = median_seconds(lambda row=row, fused=fused, query=query: row(fused, query), args.repeats)
            reference, found = full(fused, query), row(fused, query)
            difference = float((found - reference).abs().max() / reference.abs().max())
            print(f"| {tokens} | {name} | {full_time:.4f} | {row_time:.5f} | {full_time / row_time:.0f}x | "
                  f"{difference:.1e} |")


if __name__ == "__main__":
    main()
