"""open_clip text towers that pool elsewhere than CLIP's argmax, and transformers tokenizers in open_clip's wrapper.

docs/METHODS.md ("Text pooling"): the query row is the position the model
pools, the token relevance is read over the word pieces, from after the start
token (if any) to before the first end-of-text or padding token. Every
expected position here is found by a plain loop over the ids.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

import heatmap
from heatmap.explainers.driver import Driver
from heatmap.explainers.registry import methods
from heatmap.models import adapter_for
from helpers.models import random_images, tokens_of
from helpers.text_pooling_reference import PIECES, TEXTS, pair_reference, pooling_clip, text_tower, write_tokenizer

TEXT_METHODS = sorted(name for name, method in methods().items() if "text" in method.towers)

# Largest relative error (scaled by the largest value) of each text-explaining
# method's image map and token relevance, float64, against the float64
# reference of each pair. measured: 3.4e-15 native, 6.2e-15 portable
# (ATEN_CPU_CAPABILITY=default); 1e-12 keeps over 100x. Pooling at the argmax
# instead gives errors of 0.8 to 1e3.
FLOAT64_TOLERANCE = 1e-12


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6))


def first_index(row, ids):
    for index, token in enumerate(row):
        if token in ids:
            return index
    return len(row)


@pytest.fixture(scope="module")
def metaclip_tokenizer(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("metaclip-tokenizer"), start_token=True)


@pytest.fixture(scope="module")
def siglip_tokenizer(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("siglip-tokenizer"), start_token=False)


def pooled_positions(adapter, images, texts):
    """The query row of each text as the scored pass builds it, and the LRP capture's pooled token."""
    scored = adapter.score_texts(images, texts)
    query = scored.towers[1].query
    assert torch.equal(query.sum(dim=1), torch.ones(len(texts), dtype=query.dtype))  # one-hot rows
    view = adapter.text.lrp_view()
    # the explicit attention path, which the capture's hooks see
    with adapter.text.attention_capture(None), view.capture(0) as capture, torch.no_grad():
        adapter.text_embeddings(adapter.tokenize(texts))
    return query.argmax(dim=1).tolist(), capture.activations().head.token_index.tolist(), scored


# -- (a) MetaCLIP 2: the first end-of-text token ------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("method", TEXT_METHODS)
def test_eos_pooling_matches_reference(method, metaclip_tokenizer):
    vocab = len(metaclip_tokenizer.tokenizer)
    model = pooling_clip(vocab, "eos", eos_id=2).double()
    images = random_images(1, seed=5, dtype=torch.float64)
    tokens = metaclip_tokenizer(TEXTS)
    eos = [first_index(row, {2}) for row in tokens.tolist()]
    assert eos != tokens.argmax(dim=-1).tolist()  # the test tells the model's pooling from CLIP's
    result = Driver(adapter_for(model, processor=metaclip_tokenizer), method).explain_texts(images, TEXTS)
    assert result.word_pieces == PIECES
    for t in range(len(TEXTS)):
        image_map, relevance = pair_reference(method, model, images, tokens[t:t + 1], eos[t], (1, eos[t]))
        assert relative_error(result.maps[0, t], image_map) < FLOAT64_TOLERANCE
        assert relative_error(result.text_relevance[0][t], relevance) < FLOAT64_TOLERANCE


def test_eos_pooling_query_row_and_lrp_token(metaclip_tokenizer):
    model = pooling_clip(len(metaclip_tokenizer.tokenizer), "eos", eos_id=2)
    adapter = adapter_for(model, processor=metaclip_tokenizer)
    tokens = metaclip_tokenizer(TEXTS).tolist()
    query, lrp_token, _ = pooled_positions(adapter, random_images(1, seed=5), TEXTS)
    assert query == lrp_token == [first_index(row, {2}) for row in tokens] == [5, 7, 2]
    assert adapter.text_spans(torch.tensor(tokens)) == [(1, 5), (1, 7), (1, 2)]


