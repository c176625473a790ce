"""Each method that explains a CLIP text tower, on one (image, text) pair, whatever position the text tower pools.

An independent float64 reading of docs/METHODS.md ("Notation", "Text
pooling"): the caller gives the pooled position (the query row) and the span
of word pieces (the read-out columns), found by plain loops over the ids; the
towers run by hand (``helpers.clip_reference``, ``helpers.partial_lrp_reference``)
and the rules are those of ``helpers.reference``, ``helpers.baseline_reference``
and ``helpers.lrp_reference``. Nothing here imports vit-heatmap.

Also the tiny models and tokenizers the text-pooling tests build: an open_clip
CLIP whose text tower pools as asked, and transformers tokenizers written to a
folder in the two layouts open_clip's ``HFTokenizer`` meets (MetaCLIP 2's
``<s> ... </s> <pad>``, SigLIP's ``... </s> <pad>``).
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from helpers import baseline_reference, clip_reference, reference
from helpers.lrp_reference import ref_add, ref_add_original, ref_linear, ref_linear_original, ref_select
from helpers.partial_lrp_reference import clip_blocks_forward, clip_blocks_lrp, clip_image_forward, clip_start
from helpers.transformer_attribution_reference import ref_rollout

# -- tiny models and tokenizers --------------------------------------------------------

# Unigram pieces: "circle" and "stars" split in two, so a word spans pieces
WORD_PIECES = ["▁a", "▁red", "▁cir", "cle", "▁two", "▁blue", "▁st", "ars", "▁on", "▁grass", "▁cat", "▁"]
TEXTS = ["a red circle", "two blue stars on grass", "cat"]
PIECES = [["a", "red", "cir", "cle"], ["two", "blue", "st", "ars", "on", "grass"], ["cat"]]


def write_tokenizer(folder: Path, start_token: bool) -> open_clip.tokenizer.HFTokenizer:
    """A Unigram tokenizer saved with ``save_pretrained``, wrapped in open_clip's ``HFTokenizer`` (context 10).

    ``start_token``: MetaCLIP 2's (XLM) layout, ``<s>``=0 ``<pad>``=1 ``</s>``=2
    and ``<s> $A </s>``; else SigLIP's, ``<pad>``=0 ``</s>``=1 and ``$A </s>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"] if start_token else ["<pad>", "</s>", "<unk>"]
    vocab = [(piece, 0.0) for piece in specials] + [(piece, -1.0) for piece in WORD_PIECES]
    model = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    eos = specials.index("</s>")
    if start_token:
        template = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", eos)])
    else:
        template = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    model.post_processor = template
    names = dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if start_token:
        names["bos_token"] = "<s>"
    PreTrainedTokenizerFast(tokenizer_object=model, **names).save_pretrained(folder)
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=10)


def pooling_clip(vocab_size: int, pool_type: str, eos_id: int = 2, custom_text: bool = False,
                 no_causal_mask: bool = False, seed: int = 0) -> torch.nn.Module:
    """A CLIP with 3-block towers on 32x32 images (4x4 grid), a 10-token context, peaked attention."""
    torch.manual_seed(seed)
    make = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = make(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=3, head_width=8),
                 text_cfg=dict(context_length=10, vocab_size=vocab_size, width=32, heads=4, layers=3,
                               pool_type=pool_type, eos_id=eos_id, no_causal_mask=no_causal_mask))
    text = text_tower(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in [*model.visual.transformer.resblocks, *text.transformer.resblocks]:
            dim = block.attn.embed_dim
            block.attn.in_proj_weight[: 2 * dim] = torch.randn(2 * dim, dim, generator=generator) * 2 / dim ** 0.5
        text.token_embedding.weight.normal_(0, 1, generator=generator)
    return model.eval()


def text_tower(model):
    """The module holding the text tower's parts: the CLIP itself, or a CustomTextCLIP's ``text``."""
    return model.text if hasattr(model, "text") else model


# -- the text tower by hand --------------------------------------------------------------

def text_mask(text, length):
    """The causal mask (additive), or None for a bidirectional text tower."""
    if text.attn_mask is None:
        return None
    return torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)


def project(text, pooled):
    projection = text.text_projection
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection


def encode_text(model, tokens, pooled):
    """One text [1, L] pooled at position ``pooled``: its embedding and each block's attention."""
    text = text_tower(model)
    x = text.token_embedding(tokens) + text.positional_embedding
    mask = text_mask(text, tokens.shape[1])
    attentions = []
    for block in text.transformer.resblocks:
        x, probs = clip_reference.attention_block(block, x, mask)
        attentions.append(probs)
    return project(text, text.ln_final(x)[:, pooled]), attentions


