"""A tiny open_clip SigLIP whose image tower is a timm trunk with an attention-pool head, by NAME like the real ones.

``ViT-Test-8-SigLIP`` is an open_clip model config shaped like
``ViT-B-16-SigLIP`` (``custom_text``, a timm ``TimmModel`` tower pooled by
``map`` without a projection, a text tower pooled at its ``last`` position,
an ``HFTokenizer``, a logit bias) at 32x32 pixels, 8-pixel patches, width 32,
two blocks a tower. Its timm trunk ``vit_test_patch8_siglip_32`` is registered
with timm, its tokenizer written to a local folder: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from helpers.text_pooling_reference import write_tokenizer

MODEL = "ViT-Test-8-SigLIP"
TRUNK = "vit_test_patch8_siglip_32"
CONTEXT = 10  # the tokenizer's context length (write_tokenizer)


def _register_trunk() -> None:
    if timm.is_model(TRUNK):
        return

    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        # vit_base_patch16_siglip_224's structure: no class token, the "map" head, GELU (tanh), small
        options = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, class_token=False,
                       global_pool="map", act_layer="gelu_tanh")
        options.update(kwargs)
        return VisionTransformer(**options)

    create.__name__ = TRUNK
    create.__module__ = "timm.models.vision_transformer"
    register_model(create)


def register(folder: Path) -> Path:
    """Register the trunk with timm and the model config with open_clip (its tokenizer written in ``folder``)."""
    _register_trunk()
    tokenizer_folder = folder / "tokenizer"
    tokenizer = write_tokenizer(tokenizer_folder, start_token=False)
    config = {
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": TRUNK, "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": tokenizer.tokenizer.vocab_size,
                     "hf_tokenizer_name": str(tokenizer_folder), "width": 32, "heads": 4, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    }
    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{MODEL}.json").write_text(json.dumps(config))
    open_clip.add_model_config(configs)
    return tokenizer_folder


def random_siglip(seed: int = 0) -> torch.nn.Module:
    """``ViT-Test-8-SigLIP`` (registered first) with seeded random weights and peaked attention, in eval mode."""
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL, pretrained=None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 and "patch_embed" not in name:  # every weight matrix, so no gradient vanishes
                parameter.normal_(0, 2 / parameter.shape[-1] ** 0.5, generator=generator)
        model.visual.trunk.attn_pool.latent.normal_(0, 1, generator=generator)
        model.logit_bias.fill_(-1.0)
    return model.eval()
