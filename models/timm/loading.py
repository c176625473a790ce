"""Building timm models by name (cache first) or from a local file."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from heatmap.errors import HeatmapError, UsageError
from heatmap.models.checkpoints import cached_hub_file, check_fits, download_hub_file, read_state_dict
from heatmap.models.timm.adapter import check_architecture, check_has_head

_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def imagenet_labels(model: Any) -> list[str] | None:
    """Short ImageNet class names ("tabby") when the model's head is an ImageNet one."""
    from timm.data import ImageNetInfo, infer_imagenet_subset
    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0].strip() for i in range(model.num_classes)]


def create_timm(name: str, checkpoint: str | Path | None = None) -> Any:
    """A timm model by name, with pretrained weights (cache first) or a local checkpoint.

    Args:
        name: a timm name with an optional tag (``vit_base_patch16_224.augreg_in1k``)
            or ``hf-hub:org/name``.
        checkpoint: a local ``.safetensors``/``.pt``/``.pth`` file of that architecture.
    """
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if name.startswith("hf-hub:"):
        return _create_from_hub_name(timm, name, checkpoint)
    architecture, _tag = split_model_name_tag(name)
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('vit*')` lists them"
        raise UsageError(f"unknown model {name!r}{hint}")
    # refuse an architecture vit-heatmap cannot explain before any download: built on the
    # meta device, the model costs no memory and no weights
    with torch.device("meta"):
        skeleton = timm.create_model(name, pretrained=False)  # with its tag: a tag's weights may have no head
    check_architecture(skeleton, name)
    if checkpoint is None:
        check_has_head(skeleton, name)  # before any download: the published weights have no head either
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        head = state.get("head.weight")
        kwargs = {"num_classes": head.shape[0]} if head is not None and head.dim() == 2 else {}
        model = timm.create_model(architecture, pretrained=False, **kwargs)
        check_fits(model, state, str(checkpoint), architecture)
        model.load_state_dict(state)
        return model
    pretrained_cfg = get_pretrained_cfg(name)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        raise HeatmapError(f"{name} has no pretrained weights in timm; pass --checkpoint FILE")
    filenames = (pretrained_cfg.hf_hub_filename,) if pretrained_cfg.hf_hub_filename else _HUB_WEIGHT_FILES
    weights = (cached_hub_file(pretrained_cfg.hf_hub_id, filenames)
               or download_hub_file(pretrained_cfg.hf_hub_id, filenames, name))
    # timm applies its own filters (class count, position embedding size) to this dict.
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": read_state_dict(weights)})


def _create_from_hub_name(timm: Any, name: str, checkpoint: str | Path | None) -> Any:
    try:
        model = timm.create_model(name, pretrained=checkpoint is None)
    except Exception as error:  # whatever timm or huggingface_hub raise: keep their words
        raise HeatmapError(
            f"could not load {name} from the Hugging Face cache or hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no message'}); download it once with network "
            "access, pass --checkpoint FILE, or use --model demo"
        ) from error
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        check_fits(model, state, str(checkpoint), name)
        model.load_state_dict(state)
    return model
