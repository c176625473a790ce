"""The one explanation run, for every model kind.

Probe the towers, one forward pass, the target scores, the gradients each
method reads (``torch.autograd.grad`` with the attention tensors as
``inputs``, never weight gradients), the LRP pass when the method reads it,
the method's math per tower and target, the maps.

A classifier is one tower scored by a logit; a CLIP is an image tower and a
text tower scored by ``logits_per_image[i, t]``. For B images and K targets
each tower's scores are summed over its items (nothing in a tower mixes
items, so each item gets its own gradient): K backward passes for the image
tower (one per target or text), and for a CLIP's text tower B more (one per
image). The precision rule lives here (docs/METHODS.md, "Precision"): the
explanation computes in the wider of float32 and the model's dtype, or in the
dtype asked for, on a converted copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from heatmap.errors import UnsupportedModelError, UsageError
from heatmap.explainers.aggregation import resolve_start_layer
from heatmap.explainers.lrp import lrp_pass
from heatmap.explainers.registry import Evidence, Method, methods, resolve_options
from heatmap.explainers.registry import method as find_method
from heatmap.models.protocols import (
    ActivationRecorder,
    Adapter,
    AttentionCapture,
    Box,
    Grid,
    LrpView,
    ProbabilitiesOfItems,
    Scored,
    Spans,
    Tower,
    TowerScores,
    is_classifier,
    is_image_text,
)
from heatmap.outputs import OVERLAY_SIZE


@dataclass
class Explanation:
    """What a classifier explanation returns.

    Attributes:
        maps: raw maps of docs/METHODS.md on the CPU, in the dtype the
            explanation computed in, ``[B, K, gh, gw]`` for K targets per image
            (``[B, gh, gw]`` after :meth:`squeeze`); a pixel-level method's
            are ``[B, K, H, W]`` at the model's input size.
        targets: class indices ``[B, K]`` (int64).
        scores: the target scores ``y`` (pre-softmax logits) ``[B, K]``.
        labels: per image, per target, the class name or None (per image
            after :meth:`squeeze`).
        method: the method's name.
        options: the method's options as used (start layer as given).
        probabilities: each target's softmax probability over all classes ``[B, K]``.
        class_ranks: how many classes score higher than each target ``[B, K]`` (0: the top class).
        pictures, boxes, sources: the pictures explained, the crop box the model saw of each, and their paths
            (when given as paths): what ``overlay``, ``panel``, ``show`` and ``save`` draw from.
        model, classes: the model's name and its number of classes.
    """

    maps: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    labels: list[Any]
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    probabilities: torch.Tensor | None = None
    class_ranks: torch.Tensor | None = None
    pictures: list[Any] | None = field(default=None, repr=False)
    boxes: list[Box] | None = field(default=None, repr=False)
    sources: list[str] | None = field(default=None, repr=False)
    model: str | None = None
    classes: int | None = None

    def __repr__(self) -> str:
        return (f"Explanation(method={self.method!r}, maps={list(self.maps.shape)} {str(self.maps.dtype)[6:]}, "
                f"targets={self.targets.tolist()!r:.60}, labels={self.labels!r:.80})")

    def overlay(self, i: int = 0, k: int = 0, colormap: str = "jet", alpha: float = 0.5,
                max_side: int = OVERLAY_SIZE) -> Image.Image:
        """Image ``i``'s map (its ``k``-th target) over the picture, placed as the CLI places it (the crop box).

        Only for pictures given as paths or PIL images (a tensor has no picture).
        """
        from heatmap.results import overlay_picture

        maps = self.maps if self.maps.dim() == 4 else self.maps[:, None]
        return overlay_picture(self.pictures, self.boxes, maps, i, k, colormap, alpha, max_side)

    def panel(self, i: int = 0, k: int = 0, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """Image ``i``'s labelled panel for its ``k``-th target, as the CLI's ``--panel`` draws it."""
        from heatmap.results import panel_picture

        return panel_picture(self, i, k, colormap, alpha)

    def save(self, folder: str | Path, colormap: str = "jet", alpha: float = 0.5, overlay_size: int = OVERLAY_SIZE,
             panel: bool = False) -> list[dict[str, Any]]:
        """Write the CLI's files (``.npy``, overlay, panel when asked) and manifest lines into ``folder``;
        return the manifest entries (``heatmap compare`` and ``heatmap report`` read the folder)."""
        from heatmap.results import save

        return save(self, Path(folder), colormap, alpha, overlay_size, panel)

    def show(self, colormap: str = "jet", alpha: float = 0.5) -> Any:
        """Every overlay in one matplotlib figure, titled with its class and score (for notebooks); returns it."""
        from heatmap.results import show_grid

        maps = self.maps if self.maps.dim() == 4 else self.maps[:, None]
        labels = [row if isinstance(row, list) else [row] for row in self.labels]
        targets = self.targets.reshape(maps.shape[0], -1).tolist()
        scores = self.scores.reshape(maps.shape[0], -1).tolist()
        titles = [[f"{labels[i][k] or targets[i][k]}  logit {scores[i][k]:.2f}" for k in range(maps.shape[1])]
                  for i in range(maps.shape[0])]
        return show_grid(self.pictures, self.boxes, maps, titles, f"{self.method}", colormap, alpha)

    def squeeze(self) -> Explanation:
        """Drop the target dimension when there is one target per image."""
        if self.maps.dim() != 4 or self.maps.shape[1] != 1:
            raise ValueError("squeeze() needs exactly one target per image")
        return replace(self, maps=self.maps[:, 0], targets=self.targets[:, 0], scores=self.scores[:, 0],
                       labels=[row[0] for row in self.labels],
                       probabilities=None if self.probabilities is None else self.probabilities[:, 0],
                       class_ranks=None if self.class_ranks is None else self.class_ranks[:, 0])


@dataclass
class ClipExplanation:
    """What a CLIP explanation returns.

    Attributes:
        maps: raw image maps on the CPU, in the explanation's dtype, ``[B, T, gh, gw]``
            (``[B, T, H, W]`` for a pixel-level method).
        logits: ``logits_per_image`` ``[B, T]``.
        texts: the T texts.
        word_pieces: per text, its word pieces between start and end-of-text.
        text_relevance: per image, per text, the relevance of each word piece
            (``[len(word_pieces[t])]``); it depends on the image too. None
            for a method that explains the image tower only.
        method: the method's name.
        options: the options as used (start layers as given).
        independent_texts: the model scores each image-text pair on its own
            (SigLIP's sigmoid) rather than as a softmax over the texts (CLIP).
    """

    maps: torch.Tensor
    logits: torch.Tensor
    texts: list[str]
    word_pieces: list[list[str]]
    text_relevance: list[list[torch.Tensor]] | None
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    independent_texts: bool = False
    pictures: list[Any] | None = field(default=None, repr=False)
    boxes: list[Box] | None = field(default=None, repr=False)
    sources: list[str] | None = field(default=None, repr=False)
    model: str | None = None

    def __repr__(self) -> str:
        return (f"ClipExplanation(method={self.method!r}, maps={list(self.maps.shape)} {str(self.maps.dtype)[6:]}, "
                f"texts={self.texts!r:.80})")

    def overlay(self, i: int = 0, t: int = 0, colormap: str = "jet", alpha: float = 0.5,
                max_side: int = OVERLAY_SIZE) -> Image.Image:
        """Image ``i``'s map for text ``t`` over the picture, placed as the CLI places it (the crop box)."""
        from heatmap.results import overlay_picture

        return overlay_picture(self.pictures, self.boxes, self.maps, i, t, colormap, alpha, max_side)

    def panel(self, i: int = 0, t: int = 0, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        """Image ``i``'s labelled panel for text ``t`` (with the token strip), as the CLI's ``--panel`` draws it."""
        from heatmap.results import panel_picture

        return panel_picture(self, i, t, colormap, alpha)

    def save(self, folder: str | Path, colormap: str = "jet", alpha: float = 0.5, overlay_size: int = OVERLAY_SIZE,
             panel: bool = False) -> list[dict[str, Any]]:
        """Write the CLI's files (``.npy``, overlay, token strip, panel when asked) and manifest lines into
        ``folder``; return the manifest entries."""
        from heatmap.results import save

        return save(self, Path(folder), colormap, alpha, overlay_size, panel)

    def show(self, colormap: str = "jet", alpha: float = 0.5) -> Any:
        """Every overlay in one matplotlib figure, titled with its text and probability (for notebooks)."""
        from heatmap.results import show_grid

        probabilities = self.probabilities.tolist()
        titles = [[f"{text}  p {probabilities[i][t]:.2f}" for t, text in enumerate(self.texts)]
                  for i in range(self.maps.shape[0])]
        return show_grid(self.pictures, self.boxes, self.maps, titles, self.method, colormap, alpha)

    @property
    def probabilities(self) -> torch.Tensor:
        """``[B, T]``, as the model reads its logits: a softmax over the given texts (CLIP), or each pair's
        sigmoid (SigLIP)."""
        return self.logits.sigmoid() if self.independent_texts else self.logits.softmax(dim=1)


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().cpu()


PRECISIONS = ("auto", "float32", "float64")
ATTENTION = ("auto", "eager")


def compute_dtype(model_dtype: torch.dtype, precision: str = "auto") -> torch.dtype:
    """The dtype an explanation computes in (docs/METHODS.md, "Precision").

    ``auto``: the wider of float32 and the model's dtype, so a float16 or
    bfloat16 model is explained in float32 and a float64 model in float64;
    ``float32`` / ``float64``: that dtype, whatever the model's.
    """
    if precision == "auto":
        return torch.promote_types(model_dtype, torch.float32) if model_dtype.is_floating_point else torch.float32
    if precision == "float32":
        return torch.float32
    if precision == "float64":
        return torch.float64
    raise UsageError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


@contextmanager
def full_float32() -> Iterator[None]:
    """Within: CUDA matmuls and convolutions in full float32, not TF32; the settings restored after.

    PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) by default,
    which moves maps of a GPU run away from a CPU run of the same model far
    more than float32 round-off does; explanations run without it.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Within: no parameter of ``model`` requires grad, so a backward pass stops at the attention."""
    params = [p for p in model.parameters() if p.requires_grad]
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def explained_towers(method: Method, adapter: Adapter, clip: bool) -> list[Tower]:
    """The towers ``method`` explains: the image tower, and a CLIP's text tower when the method explains text."""
    towers = adapter.towers if clip else adapter.towers[:1]
    return [tower for tower in towers if tower.kind in method.towers]


def unsupported(method: Method, adapter: Adapter, clip: bool) -> str | None:
    """Why ``method`` cannot explain ``adapter``'s model, or None; no forward pass is run."""
    if "image" not in method.towers:
        return f"{adapter.name}: {method.name} does not explain image towers"
    for tower in explained_towers(method, adapter, clip):
        if method.gradients_of == "block read-outs":
            problem = tower.block_readout_problem()
            if problem:
                return f"{tower.name}: {problem}"
        if method.lrp_rules is None:
            continue
        try:
            view = tower.lrp_view()
        except UnsupportedModelError as error:
            return str(error)
        if method.resolution == "pixels" and view.embedding is None:
            return f"{tower.name}: {view.embedding_problem} is not covered by the rules down to the pixels"
    return None


def supported_towers(method: Method, adapter: Adapter, clip: bool) -> None:
    """Refuse, before any work, a model or tower ``method`` cannot explain, naming why and what works.

    Raises:
        UnsupportedModelError: for a structure the method's rules do not cover.
    """
    problem = unsupported(method, adapter, clip)
    if problem:
        working = [other.name for other in methods().values() if unsupported(other, adapter, clip) is None]
        raise UnsupportedModelError(f"{problem}, so it is not supported for {method.name}; "
                                    f"methods that do work for this model: {', '.join(working)}")


class Driver:
    """Explains images with one method on one model.

    Args:
        adapter: the model's adapter (``heatmap.models``).
        method: the method, or its name.
        precision: ``auto`` (the wider of float32 and the model's dtype),
            ``float32`` or ``float64``; when it differs from the model's dtype,
            a converted copy of the model is explained (the caller's is not changed).
        batched_backward: take each tower's gradients in one vectorised backward
            pass (``is_grads_batched``) instead of one pass per target; same numbers.
        attention: ``auto`` (the default): a method without LRP rules keeps the
            model's fused attention kernel, each block's probabilities
            recomputed from its q and k and ``dA`` taken from the gradient at
            the attention output (``heatmap.models.capture.FusedRecorder``; the
            same maps to float round-off); an LRP method, which reads the eager
            graph, and a tower that cannot (an attention-pool head) use eager
            attention. ``eager``: eager attention for every method, the reference.
        **options: the method's options (for a CLIP also ``text_start_layer``).

    Raises:
        UsageError: for an unknown method, option or value.
        UnsupportedModelError: before any work, for a model the method cannot explain.
    """

    def __init__(self, adapter: Adapter, method: Method | str, precision: str = "auto",
                 batched_backward: bool = False, attention: str = "auto", **options: Any) -> None:
        if attention not in ATTENTION:
            raise UsageError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION)}")
        self.method = method if isinstance(method, Method) else find_method(method)
        self.clip = is_image_text(adapter)
        self.options = resolve_options(self.method, options, clip=self.clip)
        # Whether the text tower's start was given, or follows the start layer (named in its errors).
        self.text_start_given = options.get("text_start_layer") is not None
        supported_towers(self.method, adapter, self.clip)
        self.adapter = adapter.converted(compute_dtype(adapter.dtype, precision))
        self.batched_backward = batched_backward
        self.fused = attention == "auto" and self.method.lrp_rules is None

    def explain(self, images: torch.Tensor, targets: torch.Tensor | Sequence[Any] | None = None,
                top_k: int = 1) -> Explanation:
        """Explain each classifier image for each of its targets.

        Args:
            images: preprocessed ``[B, 3, H, W]``; moved to the model's device and dtype.
            targets: class indices ``[B, K]`` (or ``[B]``); None = the ``top_k`` highest logits.
            top_k: how many top classes when ``targets`` is None.
        """
        adapter = self.adapter
        if not is_classifier(adapter):
            raise UsageError(f"{adapter.name} is a CLIP model: explain its images against texts")
        images = self._prepared(images)
        wanted = None if targets is None else torch.as_tensor(targets, dtype=torch.long)
        maps, scored, _ = self._run(images, lambda: adapter.score(images, wanted, top_k))
        return Explanation(maps=maps, targets=scored.targets.cpu(), scores=scored.scores.detach().cpu(),
                           labels=scored.labels, method=self.method.name, options=dict(self.options),
                           probabilities=_cpu(scored.probabilities), class_ranks=_cpu(scored.class_ranks),
                           classes=scored.classes)

    def explain_texts(self, images: torch.Tensor, texts: Sequence[str]) -> ClipExplanation:
        """Explain every image against every text (a CLIP).

        Args:
            images: preprocessed ``[B, 3, H, W]``; moved to the model's device and dtype.
            texts: T texts.
        """
        adapter = self.adapter
        if not is_image_text(adapter):
            raise UsageError(f"{adapter.name} is a classifier; texts= is for CLIP models (use target=)")
        if not texts:
            raise UsageError("give at least one text to explain the images against")
        images = self._prepared(images)
        maps, scored, text_relevance = self._run(images, lambda: adapter.score_texts(images, list(texts)))
        assert scored.word_pieces is not None
        return ClipExplanation(maps=maps, logits=scored.scores.detach().cpu(), texts=list(texts),
                               word_pieces=scored.word_pieces, text_relevance=text_relevance,
                               method=self.method.name, options=dict(self.options),
                               independent_texts=bool(adapter.independent_texts))

    # -- the run -----------------------------------------------------------------

    def _prepared(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise UsageError(f"images must be a [B, 3, H, W] tensor, got {tuple(images.shape)}")
        return images.to(device=self.adapter.device, dtype=self.adapter.dtype)

    def _start(self, tower_index: int, num_blocks: int) -> int:
        key = "text_start_layer" if tower_index == 1 else "start_layer"
        given = self.options.get(key, self.method.start_layer(self.options))
        try:
            return resolve_start_layer(int(given), num_blocks)
        except UsageError as error:
            if not self.clip:
                raise
            tower = self.adapter.towers[tower_index].kind
            if tower_index == 1 and not self.text_start_given:
                option = "--start-layer, which also sets the text tower's start unless --text-start-layer is given"
            else:
                option = "--text-start-layer" if tower_index == 1 else "--start-layer"
            raise UsageError(f"{tower} tower ({option}): {error}") from None

    def _run(self, images: torch.Tensor,
             score: Callable[[], Scored]) -> tuple[torch.Tensor, Scored, list[list[torch.Tensor]] | None]:
        """Maps ``[B, K, gh, gw]``, the scores, and (CLIP) per image, per text, the token relevance."""
        method, adapter = self.method, self.adapter
        towers = explained_towers(method, adapter, self.clip)
        starts = [self._start(index, tower.num_blocks) for index, tower in enumerate(towers)]
        views = [tower.lrp_view() if method.lrp_rules else None for tower in towers]
        with full_float32(), ExitStack() as stack:
            stack.enter_context(frozen_parameters(adapter.model))
            captures = [stack.enter_context(tower.attention_capture(start if method.reads_gradients else None,
                                                                    fused=self.fused))
                        for tower, start in zip(towers, starts, strict=False)]
            recorders = [stack.enter_context(view.capture(start)) if view else None
                         for view, start in zip(views, starts, strict=False)]
            # Also under a caller's torch.no_grad(): the gradient methods need a graph.
            with torch.set_grad_enabled(method.reads_gradients):
                scored = score()
            rows = []
            for index, side in enumerate(scored.towers[:len(towers)]):  # the image tower first
                capture = captures[index]
                # fused: computed from each block's q and k as they are read, one block at a time
                probs = capture.attention_probs if capture.fused else [p.detach() for p in capture.attention_probs]
                rows.append(self._tower_rows(side, probs, captures[index], starts[index], views[index],
                                             recorders[index], retain=index < len(towers) - 1))
        if method.resolution == "pixels":
            maps = torch.stack(rows[0], dim=1).cpu()
        else:
            maps = torch.stack([read_grid(row, scored.towers[0].readout) for row in rows[0]], dim=1).cpu()
        text_relevance: list[list[torch.Tensor]] | None = None
        if len(towers) > 1:
            spans = scored.towers[1].readout
            assert isinstance(spans, Spans)
            text_relevance = [[row[t, start:stop].cpu() for t, (start, stop) in enumerate(spans.spans)]
                              for row in rows[1]]
        return maps, scored, text_relevance

    def _tower_rows(self, side: TowerScores, probs: Sequence[torch.Tensor], capture: AttentionCapture, start: int,
                    view: LrpView | None, recorder: ActivationRecorder | None, retain: bool) -> list[torch.Tensor]:
        """The relevance row ``[items, N]`` of one tower for each of its objectives."""
        method = self.method
        count = side.objectives.shape[0]
        if method.class_agnostic and not method.reads_gradients and method.lrp_rules is None:
            row = method.relevance(Evidence(probs[start:], None, None, side.query, side.tower.class_token,
                                            read_out_columns(side.readout, side.query)), self.options)
            return [row] * count
        grads = None
        if method.reads_gradients and method.gradients_of == "block read-outs":
            grads = self._readout_gradients(side, capture, probs[start:])
        elif method.reads_gradients:
            grads = self._gradients(side, capture, probs[start:], retain)
        rows = []
        for k in range(count):
            relevance = pixels = None
            if view is not None and recorder is not None:
                with torch.no_grad():
                    passed = lrp_pass(view, recorder.activations(), probs, side.lrp_targets[k],
                                      rules=method.lrp_rules or "transformer-attribution",
                                      to_pixels=method.resolution == "pixels")
                relevance, pixels = passed.attention_relevance, passed.pixel_relevance
            evidence = Evidence(probs[start:], grads[k] if grads is not None else None, relevance, side.query,
                                side.tower.class_token, read_out_columns(side.readout, side.query), pixels)
            with torch.no_grad():
                rows.append(method.relevance(evidence, self.options))
        return rows

    def _gradients(self, side: TowerScores, capture: AttentionCapture, probs: Sequence[torch.Tensor],
                   retain: bool) -> list[list[torch.Tensor]]:
        """Per objective, the gradients ``dA_l`` of the tracked blocks' probabilities (no weight gradients), or
        what the method's ``reduce_gradient`` makes of each, formed as it arrives."""
        objectives, reduce, tracked = side.objectives, self.method.reduce_gradient, capture.tracked()
        with torch.enable_grad():  # indexing the objectives must stay in the graph, even under no_grad
            count = objectives.shape[0]
            if reduce is not None and not self.batched_backward:
                return [self._reduced_as_they_arrive(objectives[k], capture, probs, side.query,
                                                     retain or k + 1 < count) for k in range(count)]
            if self.batched_backward:
                one_hot = torch.eye(count, dtype=objectives.dtype, device=objectives.device)
                batched = torch.autograd.grad(objectives, tracked, grad_outputs=one_hot, is_grads_batched=True,
                                              retain_graph=retain)
                grads = [[grad[k] for grad in batched] for k in range(count)]
            else:
                grads = [list(torch.autograd.grad(objectives[k], tracked, retain_graph=retain or k + 1 < count))
                         for k in range(count)]
            grads = [[capture.probability_gradient(position, grad) for position, grad in enumerate(per_block)]
                     for per_block in grads]
        if reduce is None:
            return grads
        with torch.no_grad():
            return [[reduce(block, grad, side.query) for block, grad in zip(probs, per_block, strict=True)]
                    for per_block in grads]

    def _reduced_as_they_arrive(self, objective: torch.Tensor, capture: AttentionCapture,
                                probs: Sequence[torch.Tensor], query: torch.Tensor, retain: bool) -> list[torch.Tensor]:
        """One backward pass of ``objective``; each block's gradient reduced by the method in a hook as the pass
        reaches it, then dropped, so no more than one ``[B, H, N, N]`` gradient is alive at a time."""
        reduce, tracked = self.method.reduce_gradient, capture.tracked()
        assert reduce is not None
        reduced: list[torch.Tensor | None] = [None] * len(tracked)

        def keep(index: int) -> Callable[[torch.Tensor], None]:
            def hook(grad: torch.Tensor) -> None:
                with torch.no_grad():
                    reduced[index] = reduced_per_item(reduce, capture, probs, index, grad, query)
            return hook

        handles = [tensor.register_hook(keep(index))  # type: ignore[no-untyped-call]
                   for index, tensor in enumerate(tracked)]
        # The first tracked block lies behind every later one, so a pass to it reaches them all; a tracked leaf
        # (an attention-pool head's tap, heatmap.models.attention_pool) lies on no path, and is asked for by name.
        inputs = [tracked[0], *(tensor for tensor in tracked[1:] if tensor.grad_fn is None)]
        try:
            torch.autograd.grad(objective, inputs, retain_graph=retain)
        finally:
            for handle in handles:
                handle.remove()
        missing = [index for index, block in enumerate(reduced) if block is None]
        if missing:
            raise RuntimeError(f"the backward pass did not reach tracked block(s) {missing}")
        return [block for block in reduced if block is not None]

    def _readout_gradients(self, side: TowerScores, capture: AttentionCapture,
                           probs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per objective, per tracked block l, ``d y_l / d A_l`` of the block's own read-out score (or what the
        method's ``reduce_gradient`` makes of it, formed as each arrives).

        ``y_l`` is the objective's score read from block l's output tokens
        (``Tower.block_readout``, weighted by ``side.readout_weights``), summed
        over the items: nothing mixes items, so each gets its own gradient.
        """
        if side.readout_weights is None:
            raise UnsupportedModelError(f"{side.tower.name}: its {side.tower.kind} tower has no block read-out, "
                                        f"so it is not supported for {self.method.name}")
        outputs = capture.block_outputs
        if not outputs:
            raise UsageError(f"{side.tower.name}: the start layer is the attention-pool head alone, which is not one "
                             f"of {self.method.name}'s layers (its read-out runs through the head); start at -2 or "
                             "lower")
        reduce = self.method.reduce_gradient

        def gradient(readout: torch.Tensor, weights: torch.Tensor, position: int,
                     block_probs: torch.Tensor) -> torch.Tensor:
            (grad,) = torch.autograd.grad((readout * weights.to(readout)).sum(), block_probs, retain_graph=True)
            if reduce is None:
                return capture.probability_gradient(position, grad)
            with torch.no_grad():
                return reduced_per_item(reduce, capture, blocks, position, grad, side.query)

        tracked = capture.tracked_blocks()
        blocks = probs[:len(tracked)]  # not an attention-pool head's, which has no read-out of its own
        with torch.enable_grad():
            readouts = [side.tower.block_readout(tokens) for tokens in outputs]
            return [[gradient(readout, weights, position, block_probs)
                     for position, (readout, block_probs) in enumerate(zip(readouts, tracked, strict=True))]
                    for weights in side.readout_weights]


def reduced_per_item(reduce: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                     capture: AttentionCapture, probs: Sequence[torch.Tensor], position: int, grad: torch.Tensor,
                     query: torch.Tensor) -> torch.Tensor:
    """``reduce`` of the ``position``-th tracked block, one item of the batch at a time (every step is per item),
    so its ``[H, N, N]`` temporaries (and, fused, the probabilities and ``dA``) exist for one image at a time."""
    rows = []
    for item in range(grad.shape[0]):
        items = slice(item, item + 1)
        block = (probs.of_items(position, items) if isinstance(probs, ProbabilitiesOfItems)
                 else probs[position][items])
        rows.append(reduce(block, capture.probability_gradient(position, grad[items], items), query[items]))
    return torch.cat(rows)


def read_out_columns(readout: Grid | Spans, query: torch.Tensor) -> torch.Tensor:
    """``[items, N]``: 1 on the tokens a map is read from, 0 elsewhere (``Evidence.columns``)."""
    columns = torch.zeros(query.shape, dtype=torch.float64)
    if isinstance(readout, Grid):
        columns[:, readout.num_prefix_tokens:] = 1.0
    else:
        for item, (start, stop) in enumerate(readout.spans):
            columns[item, start:stop] = 1.0
    return columns


def read_grid(row: torch.Tensor, readout: Grid | Spans) -> torch.Tensor:
    """The image map: the query row over the patch tokens, as a ``[B, gh, gw]`` grid."""
    assert isinstance(readout, Grid)
    batch, tokens = row.shape
    if tokens - readout.num_prefix_tokens != readout.height * readout.width:
        raise RuntimeError(f"{tokens} tokens - {readout.num_prefix_tokens} prefix tokens != grid "
                           f"{readout.height}x{readout.width}")
    return row[:, readout.num_prefix_tokens:].reshape(batch, readout.height, readout.width)

