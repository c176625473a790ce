"""Which method explains which architecture: docs/SUPPORT.md, measured, not written by hand.

    python scripts/support_matrix.py [--output docs/SUPPORT.md] [--only SUBSTRING ...] [--json FILE]
                                     [--update JSON]

Every architecture registered in timm's ``vision_transformer``, ``deit``,
``eva`` and ``naflexvit`` modules and every open_clip config whose image tower
is a transformer (open_clip's own VisionTransformer, or a timm trunk from one
of those four modules) is built with seeded random weights (nothing is
downloaded; a 10-class head on every timm model) and two blocks per tower
(full width; at most 8x8 patches, see ``GRID``), then every
method of ``heatmap.methods()`` explains one fixed random image (seed 0) of
the model's preprocessing size: a classifier for each of its 10 classes, a
CLIP against four texts. Each cell is one of:

- ``✔``: a finite map of the right shape (``[1, K, gh, gw]``, or
  ``[1, K, H, W]`` for a pixel-level method), not all of its K maps constant;
- ``✘ n``: refused with ``heatmap.errors.HeatmapError`` (reason n in the footnotes);
- ``💥 n``: anything else: another exception, a NaN, every map constant, a wrong shape.

``--only`` keeps the models whose name contains any of the substrings (a
partial run: the totals then cover those models only). ``--json FILE`` also
writes every cell; ``--update JSON`` reruns the ``--only`` models of an
earlier run's JSON and keeps its other rows (the header says so). Progress, one line per model, goes to stderr.
``tests/test_support_matrix.py`` reruns a few rows against the committed file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TIMM_MODULES = ("vision_transformer", "deit", "eva", "naflexvit")
OPEN_CLIP = "open_clip"
DEPTH = 2
CLASSES = 10  # a classifier head for every timm model: many are published as feature models (num_classes=0)
TOP_K = CLASSES  # a classifier's targets: every class (one class's map may be constant by a method's own math)
# A wider grid is built at GRID x GRID patches (img_size = GRID * patch): the cost grows with the token count
# squared, and what a method supports depends on the model's modules, not on its input size.
GRID = 8
DEFAULT_DEPTH_PARAMETERS = 300_000_000
TEXTS = ["a photo of a cat", "a dog", "a red circle on grass", "two people"]
# The methods that read only attention and its gradients: no LRP rules, so they are the ones a modern
# ViT part (RoPE, attention-pool head, gated MLP) should not stop.
ATTENTION_METHODS = ("rollout", "grad-rollout", "chefer-generic", "raw-attention", "attention-gradcam", "legrad")
REASON_CHARS = 80
SHORT_NAMES = {"rollout": "roll", "grad-rollout": "g-roll", "chefer-generic": "chefer",
               "transformer-attribution": "t-attr", "raw-attention": "raw", "attention-gradcam": "gcam",
               "partial-lrp": "p-lrp", "full-lrp": "f-lrp", "legrad": "legrad"}


def method_names() -> list[str]:
    import heatmap

    return list(heatmap.methods())


def timm_targets() -> list[tuple[str, str]]:
    import timm

    return [(module, name) for module in TIMM_MODULES for name in timm.list_models(module=module)]


def transformer_trunks() -> set[str]:
    import timm

    return {name for module in TIMM_MODULES for name in timm.list_models(module=module)}


def open_clip_targets() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The open_clip configs with a transformer image tower, and the others with what their tower is."""
    import open_clip

    trunks = transformer_trunks()
    kept, skipped = [], []
    for name in open_clip.list_models():
        vision = open_clip.get_model_config(name).get("vision_cfg", {})
        trunk = vision.get("timm_model_name")
        if trunk:
            (kept if trunk in trunks else skipped).append((name, f"timm {trunk}"))
        elif isinstance(vision.get("layers"), (list, tuple)):
            skipped.append((name, "ModifiedResNet"))
        else:
            kept.append((name, "VisionTransformer"))
    return [(OPEN_CLIP, name) for name, _ in kept], skipped


