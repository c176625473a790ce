"""The shipped demo classifier: a timm ``VisionTransformer`` trained on the shapes world.

``classifier.json`` (architecture, preprocessing, labels, held-out figures)
and ``classifier.safetensors`` lie next to this file; both are written by
``scripts/train_demo_classifier.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from heatmap.errors import HeatmapError
from heatmap.models.checkpoints import check_fits, read_state_dict

DEMO_DIR = Path(__file__).resolve().parent


def create_demo_classifier(checkpoint: str | Path | None = None) -> tuple[torch.nn.Module, list[str]]:
    """The shipped shapes-world ViT (``demo/classifier.*``) and its class names."""
    from timm.models.vision_transformer import VisionTransformer

    config_path = DEMO_DIR / "classifier.json"
    if not config_path.is_file():
        raise HeatmapError(f"the demo classifier is missing from this installation ({config_path})")
    config = json.loads(config_path.read_text())
    extra = {}
    if config.get("patch_embed") == "conv_stem":
        from heatmap.demo.conv_stem import ConvStemPatchEmbed
        extra["embed_layer"] = ConvStemPatchEmbed
    model = VisionTransformer(**config["model_args"], **extra)
    source = checkpoint if checkpoint is not None else DEMO_DIR / "classifier.safetensors"
    state = read_state_dict(source)
    check_fits(model, state, str(source), "the demo classifier")
    model.load_state_dict(state)
    # resolve_data_config reads the preprocessing from here.
    model.pretrained_cfg = dict(config["pretrained_cfg"])
    return model, list(config["labels"])