# -- (b) last (SigLIP), first; mean is not an open_clip text pooling ---------------------------


def test_last_pooling_query_row_and_spans(siglip_tokenizer):
    # SigLIP's text tower: bidirectional, a Linear projection with a bias, in a CustomTextCLIP
    model = pooling_clip(len(siglip_tokenizer.tokenizer), "last", custom_text=True, no_causal_mask=True)
    adapter = adapter_for(model, processor=siglip_tokenizer)
    tokens = siglip_tokenizer(TEXTS).tolist()
    query, lrp_token, scored = pooled_positions(adapter, random_images(1, seed=5), TEXTS)
    assert query == lrp_token == [9, 9, 9]
    # no start token; the pieces end at the first end-of-text (</s> = 1) or padding (<pad> = 0)
    spans = [(0, first_index(row, {0, 1})) for row in tokens]
    assert spans == [(0, 4), (0, 6), (0, 1)]
    assert scored.towers[1].readout.spans == spans
    assert scored.word_pieces == PIECES


def test_first_pooling_query_row_and_spans():
    model = pooling_clip(49408, "first")
    adapter = adapter_for(model)
    tokens = tokens_of(TEXTS).tolist()
    query, lrp_token, scored = pooled_positions(adapter, random_images(1, seed=5), TEXTS)
    assert query == lrp_token == [0, 0, 0]
    # CLIP's byte-pair tokens: after the start token up to end-of-text (49407)
    assert scored.towers[1].readout.spans == [(1, first_index(row, {49407})) for row in tokens] == [(1, 4), (1, 6),
                                                                                                     (1, 2)]
    assert scored.word_pieces == [["a", "red", "circle"], ["two", "blue", "stars", "on", "grass"], ["cat"]]


def test_pooling_not_in_open_clip_is_refused():
    model = pooling_clip(49408, "argmax")
    model.text_pool_type = "mean"  # open_clip's text towers have no such pooling: nothing reads it
    with pytest.raises(heatmap.HeatmapError, match="not supported: text pooling 'mean'"):
        adapter_for(model)


# -- (c) open_clip's HFTokenizer ------------------------------------------------------------------


def test_hf_tokenizer_pieces_spans_and_truncation(metaclip_tokenizer):
    model = pooling_clip(len(metaclip_tokenizer.tokenizer), "eos", eos_id=2)
    adapter = adapter_for(model, processor=metaclip_tokenizer)
    long_text = "a red circle " * 3  # 12 pieces, a start and an end-of-text: over the context of 10
    tokens = adapter.tokenize([*TEXTS, long_text]).tolist()
    assert tokens[0] == [0, 4, 5, 6, 7, 2, 1, 1, 1, 1]
    spans = [(1, first_index(row, {1, 2})) for row in tokens]
    assert adapter.text_spans(torch.tensor(tokens)) == spans
    assert adapter.word_pieces(torch.tensor(tokens)) == [*PIECES, ["a", "red", "cir", "cle"] * 2]
    assert adapter.truncated([*TEXTS, long_text]) == [False, False, False, True]


# -- (d) refusals -----------------------------------------------------------------------------------


def test_unpooled_text_tower_is_refused():
    with pytest.raises(heatmap.HeatmapError, match="not supported: text pooling 'none'"):
        adapter_for(pooling_clip(49408, "none"))


def test_appended_text_class_token_is_refused():
    model = open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=1, head_width=8),
        text_cfg=dict(context_length=10, vocab_size=49408, width=32, heads=4, layers=1, embed_cls=True))
    assert text_tower(model).cls_emb is not None
    with pytest.raises(heatmap.HeatmapError, match=r"not supported: the appended text class token \(CoCa\)"):
        adapter_for(model)


def test_unknown_tokenizer_is_refused():
    with pytest.raises(heatmap.HeatmapError, match="its tokenizer \\(function\\) is neither CLIP's byte-pair"):
        adapter_for(pooling_clip(49408, "argmax"), processor=lambda texts: tokens_of(texts))
