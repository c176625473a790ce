"""One tiny SigLIP's weights in three libraries: a transformers ``SiglipModel``, a timm classifier with its image
tower, and the open_clip ``ViT-Test-8-SigLIP`` (``helpers.open_clip_siglip``) with both towers.

The converters are plain state-dict key mappings (transformers names on the
right, timm / open_clip on the left); nothing here imports vit-heatmap.
The transformers config is chosen to be the same function as the two others:
LayerNorm eps 1e-6 everywhere (timm's and the open_clip config's), the image
tower's GELU the tanh approximation (the registered trunk's ``gelu_tanh``), the
text tower's GELU the exact one (open_clip builds its text tower with
``nn.GELU()`` unless the config gives ``act_kwargs``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import SiglipConfig, SiglipModel

from helpers.hf_models import WORDS, sharpen, siglip_tokenizer
from helpers.open_clip_siglip import MODEL, register

CONTEXT = 10  # the text tower's positions, in both libraries, and the tokenizer's padded length
WIDTH, LAYERS, HEADS = 32, 2, 4


def siglip_model(seed: int = 0) -> SiglipModel:
    """A ``SiglipModel`` (32x32 images, 8-pixel patches, width 32, two layers a tower) with seeded random weights.

    Every 1-d parameter (biases, LayerNorm scales) is moved off its
    initialisation, so a converter that drops or swaps one shows in the
    forward pass; the q and k weights of both towers and of the pooling head
    are drawn large, so the attention rows are peaked and the maps not flat.
    """
    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, intermediate_size=4 * WIDTH, hidden_act="gelu_pytorch_tanh",
                           layer_norm_eps=1e-6),
        text_config=dict(vocab_size=len(WORDS) + 3, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=4 * WIDTH, hidden_act="gelu",
                         layer_norm_eps=1e-6, max_position_embeddings=CONTEXT, projection_size=WIDTH,
                         pad_token_id=1, eos_token_id=1, bos_token_id=None))
    model = SiglipModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.vision_model.embeddings.position_embedding.weight.normal_(0, 0.5, generator=generator)
        model.text_model.embeddings.token_embedding.weight.normal_(0, 1, generator=generator)
        model.text_model.embeddings.position_embedding.weight.normal_(0, 0.5, generator=generator)
        pool = model.vision_model.head.attention
        pool.in_proj_weight[: 2 * WIDTH] = torch.randn(2 * WIDTH, WIDTH, generator=generator) * 2 / WIDTH ** 0.5
        model.vision_model.head.probe.normal_(0, 1, generator=generator)
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.0)
    sharpen(model.vision_model.encoder.layers, seed=seed)
    sharpen(model.text_model.encoder.layers, seed=seed + 1)
    return model


def _both(target: dict, theirs: str, source: dict, ours: str) -> None:
    for kind in ("weight", "bias"):
        target[f"{theirs}.{kind}"] = source[f"{ours}.{kind}"]


def vision_to_timm(source: dict, prefix: str = "vision_model.") -> dict:
    """A transformers SigLIP image tower's tensors under timm ``VisionTransformer(global_pool="map")`` keys."""
    p = prefix
    target = {"patch_embed.proj.weight": source[p + "embeddings.patch_embedding.weight"],
              "patch_embed.proj.bias": source[p + "embeddings.patch_embedding.bias"],
              "pos_embed": source[p + "embeddings.position_embedding.weight"][None],  # [N, D] -> [1, N, D]
              "attn_pool.latent": source[p + "head.probe"]}
    for i in range(LAYERS):
        block, layer = f"blocks.{i}.", f"{p}encoder.layers.{i}."
        for kind in ("weight", "bias"):  # timm's one qkv Linear is q, k, v stacked in that order
            target[block + f"attn.qkv.{kind}"] = torch.cat(
                [source[layer + f"self_attn.{role}_proj.{kind}"] for role in "qkv"])
        for theirs, ours in (("norm1", "layer_norm1"), ("attn.proj", "self_attn.out_proj"), ("norm2", "layer_norm2"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            _both(target, block + theirs, source, layer + ours)
    _both(target, "norm", source, p + "post_layernorm")
    # nn.MultiheadAttention's in_proj is q, k, v stacked; timm's head has q alone and k, v stacked
    for kind in ("weight", "bias"):
        in_proj = source[p + f"head.attention.in_proj_{kind}"]
        target[f"attn_pool.q.{kind}"] = in_proj[:WIDTH]
        target[f"attn_pool.kv.{kind}"] = in_proj[WIDTH:]
    for theirs, ours in (("attn_pool.proj", "head.attention.out_proj"), ("attn_pool.norm", "head.layernorm"),
                         ("attn_pool.mlp.fc1", "head.mlp.fc1"), ("attn_pool.mlp.fc2", "head.mlp.fc2")):
        _both(target, theirs, source, p + ours)
    return target


def timm_classifier(hf_model: SiglipModel, num_classes: int = 5, seed: int = 0) -> VisionTransformer:
    """The registered trunk's architecture as a timm classifier with ``hf_model``'s image tower and a random head
    (timm needs a head to be a classifier; the attention maps compared do not depend on it)."""
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS,
                              class_token=False, global_pool="map", act_layer="gelu_tanh", num_classes=num_classes)
    target = vision_to_timm(hf_model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    target["head.weight"] = torch.randn(num_classes, WIDTH, generator=generator)
    target["head.bias"] = torch.randn(num_classes, generator=generator)
    model.load_state_dict(target, strict=True)
    return model.eval()


def to_open_clip(hf_model: SiglipModel) -> dict:
    """``hf_model``'s tensors under the open_clip ``ViT-Test-8-SigLIP`` keys (``visual.trunk`` is timm's)."""
    source = hf_model.state_dict()
    target = {f"visual.trunk.{key}": value for key, value in vision_to_timm(source).items()}
    t = "text_model."
    target["text.token_embedding.weight"] = source[t + "embeddings.token_embedding.weight"]
    target["text.positional_embedding"] = source[t + "embeddings.position_embedding.weight"]
    for i in range(LAYERS):
        block, layer = f"text.transformer.resblocks.{i}.", f"{t}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            target[block + f"attn.in_proj_{kind}"] = torch.cat(
                [source[layer + f"self_attn.{role}_proj.{kind}"] for role in "qkv"])
        for theirs, ours in (("ln_1", "layer_norm1"), ("attn.out_proj", "self_attn.out_proj"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            _both(target, block + theirs, source, layer + ours)
    _both(target, "text.ln_final", source, t + "final_layer_norm")
    _both(target, "text.text_projection", source, t + "head")
    target["logit_scale"] = source["logit_scale"].reshape(())
    target["logit_bias"] = source["logit_bias"].reshape(())
    return target


def save_tokenizer(folder: Path) -> open_clip.tokenizer.HFTokenizer:
    """``helpers.hf_models.siglip_tokenizer`` saved in ``folder`` and wrapped in open_clip's ``HFTokenizer``."""
    siglip_tokenizer().save_pretrained(folder)
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=CONTEXT)


def open_clip_siglip(hf_model: SiglipModel, folder: Path) -> torch.nn.Module:
    """``ViT-Test-8-SigLIP`` (registered in ``folder``) with the text tower sized for ``siglip_tokenizer`` and
    ``hf_model``'s weights, in eval mode."""
    register(folder)
    config = copy.deepcopy(open_clip.get_model_config(MODEL))
    config.pop("custom_text")
    config["text_cfg"].update(vocab_size=len(WORDS) + 3, context_length=CONTEXT)
    model = open_clip.CustomTextCLIP(**config)
    model.load_state_dict(to_open_clip(hf_model), strict=True)
    return model.eval()
