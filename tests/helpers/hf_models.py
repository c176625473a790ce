"""Tiny transformers models built from configs, the same weights as timm / open_clip ones, and local tokenizers.

Nothing here imports vit-heatmap's explanation code (only the demo's writer of
CLIP's vocabulary files). Module names are the installed transformers
release's (the tests run against it); the converters say which timm or
open_clip tensor goes where.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTForImageClassification,
)

from heatmap.demo.transformers_clip import write_clip_tokenizer_files
from helpers.models import sharpen_attention, tiny_clip

# transformers 4.x cannot run CLIP's text tower in float64 (its causal mask overflows; the adapter says so)
needs_float64_clip = pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                                        reason="transformers 4.x runs CLIP in float32 only")

VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=128)


def sharpen(layers, gain: float = 2.0, seed: int = 0) -> None:
    """Redraw each layer's q and k weights large enough that softmax rows are peaked (as helpers.models does)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            attention = layer.attention if hasattr(layer, "attention") else layer.self_attn
            for projection in (attention.q_proj, attention.k_proj):
                dim = projection.weight.shape[1]
                projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) * gain / dim ** 0.5)


# Where each part of a ViT layer lives, in the transformers releases the tests run against (5.x, then 4.x)
VIT_PARTS = {"q": ("attention.q_proj", "attention.attention.query"),
             "k": ("attention.k_proj", "attention.attention.key"),
             "v": ("attention.v_proj", "attention.attention.value"),
             "o": ("attention.o_proj", "attention.output.dense"),
             "norm1": ("layernorm_before",), "norm2": ("layernorm_after",),
             "fc1": ("mlp.fc1", "intermediate.dense"), "fc2": ("mlp.fc2", "output.dense")}


def vit_layers(base):
    """A ViT/DeiT model's layers: ``layers`` (transformers 5) or ``encoder.layer`` (4.x)."""
    return base.layers if hasattr(base, "layers") else base.encoder.layer


def part(layer, role):
    """The module of ``role`` in a ViT layer, whichever release named it."""
    for path in VIT_PARTS[role]:
        module = layer
        for name in path.split("."):
            module = getattr(module, name, None)
        if module is not None:
            return module
    raise AttributeError(f"no {role} in {type(layer).__name__}")


