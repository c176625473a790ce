"""The shipped demo CLIP as a Hugging Face transformers ``CLIPModel``: the same weights, offline.

For trying the transformers path without a download, and for checking it end
to end on a trained model: every open_clip tensor goes to its transformers
place, the demo's convolutional patch stem takes ``patch_embedding``'s place
(it gives the same ``[B, 128, 12, 12]`` grid), and the tokenizer is CLIP's own
byte-pair vocabulary, written as transformers' ``vocab.json`` and
``merges.txt`` from the merges file inside the open_clip package.

    model, processor = demo_clip_as_transformers()
    heatmap.explain(model, ["scene.png"], "chefer-generic", texts=["a red circle"], processor=processor)

Needs the ``hf`` extra (``pip install "vit-heatmap[hf]"``).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

# open_clip's vocabulary: 256 bytes, the same with an end-of-word mark, the merges, start and end of text
_MERGES = 49152 - 256 - 2


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """CLIP's byte-pair tokenizer as ``vocab.json`` and ``merges.txt`` in ``folder`` (from open_clip's own file)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(merges_file).read().decode("utf-8").split("\n")[1:_MERGES + 1]
    pieces = list(bytes_to_unicode().values())
    vocab = pieces + [piece + "</w>" for piece in pieces] + ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({piece: index for index, piece in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


class _Stem(torch.nn.Sequential):
    """The demo's convolutional stem where transformers expects one convolution (it reads ``.weight``'s dtype)."""

    @property
    def weight(self) -> torch.Tensor:
        first = self[0]
        assert isinstance(first, torch.nn.Conv2d)  # the stem starts with a convolution
        return first.weight


def _block(source: dict[str, torch.Tensor], prefix: str, layer: str, target: dict[str, torch.Tensor]) -> None:
    """One open_clip residual block's tensors into a transformers CLIP encoder layer's names."""
    for kind in ("weight", "bias"):
        for role, tensor in zip(("q", "k", "v"), source[f"{prefix}attn.in_proj_{kind}"].chunk(3), strict=True):
            target[f"{layer}self_attn.{role}_proj.{kind}"] = tensor
        for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            target[f"{layer}{ours}.{kind}"] = source[f"{prefix}{theirs}.{kind}"]


def demo_clip_as_transformers() -> tuple[Any, Any]:
    """The demo CLIP as ``(CLIPModel, CLIPProcessor)``, in eval mode on the CPU in float32."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from heatmap.demo.clip import create_demo_clip

    source_model, _, config = create_demo_clip()
    vision, text = config["vision_cfg"], config["text_cfg"]
    activation = "quick_gelu" if config["quick_gelu"] else "gelu"
    shared = dict(hidden_act=activation, layer_norm_eps=1e-5)
    model = CLIPModel(CLIPConfig(
        projection_dim=config["embed_dim"],
        vision_config=dict(image_size=vision["image_size"], patch_size=vision["patch_size"],
                           hidden_size=vision["width"], num_hidden_layers=vision["layers"],
                           num_attention_heads=vision["width"] // vision["head_width"],
                           intermediate_size=int(vision["width"] * vision["mlp_ratio"]), **shared),
        text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["width"], num_hidden_layers=text["layers"],
                         num_attention_heads=text["heads"], intermediate_size=4 * text["width"],
                         max_position_embeddings=text["context_length"], eos_token_id=49407, bos_token_id=49406,
                         pad_token_id=49407, **shared)))
    model.vision_model.embeddings.patch_embedding = _Stem(*source_model.visual.conv1)  # the stem, same grid
    source = source_model.state_dict()
    target = {f"vision_model.embeddings.patch_embedding.{key.removeprefix('visual.conv1.')}": value
              for key, value in source.items() if key.startswith("visual.conv1.")}
    target.update({
        "vision_model.embeddings.class_embedding": source["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": source["visual.positional_embedding"],
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
        "logit_scale": source["logit_scale"]})
    for i in range(vision["layers"]):
        _block(source, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", target)
    for i in range(text["layers"]):
        _block(source, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", target)
    missing, unexpected = model.load_state_dict(target, strict=False)
    if unexpected or any("position_ids" not in key for key in missing):
        raise RuntimeError(f"the demo CLIP does not fit CLIPModel: missing {missing}, unexpected {unexpected}")
    settings = config["preprocess"]
    size = settings["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=settings["mean"], image_std=settings["std"])
    with tempfile.TemporaryDirectory() as folder:
        files = write_clip_tokenizer_files(folder)
        tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"),  # positional: renamed in 5
                                  model_max_length=text["context_length"])
    model.name_or_path = "demo-clip (transformers)"
    # transformers leaves these two untyped
    return model.eval(), CLIPProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor, tokenizer=tokenizer)
