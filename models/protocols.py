"""What an adapter provides: the seams between a model library and the math.

A model is one or more **towers** plus a **score** (docs/METHODS.md,
"Notation"): a classifier is one image tower scored by a logit; a CLIP is an
image tower and a text tower scored by ``logits_per_image[i, t]``. The
driver (:mod:`heatmap.explainers.driver`) sees models only through these
protocols; everything a library does differently lives in its adapter
(``models/timm/``, ``models/open_clip/``).

The LRP view (:class:`LrpView` and the activations it reads) is declared here
too: it is the structure of a model as the LRP pass sees it, filled in by
each adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeGuard, Union, runtime_checkable

import torch

if TYPE_CHECKING:
    from PIL import Image

TowerKind = Literal["image", "text"]
Box = tuple[float, float, float, float]


@runtime_checkable
class ProbabilitiesOfItems(Protocol):
    """A fused capture's probabilities, computed when read: also one block's for some items of the batch alone."""

    def of_items(self, position: int, items: slice) -> torch.Tensor:
        """The ``position``-th block's probabilities of ``items`` of the batch."""
        ...


class AttentionCapture(Protocol):
    """Each block's attention probabilities as explicit tensors, recorded during a forward pass."""

    fused: bool  # the blocks keep their fused kernel: attention_probs are computed again when read, no grad

    @property
    def attention_probs(self) -> Sequence[torch.Tensor]:
        """One ``[B, H, N, N]`` per block; raises when a block exposed none."""
        ...

    @property
    def block_outputs(self) -> list[torch.Tensor]:
        """Each block's output tokens ``[B, N, D]`` from ``track_from`` on, in the graph.

        Read only for a tower with a block read-out (``Tower.block_readout_problem`` None).
        """
        ...

    def tracked(self) -> list[torch.Tensor]:
        """What the gradients are taken of, for the blocks from ``track_from`` on: their probabilities (eager
        attention) or their attention outputs (fused attention); :meth:`probability_gradient` turns each
        gradient into ``dA_l``."""
        ...

    def probability_gradient(self, position: int, grad: torch.Tensor, items: slice = slice(None)) -> torch.Tensor:
        """``dA_l`` ``[B, H, N, N]`` from the gradient of :meth:`tracked`'s ``position``-th tensor (``grad``: that
        of ``items`` of the batch alone)."""
        ...

    def tracked_blocks(self) -> list[torch.Tensor]:
        """Those of :meth:`tracked` that belong to :attr:`block_outputs`, in order (an attention-pool head, the
        last layer, has no output tokens of its own)."""
        ...


@runtime_checkable
class Tower(Protocol):
    """One stack of attention blocks and how its tokens are laid out."""

    kind: TowerKind
    name: str  # the model's name, for messages

    @property
    def num_blocks(self) -> int: ...

    @property
    def num_prefix_tokens(self) -> int:
        """P: the tokens before the patches (class, distillation, register tokens); 0 for text."""
        ...

    @property
    def class_token(self) -> int | None:
        """The pooled class token's position, or None (mean pooling, text)."""
        ...

    def attention_capture(self, track_from: int | None,
                          fused: bool = False) -> AbstractContextManager[AttentionCapture]:
        """Expose every block's probabilities for the duration of a ``with``; restore the model on exit.

        Args:
            track_from: the first block whose probabilities get gradients (the
                start layer), or None when no gradient is taken.
            fused: keep the fused attention kernel where the tower can (each
                block's probabilities recomputed from its q and k; see
                ``heatmap.models.capture.FusedRecorder``); eager attention where it cannot.
        """
        ...

    def block_readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the model's head makes of a block's output tokens ``[B, N, D]``: ``[B, C]``.

        The intermediate read-out LeGrad differentiates (docs/METHODS.md,
        "legrad"): a classifier's logits ``head(norm(pool(x)))``; a CLIP image
        tower's unit embedding ``ln_post(mean of all tokens) @ proj``, normalised.
        """
        ...

    def block_readout_problem(self) -> str | None:
        """Why :meth:`block_readout` cannot be read for this tower, or None."""
        ...

    def lrp_view(self) -> LrpView:
        """The structure the LRP pass reads.

        Raises:
            UnsupportedModelError: naming the first operation the LRP rules do not cover.
        """
        ...


@dataclass(frozen=True)
class Grid:
    """An image tower's read-out: the patch tokens after P prefix tokens, as a ``gh x gw`` grid."""

    num_prefix_tokens: int
    height: int
    width: int