def capped_size(own: int, patch: int | None) -> int | None:
    """The side to build at when the model's own grid is wider than ``GRID`` patches, else None."""
    if patch is None or own // patch <= GRID:
        return None
    return GRID * patch


def name_patch(name: str) -> int | None:
    found = re.search(r"patch(\d+)", name)
    return int(found.group(1)) if found else None


def size_kwargs(size: int | None) -> dict[str, Any]:
    # timm's data config reads pretrained_cfg, which img_size alone leaves at the old size.
    return {} if size is None else {"img_size": size, "pretrained_cfg_overlay": {"input_size": (3, size, size)}}


def build_timm(name: str) -> tuple[Any, str]:
    """The model at the smallest depth it accepts from 2 up, and a note when that or its size are not its own."""
    import timm
    from timm.models import get_pretrained_cfg

    own = int(max(get_pretrained_cfg(name).input_size[1:]))
    size = capped_size(own, name_patch(name))
    errors = []
    per_block = per_block_kwargs(name)
    for depth in (DEPTH, 3, 4):
        for kwargs in ([size_kwargs(size), {}] if size else [{}]):
            kwargs = {**kwargs, **{key: value[:depth] for key, value in per_block.items()}}
            try:
                model = timm.create_model(name, pretrained=False, depth=depth, num_classes=CLASSES, **kwargs)
            except Exception as error:  # noqa: BLE001 - timm's own refusals differ per architecture
                errors.append(f"depth={depth}: {type(error).__name__}: {error}")
                continue
            notes = [f"own size {own} px: img_size refused"] if size and not kwargs else []
            if depth != DEPTH:
                notes.append(f"depth {depth}: depth={DEPTH} refused")
            return model, "; ".join(notes)
    # Only the default depth is left: counted on the meta device first, built only when that is cheap (a
    # multi-billion-parameter default runs this machine out of memory).
    with torch.device("meta"):
        count = sum(parameter.numel() for parameter in timm.create_model(name, pretrained=False).parameters())
    if count > DEFAULT_DEPTH_PARAMETERS:
        raise RuntimeError(f"not built: timm refused depth {DEPTH} to 4, and its default depth has "
                           f"{count / 1e6:.0f}M parameters ({errors[0][len(f'depth={DEPTH}: '):]})")
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **size_kwargs(size))
    return model, f"default depth: depth={DEPTH} refused ({errors[0][len(f'depth={DEPTH}: '):][:REASON_CHARS]})"


def per_block_kwargs(name: str) -> dict[str, tuple[Any, ...]]:
    """Settings a model gives per block (Sapiens2's ``num_kv_heads``: full attention first and last, grouped-query
    attention between), as a few blocks with both kinds: the first block's, then the middle one's."""
    import timm

    with torch.device("meta"):
        blocks = getattr(timm.create_model(name, pretrained=False), "blocks", [])
    kv_heads = [getattr(getattr(block, "attn", None), "num_kv_heads", None) for block in blocks]
    if len(set(kv_heads)) <= 1 or None in kv_heads:
        return {}
    middle = kv_heads[len(kv_heads) // 2]
    return {"num_kv_heads": (kv_heads[0], middle, *[middle] * 2)}


@contextlib.contextmanager
def timm_tower(depth: int, size: int | None) -> Iterator[None]:
    """open_clip's timm towers take no depth or size from the config: passed to ``timm.create_model`` meanwhile."""
    import timm

    original = timm.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("depth", depth)
        for key, value in size_kwargs(size).items():
            kwargs.setdefault(key, value)
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def build_open_clip(name: str) -> tuple[Any, str]:
    import open_clip

    config = copy.deepcopy(open_clip.get_model_config(name))
    vision, text = config["vision_cfg"], config["text_cfg"]
    notes = []
    own = vision.get("image_size", 224)
    own = int(max(own) if isinstance(own, (list, tuple)) else own)
    trunk = vision.get("timm_model_name")
    size = capped_size(own, name_patch(trunk) if trunk else vision.get("patch_size", 16))
    if size:
        vision["image_size"] = size
    if not trunk:
        vision["layers"] = DEPTH
    if "hf_model_name" in text:
        # A transformers text tower comes from the Hub's config (not at hand offline): left as configured.
        notes.append(f"text tower {text['hf_model_name']} from transformers, default depth")
    else:
        text["layers"] = DEPTH
    try:
        with timm_tower(DEPTH, size):
            model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False,
                                           vision_cfg=vision, text_cfg=text)
    except OSError as error:
        if "hf_model_name" not in text:
            raise
        raise OSError(f"its transformers text tower {text['hf_model_name']} needs its config from the Hugging Face "
                      f"Hub, not in the local cache ({type(error).__name__})") from error
    return model.eval(), "; ".join(notes)


