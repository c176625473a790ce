"""The shipped demo CLIP: an open_clip ``CLIP`` trained contrastively on the shapes world.

A small ViT image tower (96 px images, 8 px patches, a 12 x 12 grid plus a
class token) and a small causal text tower, both open_clip's own classes, so
the open_clip adapter handles it exactly like a downloaded CLIP. It knows
captions such as ``"a red circle"`` (any colour of ``shapes_world.COLORS``
with any shape of ``shapes_world.SHAPES``) and is trained by
``scripts/train_demo_clip.py``, which also writes ``clip.json`` and
``clip.safetensors`` next to this file.

The tokenizer is open_clip's ``SimpleTokenizer`` (the byte-pair vocabulary
that ships inside the open_clip package, so nothing is downloaded) with a
short context. The token-embedding matrix keeps its full 49408 rows so the
model is an ordinary open_clip ``CLIP``, but only the rows of tokens the
training captions use are stored (``token_embedding.used_ids`` and
``token_embedding.used_rows``); every other row is zero, as it was during
training, so a word the model never saw is embedded as the zero vector.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from heatmap.errors import HeatmapError

if TYPE_CHECKING:
    import open_clip
    from PIL import Image

__all__ = ["DEMO_DIR", "USED_IDS_KEY", "USED_ROWS_KEY", "build_demo_clip", "create_demo_clip",
           "create_demo_clip_with_transform", "expand_token_embedding"]

DEMO_DIR = Path(__file__).resolve().parent
USED_IDS_KEY = "token_embedding.used_ids"
USED_ROWS_KEY = "token_embedding.used_rows"
_EMBEDDING_KEY = "token_embedding.weight"
# The keys of clip.json that open_clip.CLIP takes as arguments; the others
# (name, preprocess, training, metrics) are ours.
_MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")


def expand_token_embedding(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Replace the stored used rows by the full, zero-filled token-embedding matrix.

    Args:
        state: a state dict with ``token_embedding.used_ids`` (int64 ``[K]``)
            and ``token_embedding.used_rows`` (float ``[K, width]``).
        vocab_size: the number of rows of the full matrix.

    Returns:
        A new state dict with ``token_embedding.weight`` (``[vocab_size,
        width]``) instead of the two compact keys.

    Raises:
        HeatmapError: if the compact keys are missing or do not fit.
    """
    if USED_IDS_KEY not in state or USED_ROWS_KEY not in state:
        raise HeatmapError(f"the demo CLIP weights lack {USED_IDS_KEY!r}/{USED_ROWS_KEY!r}; "
                           "write them with scripts/train_demo_clip.py")
    used_ids, used_rows = state[USED_IDS_KEY].long(), state[USED_ROWS_KEY]
    if used_ids.ndim != 1 or used_rows.shape[0] != used_ids.shape[0] or int(used_ids.max()) >= vocab_size:
        raise HeatmapError("the demo CLIP token ids and rows do not fit together; "
                           "write them again with scripts/train_demo_clip.py")
    expanded = {key: value for key, value in state.items() if key not in (USED_IDS_KEY, USED_ROWS_KEY)}
    weight = used_rows.new_zeros(vocab_size, used_rows.shape[1])
    weight[used_ids] = used_rows
    expanded[_EMBEDDING_KEY] = weight
    return expanded


def build_demo_clip(config: dict[str, Any]) -> open_clip.CLIP:
    """An untrained ``open_clip.CLIP`` of ``config`` (the contents of ``clip.json``).

    With ``"patch_embed": "conv_stem"``, the image tower's patch projection
    ``conv1`` is the demo classifier's convolutional stem: the same 8x8 grid,
    so open_clip's forward and the explainers are unchanged.
    """
    import open_clip

    model = open_clip.CLIP(**{key: config[key] for key in _MODEL_KEYS})
    if config.get("patch_embed") == "conv_stem":
        from heatmap.demo.conv_stem import conv_stem

        model.visual.conv1 = conv_stem(3, config["vision_cfg"]["width"])
    return model


def create_demo_clip(
    folder: str | Path | None = None,
) -> tuple[open_clip.CLIP, Callable[[list[str]], torch.Tensor], dict[str, Any]]:
    """Build the shipped demo CLIP with its tokenizer and configuration.

    Args:
        folder: where ``clip.json`` and ``clip.safetensors`` are; None = the
            ones shipped in this package.

    Returns:
        ``(model, tokenizer, config)``: the ``open_clip.CLIP`` in eval mode on
        the CPU in float32; the tokenizer, a callable from a list of T texts
        to a LongTensor ``[T, context_length]`` (start token, BPE tokens,
        end token, zero padding); and the dict read from ``clip.json``.
        ``config["preprocess"]`` holds ``mean``, ``std`` and ``image_size``:
        build the image transform with
        ``open_clip.image_transform(image_size, is_train=False, mean=mean,
        std=std)``, which turns a PIL image into a ``[3, 96, 96]`` tensor.

    Raises:
        HeatmapError: if the files are missing or do not fit the model.
    """
    from open_clip.tokenizer import SimpleTokenizer

    from heatmap.models.checkpoints import check_fits, read_state_dict

    folder = Path(folder) if folder is not None else DEMO_DIR
    config_path, weights_path = folder / "clip.json", folder / "clip.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise HeatmapError(f"the demo CLIP is missing from this installation ({path}); "
                               "reinstall vit-heatmap or run scripts/train_demo_clip.py")
    config = json.loads(config_path.read_text())
    model = build_demo_clip(config)
    state = expand_token_embedding(read_state_dict(weights_path), config["text_cfg"]["vocab_size"])
    check_fits(model, state, str(weights_path), "the demo CLIP")
    model.load_state_dict(state, strict=True)
    model.eval()
    tokenizer = SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    return model, tokenizer, config


def create_demo_clip_with_transform(folder: str | Path | None = None) -> tuple[
        open_clip.CLIP, Callable[[list[str]], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """The shipped demo CLIP (or the one in ``folder``), its tokenizer and its eval transform."""
    import open_clip

    model, tokenizer, config = create_demo_clip(folder)
    settings = config["preprocess"]
    preprocess = open_clip.image_transform(settings["image_size"], is_train=False,
                                           mean=settings["mean"], std=settings["std"])
    return model, tokenizer, preprocess