def vit_pair(kind: str = "vit", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny timm model and the transformers classifier with the same weights.

    ``kind``: ``"vit"`` (timm VisionTransformer, ViTForImageClassification);
    ``"deit"`` (a VisionTransformer whose one register token is DeiT's
    distillation token: DeiTForImageClassification); ``"deit-teacher"``
    (VisionTransformerDistilled, DeiTForImageClassificationWithTeacher).
    """
    torch.manual_seed(seed)
    vision = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)
    if kind == "deit-teacher":
        timm_model = VisionTransformerDistilled(**vision)
    else:
        timm_model = VisionTransformer(**vision, reg_tokens=1 if kind == "deit" else 0)
    timm_model = sharpen_attention(timm_model)
    with torch.no_grad():  # prefix tokens away from timm's near-zero initialisation
        for name in ("cls_token", "reg_token", "dist_token", "pos_embed"):
            if getattr(timm_model, name, None) is not None:
                getattr(timm_model, name).normal_(0, 0.5)
    config = dict(**VISION, num_labels=5, layer_norm_eps=1e-6)
    hf_class = {"vit": ViTForImageClassification, "deit": DeiTForImageClassification,
                "deit-teacher": DeiTForImageClassificationWithTeacher}[kind]
    hf_model = hf_class(ViTConfig(**config) if kind == "vit" else DeiTConfig(**config)).eval()
    base = hf_model.base_model
    source = timm_model.state_dict()
    copies = [(base.embeddings.cls_token, "cls_token"), (base.embeddings.position_embeddings, "pos_embed"),
              (base.embeddings.patch_embeddings.projection.weight, "patch_embed.proj.weight"),
              (base.embeddings.patch_embeddings.projection.bias, "patch_embed.proj.bias"),
              (base.layernorm.weight, "norm.weight"), (base.layernorm.bias, "norm.bias")]
    if kind != "vit":
        copies.append((base.embeddings.distillation_token, "reg_token" if kind == "deit" else "dist_token"))
    heads = [("head", "cls_classifier" if kind == "deit-teacher" else "classifier")]
    heads += [("head_dist", "distillation_classifier")] if kind == "deit-teacher" else []
    for theirs, ours in heads:
        head = getattr(hf_model, ours)
        copies += [(head.weight, f"{theirs}.weight"), (head.bias, f"{theirs}.bias")]
    for i, layer in enumerate(vit_layers(base)):
        block = f"blocks.{i}."
        for kind_ in ("weight", "bias"):
            for role, tensor in zip("qkv", source[block + f"attn.qkv.{kind_}"].chunk(3), strict=True):
                copies.append((getattr(part(layer, role), kind_), tensor))
            for theirs, role in (("attn.proj", "o"), ("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "fc1"),
                                 ("mlp.fc2", "fc2")):
                copies.append((getattr(part(layer, role), kind_), block + f"{theirs}.{kind_}"))
    with torch.no_grad():
        for parameter, value in copies:
            parameter.copy_(source[value] if isinstance(value, str) else value)
    return timm_model.to(dtype), hf_model.to(dtype)


def clip_config(context: int = 10) -> CLIPConfig:
    return CLIPConfig(
        projection_dim=16,
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=128, hidden_act="gelu", layer_norm_eps=1e-5),
        text_config=dict(vocab_size=49408, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128, hidden_act="gelu", max_position_embeddings=context,
                         layer_norm_eps=1e-5, eos_token_id=49407, bos_token_id=49406, pad_token_id=0))


def _attention_block(source: dict, prefix: str, target: dict, layer: str) -> None:
    for role, tensor in zip(("q", "k", "v"), source[prefix + "attn.in_proj_weight"].chunk(3), strict=True):
        target[layer + f"self_attn.{role}_proj.weight"] = tensor
    for role, tensor in zip(("q", "k", "v"), source[prefix + "attn.in_proj_bias"].chunk(3), strict=True):
        target[layer + f"self_attn.{role}_proj.bias"] = tensor
    for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        for kind in ("weight", "bias"):
            target[layer + f"{ours}.{kind}"] = source[prefix + f"{theirs}.{kind}"]


def clip_pair(seed: int = 0, dtype: torch.dtype = torch.float32):
    """helpers.models.tiny_clip and the CLIPModel with the same weights."""
    open_clip_model = tiny_clip(seed=seed)  # GELU: transformers' "gelu"
    source = open_clip_model.state_dict()
    hf_model = CLIPModel(clip_config()).eval()
    target = {"vision_model.embeddings.class_embedding": source["visual.class_embedding"],
              "vision_model.embeddings.position_embedding.weight": source["visual.positional_embedding"],
              "vision_model.embeddings.patch_embedding.weight": source["visual.conv1.weight"],
              "vision_model.pre_layrnorm.weight": source["visual.ln_pre.weight"],
              "vision_model.pre_layrnorm.bias": source["visual.ln_pre.bias"],
              "vision_model.post_layernorm.weight": source["visual.ln_post.weight"],
              "vision_model.post_layernorm.bias": source["visual.ln_post.bias"],
              "visual_projection.weight": source["visual.proj"].T,
              "text_model.embeddings.token_embedding.weight": source["token_embedding.weight"],
              "text_model.embeddings.position_embedding.weight": source["positional_embedding"],
              "text_model.final_layer_norm.weight": source["ln_final.weight"],
              "text_model.final_layer_norm.bias": source["ln_final.bias"],
              "text_projection.weight": source["text_projection"].T,
              "logit_scale": source["logit_scale"]}
    for i in range(3):
        _attention_block(source, f"visual.transformer.resblocks.{i}.", target, f"vision_model.encoder.layers.{i}.")
        _attention_block(source, f"transformer.resblocks.{i}.", target, f"text_model.encoder.layers.{i}.")
    missing, unexpected = hf_model.load_state_dict(target, strict=False)
    assert not unexpected and all("position_ids" in key for key in missing), (missing, unexpected)
    return open_clip_model.to(dtype), hf_model.to(dtype)


def clip_tokenizer(folder: Path, context: int = 10) -> CLIPTokenizer:
    """CLIP's byte-pair tokenizer from vocab.json and merges.txt written in ``folder`` (from open_clip's file)."""
    write_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),  # positional: renamed in 5.0
                         model_max_length=context)


WORDS = ["a", "red", "circle", "two", "blue", "stars", "on", "grass", "cat", "photo", "of", "dog"]


def siglip_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory, with SigLIP's conventions: no start token, ``</s>`` ends and pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def tiny_siglip(seed: int = 0, context: int = 8) -> SiglipModel:
    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=128),
        text_config=dict(vocab_size=len(WORDS) + 3, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=context, projection_size=32,
                         pad_token_id=1, eos_token_id=1, bos_token_id=None))
    model = SiglipModel(config).eval()
    sharpen(model.vision_model.encoder.layers, seed=seed)
    sharpen(model.text_model.encoder.layers, seed=seed + 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pool = model.vision_model.head.attention
        dim = pool.embed_dim
        pool.in_proj_weight[: 2 * dim] = torch.randn(2 * dim, dim, generator=generator) * 2 / dim ** 0.5
        model.vision_model.head.probe.normal_(0, 1, generator=generator)
    return model