@dataclass(frozen=True)
class Spans:
    """A text tower's read-out: per text, the tokens ``[start, stop)`` between start and end-of-text."""

    spans: list[tuple[int, int]]


@dataclass
class TowerScores:
    """One tower's side of a scored forward pass.

    Attributes:
        tower: the tower.
        objectives: ``[K]``: the k-th scalar whose gradient explains target k
            of every item of this tower (scores summed over items: nothing in a
            tower mixes items, so each item gets its own gradient).
        lrp_targets: per objective, where the LRP pass starts (``LrpView.start``):
            class indices ``[items]`` (``"logit"``) or ``[items, E]``, the
            score's gradient with respect to the unit embedding (``"embedding"``).
        query: ``[items, N]``, the query-row weights of each item (docs/METHODS.md).
        readout: where the map is read from the query row.
        readout_weights: per objective, ``[items, C]``: the weights whose dot
            product with :meth:`Tower.block_readout` is the objective's score
            read from a block (the one-hot of the target class; a CLIP image's
            unit text embedding); None for a tower without a block read-out.
    """

    tower: Tower
    objectives: torch.Tensor
    lrp_targets: Sequence[torch.Tensor]
    query: torch.Tensor
    readout: Union[Grid, Spans]
    readout_weights: Sequence[torch.Tensor] | None = None


@dataclass
class Scored:
    """A scored forward pass of B images against K targets.

    Attributes:
        scores: ``[B, K]``: the target logits (classifier) or ``logits_per_image`` (CLIP).
        targets: ``[B, K]``: the class index (classifier) or text index (CLIP) of each score.
        labels: ``[B][K]``: class names (or None) or texts.
        towers: the image tower's side, then the text tower's (CLIP).
        word_pieces: CLIP: per text, its word pieces between start and end-of-text.
        probabilities: classifiers: ``[B, K]``, each target's softmax probability over all classes.
        class_ranks: classifiers: ``[B, K]``, how many classes score higher than the target (0: the top class).
        classes: classifiers: how many classes the model has.
    """

    scores: torch.Tensor
    targets: torch.Tensor
    labels: list[list[str | None]]
    towers: list[TowerScores]
    word_pieces: list[list[str]] | None = None
    probabilities: torch.Tensor | None = None
    class_ranks: torch.Tensor | None = None
    classes: int | None = None


# Adapter, its two kinds and Tower are runtime-checkable: ``isinstance`` says whether an object has every
# member (Python 3.11 reads each property to tell, so it is no check of what the members return).
@runtime_checkable
class Adapter(Protocol):
    """A loaded model, seen through the seams the driver, the pipeline and the evaluation use.

    Attributes:
        name: how the user named the model (messages, manifests).
        model: the library's model, in eval mode.
        labels: class names by index (a classifier's), or None.
        transform: the model's own eval image transform, a PIL picture ->
            ``[3, H, W]`` float32, normalised, on the CPU. A torchvision
            ``Compose`` of it steps (or one step) whose last step is
            ``Normalize``: overlays read the crop box from its geometric
            steps (:func:`heatmap.models.geometry.crop_box`), and
            ``heatmap eval`` runs it without that last step to perturb pixels
            before the normalisation (:func:`heatmap.evaluation.data.split_normalisation`).
    """

    name: str
    model: torch.nn.Module
    labels: list[str] | None
    transform: Callable[[Image.Image], torch.Tensor]

    @property
    def towers(self) -> Sequence[Tower]:
        """The image tower, then (CLIP) the text tower."""
        ...

    @property
    def device(self) -> torch.device:
        """The device of the model's weights; inputs are moved there."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights; inputs are cast to it."""
        ...

    def converted(self, dtype: torch.dtype) -> Adapter:
        """This adapter when its model is in ``dtype`` already, else one over a converted copy."""
        ...

    def preprocess(self, pictures: Sequence[Image.Image]) -> tuple[torch.Tensor, list[Box]]:
        """The model's own eval transform: ``[B, 3, H, W]`` on its device and dtype, and each crop box."""
        ...

    def label(self, index: int) -> str | None:
        """The class name of class ``index``, or None (no names, an index out of range, a CLIP)."""
        ...