def build(module: str, name: str) -> tuple[Any, str]:
    torch.manual_seed(0)
    if module == OPEN_CLIP:
        model, note = build_open_clip(name)
    else:
        model, note = build_timm(name)
    redraw(model)
    return model.eval(), note


def redraw(model: Any) -> None:
    """Every weight drawn from one seeded normal scaled by its fan-in, every vector (biases, norm weights, layer
    scales, tokens) around its own kind of value.

    A model's own initialisation is for training: zero heads, layer scales of
    1e-5, zero biases make the gradients of a random copy vanish, and a map of
    exact zeros says nothing about whether a method supports the model.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 0:  # logit scale and bias: the model's own
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32).to(parameter.dtype)
            if parameter.dim() >= 2 and not name.endswith(("token", "pos_embed", "latent", "embedding")):
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)
            elif name.endswith(("weight", "gamma", "gamma_1", "gamma_2", "scale")) and parameter.dim() == 1:
                parameter.copy_(1 + 0.1 * noise)  # norms and layer scales stay near the identity
            else:
                parameter.copy_(0.1 * noise if parameter.dim() == 1 else noise)


def tokenizer(name: str, model: Any, folder: Path) -> Any:
    """open_clip's tokenizer of ``name``; for a tokenizer on the Hugging Face Hub (not reachable here), a stand-in
    with the same special-token layout written to ``folder``, its ids within the model's vocabulary."""
    import open_clip

    text = open_clip.get_model_config(name).get("text_cfg", {})
    if "hf_tokenizer_name" not in text:
        return open_clip.get_tokenizer(name)
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for sentence in TEXTS for word in sentence.split()})
    specials = ["<pad>", "</s>", "<unk>"]
    vocabulary = {piece: index for index, piece in enumerate(specials + words)}
    stand_in = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    stand_in.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    stand_in.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=stand_in, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=model.context_length)


def patch_size(model: Any) -> tuple[int, int]:
    """The patch size, read from the library's own modules."""
    visual = getattr(model, "visual", model)
    visual = getattr(visual, "trunk", visual)
    for owner in (visual, getattr(visual, "patch_embed", None), getattr(visual, "embeds", None)):
        size = getattr(owner, "patch_size", None)
        if size is not None:
            return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    conv = visual.conv1
    return int(conv.kernel_size[0]), int(conv.kernel_size[1])


def input_size(adapter: Any) -> tuple[int, int]:
    """``(H, W)`` the adapter's own preprocessing makes of a picture."""
    from PIL import Image

    tensor, _ = adapter.preprocess([Image.new("RGB", (320, 240))])
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def refusal_reason(message: str, name: str, method: str) -> str:
    """The message without the model's name, the list of what works and the method's name."""
    reason = message.split("; methods that do work")[0]
    reason = reason.replace(f", so it is not supported for {method}", "")
    head, sep, rest = reason.partition(": ")
    if sep and name in head:
        reason = rest
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 1] + "…"


