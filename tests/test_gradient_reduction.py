"""Methods that only need a head-reduced gradient get it formed as each block's gradient arrives.

``Method.reduce_gradient`` runs in a hook of the backward pass; the maps
must equal those of the whole gradients taken first and reduced after.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from heatmap.explainers.driver import Driver
from heatmap.explainers.registry import Evidence, method
from heatmap.models import adapter_for
from helpers.models import random_images, tiny_clip, tiny_vit

# method -> the shape of what reaches relevance() per block, for B images, H heads, N tokens
REDUCED = {
    "grad-rollout": lambda b, h, n: (b, n, n),
    "chefer-generic": lambda b, h, n: (b, n, n),
    "attention-gradcam": lambda b, h, n: (b, h, n),
    "legrad": lambda b, h, n: (b, n),
}


def reduced_after(name: str):
    """The method as it was: whole gradients into relevance(), each reduced there (no hook)."""
    registered = method(name)
    reduce = registered.reduce_gradient
    assert reduce is not None

    def relevance(evidence: Evidence, options):
        assert evidence.attention_grads is not None
        assert all(grad.shape == probs.shape for grad, probs in zip(evidence.attention_grads,
                                                                    evidence.attention_probs, strict=False))
        reduced = [reduce(probs, grad, evidence.query)
                   for probs, grad in zip(evidence.attention_probs, evidence.attention_grads, strict=False)]
        return registered.relevance(replace(evidence, attention_grads=reduced), options)

    return replace(registered, reduce_gradient=None, relevance=relevance)


def spied(name: str, seen: list[tuple[int, ...]]):
    registered = method(name)

    def relevance(evidence: Evidence, options):
        assert evidence.attention_grads is not None
        seen.extend(tuple(grad.shape) for grad in evidence.attention_grads)
        return registered.relevance(evidence, options)

    return replace(registered, relevance=relevance)


@pytest.mark.numerics
@pytest.mark.parametrize("name", sorted(REDUCED))
def test_reduced_as_they_arrive_equals_reduced_after(name):
    adapter = adapter_for(tiny_vit().double())
    images = random_images(3, seed=11, dtype=torch.float64)
    seen: list[tuple[int, ...]] = []
    arriving = Driver(adapter, spied(name, seen)).explain(images, top_k=2)
    after = Driver(adapter, reduced_after(name)).explain(images, top_k=2)
    torch.testing.assert_close(arriving.maps, after.maps, rtol=0, atol=0)  # the same operations on the same numbers
    heads, tokens = 4, 17
    assert seen and set(seen) == {REDUCED[name](3, heads, tokens)}


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["grad-rollout", "chefer-generic", "attention-gradcam"])
def test_clip_towers_get_the_same_maps_and_token_relevance(name):
    adapter = adapter_for(tiny_clip().double())
    images = random_images(2, seed=5, dtype=torch.float64)
    texts = ["a photo of a cat", "a red car"]
    arriving = Driver(adapter, method(name)).explain_texts(images, texts)
    after = Driver(adapter, reduced_after(name)).explain_texts(images, texts)
    torch.testing.assert_close(arriving.maps, after.maps, rtol=0, atol=0)
    assert arriving.text_relevance is not None and after.text_relevance is not None
    for mine, theirs in zip(arriving.text_relevance, after.text_relevance, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