def pair_gradients(model, image, tokens, pooled):
    """Both towers' attention and its gradient of the pair's logit, one image [1, ...] and one text [1, L]."""
    model.zero_grad()
    image_embedding, image_attn = clip_reference.encode_image(model, image)
    text_embedding, text_attn = encode_text(model, tokens, pooled)
    logit = model.logit_scale.exp() * F.normalize(image_embedding, dim=-1) @ F.normalize(text_embedding, dim=-1).T
    logit[0, 0].backward()
    return ([a[0].detach() for a in image_attn], [a.grad[0].detach() for a in image_attn],
            [a[0].detach() for a in text_attn], [a.grad[0].detach() for a in text_attn])


def lrp_pair(model, image, tokens, pooled, linear, add):
    """RA of every block of both towers, each pass started at its embedding against the other's."""
    text = text_tower(model)
    visual = model.visual
    image_kept, image_tokens, image_pooled, image_embedding = clip_image_forward(model, image)
    with torch.no_grad():
        x = text.token_embedding(tokens) + text.positional_embedding
        text_kept, x = clip_blocks_forward(text.transformer.resblocks, x, text_mask(text, tokens.shape[1]))
        text_tokens = text.ln_final(x)
        text_embedding = text_tokens[:, pooled] @ text.text_projection

    R_pooled = linear(image_pooled, visual.proj.t(), clip_start(model, image_embedding, text_embedding))
    R = torch.zeros_like(image_tokens)
    R[0, 0] = ref_select(image_tokens[0, 0], R_pooled[0])  # ln_post: identity; the class token
    image_RA = clip_blocks_lrp(visual.transformer.resblocks, image_kept, R, linear, add)

    R_pooled = linear(text_tokens[:, pooled], text.text_projection.t(),
                      clip_start(model, text_embedding, image_embedding))
    R = torch.zeros_like(text_tokens)
    R[0, pooled] = ref_select(text_tokens[0, pooled], R_pooled[0])  # ln_final: identity; the pooled token
    return image_RA, clip_blocks_lrp(text.transformer.resblocks, text_kept, R, linear, add)


# -- the methods ------------------------------------------------------------------------------

CLIP_START = {"rollout": 0, "grad-rollout": 0, "chefer-generic": -1, "transformer-attribution": 0}


def pair_reference(method, model, image, tokens, pooled, span):
    """The image map [4, 4] and the token relevance over ``span`` of one (image, text) pair, default options."""
    start, stop = span
    grid = tuple(model.visual.grid_size)
    if method in ("partial-lrp", "transformer-attribution"):
        rules = (ref_linear_original, ref_add_original) if method == "partial-lrp" else (ref_linear, ref_add)
        image_RA, text_RA = lrp_pair(model, image, tokens, pooled, *rules)
        if method == "partial-lrp":
            image_R, text_R = (RA[-1].clamp(min=0).mean(dim=0) for RA in (image_RA, text_RA))
        else:
            image_A, image_dA, text_A, text_dA = pair_gradients(model, image, tokens, pooled)
            image_R, text_R = ref_rollout(image_dA, image_RA, 0), ref_rollout(text_dA, text_RA, 0)
        return image_R[0, 1:].reshape(grid), text_R[pooled, start:stop]
    image_A, image_dA, text_A, text_dA = pair_gradients(model, image, tokens, pooled)
    if method in baseline_reference.REFERENCES:
        rule = baseline_reference.REFERENCES[method]
        image_map = rule(image_A[-1], image_dA[-1], ("token", 0), 1)
        # the text's read-out columns are its word pieces only
        columns = [a[:, :, start:stop] for a in (text_A[-1], text_dA[-1])]
        return image_map.reshape(grid), rule(*columns, ("token", pooled), 0)
    layer = CLIP_START[method] % len(image_A)
    if method == "rollout":
        image_R = reference.rollout_one(image_A, "mean", 0.0, layer, 0)
        text_R = reference.rollout_one(text_A, "mean", 0.0, layer, None)
    elif method == "grad-rollout":
        image_R = reference.grad_rollout_one(image_A, image_dA, 0.9, layer)
        text_R = reference.grad_rollout_one(text_A, text_dA, 0.9, layer)
    else:
        image_R = reference.chefer_generic_one(image_A, image_dA, layer)
        text_R = reference.chefer_generic_one(text_A, text_dA, layer)
    return image_R[0, 1:].reshape(grid), text_R[pooled, start:stop]