def crash_reason(error: BaseException, limit: int = REASON_CHARS) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_map(maps: torch.Tensor, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a map, or None."""
    if tuple(maps.shape) != shape:
        return f"wrong shape {list(maps.shape)}, expected {list(shape)}"
    if not torch.isfinite(maps).all():
        return "map not finite"
    flat = maps.flatten(2)
    constant = flat.amax(-1) == flat.amin(-1)
    # One target's map may be constant by the method's own math (attention-gradcam's clamp empties a map whose
    # weighted attention is negative everywhere); every target's constant is what a broken capture looks like.
    if constant.all():
        return f"constant maps (every value {flat[0, 0, 0].item():.3g}) for all {flat.shape[1]} targets"
    return None


def explain_cell(adapter: Any, method: str, images: torch.Tensor, shapes: dict[str, tuple[int, ...]],
                 clip: bool, name: str) -> dict[str, str]:
    from heatmap.errors import HeatmapError
    from heatmap.explainers.driver import Driver
    from heatmap.explainers.registry import methods

    def run(driver: Any) -> Any:
        return driver.explain_texts(images, TEXTS) if clip else driver.explain(images, top_k=TOP_K)

    try:
        result = run(Driver(adapter, method))
        problem = check_map(result.maps, shapes[methods()[method].resolution])
        if problem and problem.startswith("constant"):
            return constant_cell(adapter, method, run, shapes[methods()[method].resolution], problem)
    except HeatmapError as error:
        return {"status": "refused", "reason": refusal_reason(str(error), name, method),
                "error": type(error).__name__}
    except Exception as error:  # noqa: BLE001 - every other exception is a crash cell, never the end of the run
        return {"status": "crash", "reason": crash_reason(error)}
    return {"status": "crash", "reason": problem} if problem else {"status": "ok"}


def constant_cell(adapter: Any, method: str, run: Any, shape: tuple[int, ...], problem: str) -> dict[str, str]:
    """Every map constant in float32: why, from two more runs, or a crash when neither explains it.

    - in float64 they are not constant: what the method adds to the
      identity is below float32's resolution on this random copy (✔, marked);
    - attention-gradcam's weighted attention before its clamp is <= 0
      everywhere, for every target: the clamp empties the maps by the
      method's own math (○: ran, nothing to show).
    """
    from dataclasses import replace

    from heatmap.explainers import attention_gradcam
    from heatmap.explainers.driver import Driver

    wide = run(Driver(adapter, method, precision="float64"))
    if check_map(wide.maps, shape) is None:
        return {"status": "ok", "note": "float64"}
    if method == "attention-gradcam":
        unclamped = replace(attention_gradcam.METHOD,
                            relevance=lambda evidence, _options: attention_gradcam.weighted_attention(evidence))
        if float(run(Driver(adapter, unclamped)).maps.max()) <= 0:
            return {"status": "empty", "reason": "every target's weighted attention <= 0 everywhere: the method's "
                                                   "clamp empties its maps"}
    return {"status": "crash", "reason": problem}


def run_model(module: str, name: str, methods: list[str] | None = None) -> dict[str, Any]:
    """Build one architecture and explain one image with each method: the row of the matrix.

    Returns:
        ``{"module", "name", "note", "seconds", "built", "build_error", "cells": {method: cell}}``,
        a cell being ``{"status": "ok" | "refused" | "crash", "reason": ...}``.
    """
    from heatmap.errors import HeatmapError
    from heatmap.models import adapter_for

    methods = methods if methods is not None else method_names()
    start = time.perf_counter()
    row: dict[str, Any] = {"module": module, "name": name, "note": "", "built": False, "build_error": None,
                           "cells": {}}
    model = adapter = None
    try:
        try:
            model, row["note"] = build(module, name)
        except Exception as error:  # noqa: BLE001 - the library's failure, recorded apart from ours
            row["build_error"] = crash_reason(error, 2 * REASON_CHARS)
            return row
        row["built"] = True
        clip = module == OPEN_CLIP
        try:
            if clip:
                with tempfile.TemporaryDirectory() as folder:
                    adapter = adapter_for(model, name, processor=tokenizer(name, model, Path(folder)))
            else:
                adapter = adapter_for(model, name)
            height, width = input_size(adapter)
        except HeatmapError as error:
            cell = {"status": "refused", "reason": refusal_reason(str(error), name, ""), "error": type(error).__name__}
            row["cells"] = {method: dict(cell) for method in methods}
            return row
        except Exception as error:  # noqa: BLE001
            row["cells"] = {method: {"status": "crash", "reason": crash_reason(error)} for method in methods}
            return row
        rows, cols = patch_size(model)
        targets = len(TEXTS) if clip else TOP_K
        row["size"] = f"{height}x{width} px"
        shapes = {"tokens": (1, targets, height // rows, width // cols), "pixels": (1, targets, height, width)}
        images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        for method in methods:
            row["cells"][method] = explain_cell(adapter, method, images, shapes, clip, name)
        return row
    except Exception as error:  # noqa: BLE001 - this script's own reading of the model failed: still one row
        for method in methods:
            row["cells"].setdefault(method, {"status": "crash", "reason": crash_reason(error)})
        return row
    finally:
        row["seconds"] = round(time.perf_counter() - start, 2)
        del model, adapter
        gc.collect()


# -- the document ------------------------------------------------------------------


class Footnotes:
    """Distinct reasons, numbered in order of first use."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def number(self, reason: str) -> int:
        return self.numbers.setdefault(reason, len(self.numbers) + 1)

    def lines(self) -> list[str]:
        return [f"{number}. {reason}" for reason, number in self.numbers.items()]


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "0/0"


def module_order(rows: list[dict[str, Any]]) -> list[str]:
    return [module for module in (*TIMM_MODULES, OPEN_CLIP) if any(row["module"] == module for row in rows)]


def totals_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    built = [row for row in rows if row["built"]]
    header = "| | " + " | ".join(methods) + " | crash cells |"
    lines = [header, "|---" * (len(methods) + 2) + "|"]
    for group, members in [(module, [row for row in built if row["module"] == module])
                           for module in module_order(rows)] + [("all", built)]:
        cells = []
        for method in methods:
            explained = sum(row["cells"][method]["status"] == "ok" for row in members)
            cells.append(percent(explained, len(members)))
        crashes = sum(cell["status"] == "crash" for row in members for cell in row["cells"].values())
        label = f"timm {group}" if group in TIMM_MODULES else group
        lines.append(f"| **{label}** ({len(members)}) | " + " | ".join(cells) + f" | {crashes} |")
    return lines


def module_table(rows: list[dict[str, Any]], methods: list[str], refusals: Footnotes,
                 crashes: Footnotes) -> list[str]:
    lines = ["| architecture | " + " | ".join(SHORT_NAMES.get(method, method) for method in methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for row in rows:
        cells = []
        for method in methods:
            cell = row["cells"][method]
            if cell["status"] == "ok":
                cells.append("✔ f64" if cell.get("note") == "float64" else "✔")
            elif cell["status"] == "refused":
                cells.append(f"✘ {refusals.number(cell['reason'])}")
            elif cell["status"] == "empty":
                cells.append(f"○ {refusals.number(cell['reason'])}")
            else:
                cells.append(f"💥 {crashes.number(cell['reason'])}")
        name = f"`{row['name']}`" + (f" ({row['note']})" if row["note"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def versions() -> str:
    import open_clip
    import timm

    return f"timm {timm.__version__}, open_clip {open_clip.__version__}, torch {torch.__version__}"


def render(rows: list[dict[str, Any]], methods: list[str], skipped: list[tuple[str, str]], command: str,
           seconds: float) -> str:
    built = [row for row in rows if row["built"]]
    timm_rows = [row for row in built if row["module"] in TIMM_MODULES]
    all_six = sum(all(row["cells"][method]["status"] == "ok" for method in ATTENTION_METHODS if method in methods)
                  for row in timm_rows)
    crash_count = sum(cell["status"] == "crash" for row in built for cell in row["cells"].values())
    lines = [
        "# Support matrix: which method explains which architecture",
        "",
        f"Generated by `{command}` ({versions()}, {datetime.date.today().isoformat()}, "
        f"{seconds / 60:.1f} min on {torch.get_num_threads()} CPU thread(s)). Every model is built with seeded "
        f"random weights (each weight matrix normal / sqrt(fan-in), norms and layer scales near 1: a training "
        f"initialisation's zero heads and tiny layer scales would make gradients vanish), a {CLASSES}-class head "
        f"for the timm models, and {DEPTH} blocks per tower (full width) at its own image size or, where that is "
        f"more than {GRID} "
        f"patches wide, at {GRID} patches ({GRID} x the patch size, to keep the run short: what a method supports "
        "depends on the model's modules, not on its input size); each method explains one random image "
        f"(seed 0): a classifier for each of its {TOP_K} classes, a CLIP against {len(TEXTS)} texts (a CLIP whose "
        "tokenizer is on the Hugging Face Hub, out of reach here, reads them through a stand-in tokenizer with its "
        "special tokens' layout). "
        "✔ = finite maps of the right shape, not all of them constant (one target's map can be constant by the "
        "method's own math: attention-gradcam's clamp empties a map whose weighted attention is negative "
        "everywhere); ✔ f64 = every float32 map constant, the float64 maps not (what the method adds to the "
        "identity is below float32's resolution on this random copy); ○ n = ran, every map empty by the "
        "method's own math (reason n, checked on the unclamped values; not counted as explained); ✘ n = refused "
        "(reason n below); 💥 n = crash (another exception, a NaN, every map constant for no reason found, a wrong "
        "shape).",
        "",
        "## Totals",
        "",
        "Explained / architectures built, per module and method:",
        "",
        *totals_table(rows, methods),
        "",
        f"**Crash cells: {crash_count}.** timm architectures explained by all of "
        f"{', '.join(ATTENTION_METHODS)}: **{percent(all_six, len(timm_rows))}**.",
        "",
    ]
    refusals, crashes = Footnotes(), Footnotes()
    for module in module_order(rows):
        members = [row for row in built if row["module"] == module]
        title = f"timm `{module}`" if module in TIMM_MODULES else "open_clip"
        lines += [f"## {title} ({len(members)})", ""]
        if members:
            lines += module_table(members, methods, refusals, crashes) + [""]
    lines += ["## Refusals (✘) and empty maps (○)", "", *refusals.lines(), "",
              "## Crashes (💥)", "", *(crashes.lines() or ["none"]), ""]
    failed = [row for row in rows if not row["built"]]
    lines += [f"## Could not be built ({len(failed)})", "",
              *([f"- `{row['name']}` ({row['module']}): {row['build_error']}" for row in failed] or ["none"]), ""]
    if skipped:
        lines += [f"## Skipped ({len(skipped)})", "",
                  f"{len(skipped)} open_clip configs whose image tower is not one of those transformers: "
                  + ", ".join(f"`{name}` ({tower})" for name, tower in skipped) + ".", ""]
    return "\n".join(lines)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Per architecture, per method column, the cell's symbol (``✔``, ``✘ n``, ``💥 n``) as written in SUPPORT.md."""
    header: list[str] = []
    table: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("| architecture |"):
            header = [cell.strip() for cell in line.strip("|").split("|")][1:]
        elif header and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            name = re.match(r"`([^`]+)`", cells[0])
            if name:
                table[name.group(1)] = dict(zip(header, cells[1:], strict=False))
        elif not line.startswith("|"):
            header = []
    return table


def parse_footnotes(text: str, section: str) -> dict[int, str]:
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return {int(number): reason for number, reason in re.findall(r"^(\d+)\. (.*)$", body, re.MULTILINE)}


def documented_versions(text: str) -> str | None:
    found = re.search(r"\((timm [^,]+, open_clip [^,]+, torch [^,]+),", text)
    return found.group(1) if found else None


def write_json(path: Path, rows: list[dict[str, Any]], methods: list[str], skipped: list[tuple[str, str]],
               seconds: float, reruns: list[str] | None = None) -> None:
    path.write_text(json.dumps({"versions": versions(), "seconds": round(seconds, 1), "methods": methods,
                                "rows": rows, "skipped": skipped, "reruns": reruns or []}, indent=1,
                               ensure_ascii=False), encoding="utf-8")


def merged(earlier: list[dict[str, Any]], rerun: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier rows in their order, each rerun one in its place (a new one at the end)."""
    fresh = {(row["module"], row["name"]): row for row in rerun}  # a timm name may also be an open_clip one
    return [fresh.pop((row["module"], row["name"]), row) for row in earlier] + list(fresh.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/SUPPORT.md"))
    parser.add_argument("--only", nargs="+", default=None, metavar="SUBSTRING")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--update", type=Path, default=None, metavar="JSON",
                        help="an earlier run's --json: rerun only the --only models, keep every other row")
    args = parser.parse_args(argv)
    if args.update and not args.only:
        parser.error("--update reruns the models --only names")
    # Random weights only: a config the Hub would have to send fails at once instead of after retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns once per model that no weights were loaded
    # OMP_NUM_THREADS, when set, wins: two runs side by side must not fight over the same cores.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))
    methods = method_names()
    clip_targets, skipped = open_clip_targets()
    targets = timm_targets() + clip_targets
    if args.only:
        targets = [target for target in targets if any(part in target[1] for part in args.only)]
        skipped = [entry for entry in skipped if any(part in entry[0] for part in args.only)]
    # read before the run: --json may name the same file, rewritten after every model
    earlier = json.loads(args.update.read_text(encoding="utf-8")) if args.update else None
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for index, (module, name) in enumerate(targets, 1):
        row = run_model(module, name, methods)
        rows.append(row)
        summary = (f"build failed: {row['build_error']}" if not row["built"] else
                   " ".join(f"{cell['status']}" for cell in row["cells"].values()))
        if args.json:  # after every model, so a run stopped halfway still leaves its rows
            write_json(args.json, merged(earlier["rows"], rows) if earlier else rows, methods,
                       [(name, tower) for name, tower in earlier["skipped"]] if earlier else skipped,
                       time.perf_counter() - started + (earlier["seconds"] if earlier else 0),
                       earlier.get("reruns") if earlier else None)
        print(f"[{index}/{len(targets)}] {module} {name} {row['seconds']:.1f}s {summary}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    command = "python scripts/support_matrix.py" + (" --only " + " ".join(args.only) if args.only else "")
    if earlier:  # the earlier run's rows, those rerun now in their place; its time plus this run's
        order = {target: index for index, target in enumerate(timm_targets() + clip_targets)}
        rows = sorted(merged(earlier["rows"], rows), key=lambda row: order.get((row["module"], row["name"]), -1))
        skipped = [(name, tower) for name, tower in earlier["skipped"]]
        seconds += earlier["seconds"]
        reruns = [*earlier.get("reruns", []), f"{len(targets)} rows rerun by `{command} --update"]
        command = "python scripts/support_matrix.py`, then " + "`, then ".join(reruns)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rows, methods, skipped, command, seconds), encoding="utf-8")
    if args.json:
        write_json(args.json, rows, methods, skipped, seconds, reruns if earlier else None)
    print(f"{len(rows)} models in {seconds / 60:.1f} min; wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
