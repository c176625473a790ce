"""Building open_clip CLIP models: by name and tag (cache first), or from a local file."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from heatmap.errors import HeatmapError, UsageError
from heatmap.models.checkpoints import cached_hub_file, check_fits, download_hub_file, read_state_dict
from heatmap.models.open_clip.text import tokenizer_problem

DEFAULT_CLIP = ("ViT-B-32", "openai")
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Within: open_clip's warnings (it logs through the root logger) are not shown."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def create_clip(name: str, pretrained: str | Path | None) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, preprocess)`` for an open_clip name and a tag or local file.

    Args:
        name: an open_clip model name (``ViT-B-32``, ``ViT-B-16-quickgelu``, ...).
        pretrained: a pretrained tag of that model (``openai``, ``laion2b_s34b_b79k``)
            or the path of a local checkpoint file for its architecture.
    """
    import open_clip

    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `open_clip.list_models()` lists them"
        raise UsageError(f"unknown CLIP model {name!r}{hint}")
    tokenizer = _tokenizer(open_clip, name)
    problem = tokenizer_problem(tokenizer)
    if problem:
        raise HeatmapError(f"{name}: {problem}; only those two are supported")
    if pretrained is not None and Path(pretrained).is_file():
        with quiet_open_clip():  # "no pretrained weights loaded": the local file's are, just below
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        state = read_state_dict(pretrained)
        check_fits(model, state, str(pretrained), name)
        model.load_state_dict(state)
        return model, tokenizer, preprocess
    tag = str(pretrained or "")
    config = open_clip.get_pretrained_cfg(name, tag) if tag else {}
    if not config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise UsageError(f"{name} has no pretrained tag {tag!r} (tags: {tags}); "
                         "or pass --pretrained PATH to a local checkpoint file")
    repo_id = config.get("hf_hub", "").strip("/")
    if not repo_id:
        raise HeatmapError(f"{name} {tag}: weights are only published at a plain URL, not on the Hugging Face "
                           "hub; download the file and pass --pretrained PATH")
    weights = (cached_hub_file(repo_id, _HUB_WEIGHT_FILES)
               or download_hub_file(repo_id, _HUB_WEIGHT_FILES, f"{name} ({tag})", local_option="--pretrained PATH"))
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=weights, image_mean=config.get("mean"), image_std=config.get("std"))
    return model, tokenizer, preprocess


def _tokenizer(open_clip: Any, name: str) -> Any:
    """open_clip's tokenizer of ``name``; one on the Hugging Face Hub is read from the cache first."""
    hub_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    try:
        return open_clip.get_tokenizer(name)
    except OSError as error:  # transformers could neither find the tokenizer in the cache nor download it
        if not hub_name:
            raise
        raise HeatmapError(f"{name}: its tokenizer {hub_name} is neither in the Hugging Face cache nor downloadable "
                           f"({type(error).__name__}); download it once with network access "
                           f"(`hf download {hub_name}`), then HF_HUB_OFFLINE=1 runs without") from error