@runtime_checkable
class ClassifierAdapter(Adapter, Protocol):
    """A classifier: one image tower, the score of image i for class c is ``logits[i, c]``."""

    def class_index(self, target: str) -> int:
        """A target given as an index or a class name -> the class index (UsageError otherwise)."""
        ...

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C]``: the pre-softmax logits of preprocessed images ``[B, 3, H, W]`` (on the model's device and
        dtype), in the model's dtype. ``heatmap eval`` scores perturbed copies with it."""
        ...

    def score(self, images: torch.Tensor, targets: torch.Tensor | None, top_k: int) -> Scored:
        """Forward pass and the scores of the given targets ``[B, K]`` (None: the ``top_k`` highest)."""
        ...


@runtime_checkable
class ImageTextAdapter(Adapter, Protocol):
    """A CLIP: an image and a text tower, the score of image i for text t is ``logits_per_image[i, t]``.

    Attributes:
        independent_texts: the model scores each image-text pair on its own
            (SigLIP's ``sigmoid``) rather than as a softmax over the texts (CLIP).
    """

    independent_texts: bool

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``LongTensor [T, L]`` on the model's device: the texts as the text tower reads them (L its context)."""
        ...

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]``: each preprocessed image's unit embedding (norm 1), in the model's dtype."""
        ...

    def text_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, E]``: each text's unit embedding (norm 1) from :meth:`tokenize`'s tokens, in the model's dtype."""
        ...

    def score(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """``logits_per_image [B, T]`` of unit embeddings ``[B, E]`` and ``[T, E]``: ``s * cos (+ b)``.

        ``heatmap eval`` scores perturbed copies with it, the texts embedded once.
        """
        ...

    def score_texts(self, images: torch.Tensor, texts: Sequence[str]) -> Scored:
        """Forward pass of both towers (once each) and every image-text score."""
        ...

    def truncated(self, texts: Sequence[str]) -> list[bool]:
        """Per text, whether it is longer than the model's context (the tokenizer cuts it; the manifest says so)."""
        ...


def is_classifier(adapter: Adapter) -> TypeGuard[ClassifierAdapter]:
    """Whether ``adapter`` is a classifier: one (image) tower."""
    return len(adapter.towers) == 1


def is_image_text(adapter: Adapter) -> TypeGuard[ImageTextAdapter]:
    """Whether ``adapter`` is a CLIP: an image and a text tower."""
    return len(adapter.towers) > 1


# -- the LRP view ------------------------------------------------------------------


@dataclass
class BlockWeights:
    """One pre-norm block's Linear weights (``[out, in]``, the model's own tensors) and head layout."""

    qkv: torch.Tensor  # [3 D', D]: q, k, v of all heads
    proj: torch.Tensor  # [D, D']
    fc1: torch.Tensor  # [M, D]
    fc2: torch.Tensor  # [D, M]
    num_heads: int


@dataclass
class BlockActivations:
    """What the rules read in one block, as the forward pass computed it (in the model's dtype).

    Shapes: ``[B, N, D]`` unless noted; ``D'`` is the attention width, ``M`` the MLP width.
    """

    block_input: torch.Tensor  # x: the skip operand of the first residual add
    attn_input: torch.Tensor  # norm1(x): the input of the qkv projection
    qkv: torch.Tensor  # [B, N, 3 D'], q k v of all heads (unscaled)
    proj_input: torch.Tensor  # [B, N, D'], the merged heads A V
    attn_branch: torch.Tensor  # the branch operand of the first add
    mid: torch.Tensor  # x after the first add: the skip operand of the second
    mlp_input: torch.Tensor  # norm2(mid): the input of fc1
    fc2_input: torch.Tensor  # [B, N, M]
    mlp_branch: torch.Tensor  # the branch operand of the second add

    @property
    def output(self) -> torch.Tensor:
        """The block's output tokens (the second add)."""
        return self.mid + self.mlp_branch


@dataclass
class HeadActivations:
    """The top of the network: pooling and the final Linear.

    Attributes:
        pooled: ``[B, D]``, the input of the final Linear.
        output: ``[B, C]``, its output (logits, or the CLIP embedding), bias included.
        token_index: token pooling: ``[B]``, the pooled token of each item.
        selected: token pooling: ``[B, D]``, that token's value where it is
            selected (the input of the authors' ``IndexSelect`` rule).
        pooled_tokens: mean pooling: ``[B, N', D]``, the averaged tokens.
        pooled_from: mean pooling: the position of the first averaged token.
    """

    pooled: torch.Tensor
    output: torch.Tensor
    token_index: torch.Tensor | None = None
    selected: torch.Tensor | None = None
    pooled_tokens: torch.Tensor | None = None
    pooled_from: int = 0


@dataclass
class EmbeddingActivations:
    """Below the first block: the patch embedding and the position-embedding add (docs/METHODS.md, full-lrp).

    Attributes:
        image: ``[B, 3, H, W]``, the normalised image the patch convolution reads.
        patches: ``[B, G, D]``, the patch embeddings (the convolution's output, row-major).
        embedded: ``[B, N, D]``, prefix tokens and patches after the position
            embedding is added: the sum the add rule divides by.
    """

    image: torch.Tensor
    patches: torch.Tensor
    embedded: torch.Tensor


@dataclass
class Activations:
    """Everything the LRP pass reads, from one forward pass.

    Attributes:
        first_block: the lowest block recorded; the pass stops at its input.
        blocks: per block from ``first_block`` on.
        head: the pooling and the final Linear.
        embedding: below the first block, when the view has a patch embedding
            and the capture started at block 0; else None.
    """

    first_block: int
    blocks: list[BlockActivations]
    head: HeadActivations
    embedding: EmbeddingActivations | None = None


class ActivationRecorder(Protocol):
    """Records, during the forward pass being explained, the activations the LRP rules read."""

    def __enter__(self) -> ActivationRecorder: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def activations(self) -> Activations: ...


@dataclass(frozen=True)
class PatchEmbedding:
    """The patch embedding as the pixel-level pass sees it: one convolution with stride = kernel.

    Attributes:
        weight: ``[D, 3, ph, pw]`` (its bias is ignored, as the rules ignore every bias).
        stride: ``(ph, pw)``.
    """

    weight: torch.Tensor
    stride: tuple[int, int]


@dataclass
class LrpView:
    """A model (one tower) as the LRP pass sees it.

    Attributes:
        blocks: every block's weights, in forward order.
        head_weight: the final Linear's weight ``[C, D]`` (classifier head, or
            CLIP's projection), None when there is none (identity).
        pooling: ``"token"`` (one token per item) or ``"mean"`` (z-rule over the averaged tokens).
        start: ``"logit"``: the one-hot of the target class (docs/METHODS.md);
            ``"embedding"``: CLIP's ``R_e = e * (s / ||e||) * t_hat``.
        capture: ``first_block -> ActivationRecorder`` for this model.
        embedding: the patch embedding, for a pass down to the pixels; None
            when the model's is not one the rules cover (``embedding_problem`` says why).
        embedding_problem: why there is no ``embedding``, or None.
    """

    blocks: list[BlockWeights]
    head_weight: torch.Tensor | None
    pooling: Literal["token", "mean"]
    start: Literal["logit", "embedding"]
    capture: Callable[[int], ActivationRecorder]
    embedding: PatchEmbedding | None = None
    embedding_problem: str | None = None
