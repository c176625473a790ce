"""The pure functions on small matrices, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from heatmap.errors import UsageError
from heatmap.explainers.aggregation import (
    accumulated_relevance,
    discard_lowest,
    fuse_heads,
    normalized_rollout,
    query_row,
    resolve_start_layer,
)
from heatmap.explainers.driver import read_grid
from heatmap.explainers.registry import method
from heatmap.models.protocols import Grid

pytestmark = pytest.mark.numerics


def test_rollout_of_one_block_normalises_rows_not_columns():
    fused = torch.tensor([[[0.0, 1.0], [3.0, 0.0]]])
    # F + I = [[1, 1], [3, 1]] -> rows / row sums
    expected = torch.tensor([[[0.5, 0.5], [0.75, 0.25]]])
    torch.testing.assert_close(normalized_rollout([fused]), expected)


def test_rollout_multiplies_later_blocks_on_the_left():
    first = torch.tensor([[[0.0, 1.0], [3.0, 0.0]]])   # M0 = [[.5, .5], [.75, .25]]
    second = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # M1 = [[1, 0], [0, 1]] after rownorm of [[2,0],[0,1]]
    third = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])   # M2 = [[1/3, 2/3], [0, 1]]
    m0 = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    m2 = torch.tensor([[1 / 3, 2 / 3], [0.0, 1.0]])
    torch.testing.assert_close(normalized_rollout([first, second, third])[0], m2 @ m0)


def test_accumulated_relevance_adds_identity_without_normalising():
    first = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    second = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # R1 = I + A0 = [[1, 1], [2, 1]];  R2 = R1 + A1 R1 = [[2, 2], [2, 1]]
    torch.testing.assert_close(accumulated_relevance([first, second])[0], torch.tensor([[2.0, 2.0], [2.0, 1.0]]))


def test_head_fusions():
    heads = torch.tensor([[[[1.0, 4.0]], [[3.0, 0.0]]]])  # [B=1, H=2, 1, 2]
    torch.testing.assert_close(fuse_heads(heads, "mean"), torch.tensor([[[2.0, 2.0]]]))
    torch.testing.assert_close(fuse_heads(heads, "max"), torch.tensor([[[3.0, 4.0]]]))
    torch.testing.assert_close(fuse_heads(heads, "min"), torch.tensor([[[1.0, 0.0]]]))
    with pytest.raises(ValueError):  # a programming error: the registry checks the option first
        fuse_heads(heads, "median")
    with pytest.raises(UsageError, match="rollout: unknown head fusion 'median'; use one of mean, max, min"):
        method("rollout").resolve_options({"head_fusion": "median"})


def test_discard_counts_floor_of_ratio_times_entries_and_protects_the_class_token():
    fused = torch.tensor([[[0.1, 0.5, 0.6], [0.2, 0.7, 0.8], [0.3, 0.9, 0.4]]])
    # floor(0.4 * 9) = 3 smallest: 0.1 (the (0,0) entry), 0.2, 0.3
    torch.testing.assert_close(discard_lowest(fused, 0.4)[0],
                               torch.tensor([[0.0, 0.5, 0.6], [0.0, 0.7, 0.8], [0.0, 0.9, 0.4]]))
    torch.testing.assert_close(discard_lowest(fused, 0.4, protect=0)[0],
                               torch.tensor([[0.1, 0.5, 0.6], [0.0, 0.7, 0.8], [0.0, 0.9, 0.4]]))
    assert discard_lowest(fused, 0.1) is fused  # floor(0.9) = 0: nothing to do


def test_discard_is_per_image():
    fused = torch.stack([torch.arange(4.0).reshape(2, 2), -torch.arange(4.0).reshape(2, 2)])
    out = discard_lowest(fused, 0.5)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.0], [2.0, 3.0]]))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, -1.0], [0.0, 0.0]]))


def test_query_row_and_grid_read_out_class_token_and_mean_rows():
    relevance = torch.arange(25.0).reshape(1, 5, 5)
    one_hot = torch.tensor([[1.0, 0, 0, 0, 0]])
    grid = Grid(num_prefix_tokens=1, height=2, width=2)
    torch.testing.assert_close(read_grid(query_row(relevance, one_hot), grid)[0],
                               torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    mean_of_patches = torch.tensor([[0.0, 0.25, 0.25, 0.25, 0.25]])
    expected = relevance[0, 1:, 1:].mean(dim=0).reshape(2, 2)
    torch.testing.assert_close(read_grid(query_row(relevance, mean_of_patches), grid)[0], expected)
    with pytest.raises(RuntimeError):
        read_grid(query_row(relevance, one_hot), Grid(1, 3, 2))


def test_start_layer_counts_like_python():
    assert resolve_start_layer(0, 12) == 0
    assert resolve_start_layer(-1, 12) == 11
    assert resolve_start_layer(-12, 12) == 0
    with pytest.raises(UsageError, match="-12..11"):
        resolve_start_layer(12, 12)
