"""The one source of truth per method: its name, options, what it reads, which towers it explains.

Every method file of this package calls :func:`register` once, at import,
with a :class:`Method`. The CLI (its commands, ``clip --method`` and the
help), the refusals ("methods that do work for this model: ...") and the
tests' parametrisations all iterate :func:`methods`.

Nothing here imports torch, and neither does a method file at import time
(each imports the math it needs when it first runs), so ``heatmap --help``
lists every method and option without loading torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from heatmap.errors import UsageError

if TYPE_CHECKING:
    import torch

# The modules of this package that are machinery, not methods.
MACHINERY = frozenset({"registry", "driver", "aggregation", "lrp"})

TowerKind = Literal["image", "text"]
LrpRules = Literal["transformer-attribution", "original"]
# "score": dA_l of the model's score y; "block read-outs": of each block's own read-out y_l (LeGrad)
GradientsOf = Literal["score", "block read-outs"]
# "tokens": the query row over the patch grid; "pixels": a map at the model's input size (full-lrp)
Resolution = Literal["tokens", "pixels"]


@dataclass(frozen=True)
class Option:
    """One option of a method.

    Attributes:
        name: the Python name (``head_fusion``); the CLI spells it ``--head-fusion``.
        default: the default value; its type is the option's type.
        help: one line for ``--help``.
        choices: the allowed values, or None.
        check: ``value -> problem or None``, for values that are not choices
            (a ratio in [0, 1), say); the problem is said to the user.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, method: str, value: Any) -> None:
        """Raise :class:`UsageError` naming the fix when ``value`` is not allowed."""
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{method}: unknown {self.name.replace('_', ' ')} {value!r}; "
                             f"use one of {', '.join(self.choices)}")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise UsageError(f"{method}: {problem}")


@dataclass(frozen=True)
class Evidence:
    """What a method reads of one tower for one target (all ``[B, ...]``, one row per item).

    Attributes:
        attention_probs: per block from the start layer on, ``A_l`` ``[B, H, N, N]``.
        attention_grads: per block from the start layer on, ``dA_l`` (of the
            score, or of the block's own read-out: ``Method.gradients_of``),
            or, for a method with ``Method.reduce_gradient``, what that made
            of it; None unless the method reads gradients.
        attention_relevance: per block from the start layer on, the LRP
            relevance ``RA_l`` of the attention; None unless the method reads LRP.
        query: ``[B, N]`` weights whose product with ``R`` is the query row
            (docs/METHODS.md, "Notation").
        class_token: the position of the pooled class token, or None.
        columns: ``[B, N]``, 1 on the tokens the map is read from (the patch
            tokens ``P:`` of an image; a text's tokens between start and
            end-of-text), 0 elsewhere.
        pixel_relevance: ``[B, 3, H, W]``, the LRP relevance of the normalised
            image; None unless the method is pixel-level.
    """

    attention_probs: Sequence[torch.Tensor]
    attention_grads: Sequence[torch.Tensor] | None
    attention_relevance: Sequence[torch.Tensor] | None
    query: torch.Tensor
    class_token: int | None
    columns: torch.Tensor
    pixel_relevance: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    """One method, as registered by its file.

    Attributes:
        name: the CLI's name (``chefer-generic``).
        summary: one line: what it is, whose paper.
        description: what it computes, in a sentence (the command's help).
        options: its options; ``start_layer`` (if any) chooses the first block.
        relevance: ``(evidence, options) -> [B, N]``, the relevance of every
            token seen from the query row (the map before the read-out), in
            the evidence's dtype; a pixel-level method returns ``[B, H, W]``.
        reads_gradients: whether it reads ``dA_l``.
        gradients_of: what the gradients are of (see :data:`GradientsOf`).
        lrp_rules: the LRP rule set it reads ``RA_l`` from, or None.
        resolution: ``"tokens"`` or ``"pixels"`` (the LRP pass goes on to the image).
        class_agnostic: the same map for every target (computed once per tower).
        clip_defaults: option defaults that differ for CLIP models.
        towers: the towers it explains: the image tower always; a CLIP's
            text tower outside it gets no token relevance.
        default_start_layer: the first block when it has no ``start_layer`` option.
        reduce_gradient: ``(A_l, dA_l, query) -> what relevance reads of block l``
            (a head-reduced ``[B, N, N]``, say), for a method that never needs
            the whole ``dA_l``: the driver calls it as each block's gradient
            arrives in the backward pass, so the ``[B, H, N, N]`` gradients
            are never all kept; ``Evidence.attention_grads`` holds what it returns.
    """

    name: str
    summary: str
    description: str
    options: tuple[Option, ...]
    relevance: Callable[[Evidence, Mapping[str, Any]], torch.Tensor]
    reads_gradients: bool = True
    gradients_of: GradientsOf = "score"
    lrp_rules: LrpRules | None = None
    resolution: Resolution = "tokens"
    class_agnostic: bool = False
    clip_defaults: Mapping[str, Any] = field(default_factory=dict)
    towers: frozenset[TowerKind] = frozenset({"image", "text"})
    default_start_layer: int = 0
    reduce_gradient: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}

    def resolve_options(self, given: Mapping[str, Any], clip: bool = False) -> dict[str, Any]:
        """The defaults (CLIP's for a CLIP model) updated with ``given``, checked; no model needed.

        Raises:
            UsageError: for an unknown option or a value it does not allow.
        """
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise UsageError(f"{self.name} has no option {unknown}; its options are {sorted(self.defaults)}")
        resolved = {**self.defaults, **(self.clip_defaults if clip else {}), **given}
        for option in self.options:
            option.validate(self.name, resolved[option.name])
        return resolved

    def start_layer(self, options: Mapping[str, Any]) -> int:
        """The first block, as given (may be negative, counted like a Python index)."""
        return int(options.get("start_layer", self.default_start_layer))


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (each method file calls this once)."""
    known = _REGISTRY.get(method.name)
    # the same file imported again (a test runner that forgets modules) replaces its own entry
    if known is not None and known.relevance.__module__ != method.relevance.__module__:
        raise RuntimeError(f"two methods are named {method.name!r}")
    _REGISTRY[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every method, by name, in alphabetical order (each method file of this package imported once)."""
    package = importlib.import_module("heatmap.explainers")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in MACHINERY and not module.name.startswith("_"):
            importlib.import_module(f"heatmap.explainers.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def method(name: str) -> Method:
    """The method called ``name``.

    Raises:
        UsageError: naming the methods there are.
    """
    known = methods()
    if name not in known:
        raise UsageError(f"unknown method {name!r}; use one of {', '.join(known)}")
    return known[name]


def check_start_layer(value: Any) -> str | None:
    """Start layers are integers; the range is checked against the model's blocks."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"start layer {value!r} is not an integer"


def start_layer_option(default: int = 0) -> Option:
    """The ``start_layer`` option most methods share."""
    return Option("start_layer", default, "First block to use, counted like a Python index (-1 = the last block only).",
                  check=check_start_layer)


def check_discard_ratio(ratio: Any) -> str | None:
    """Discard ratios live in [0, 1)."""
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0:
        return None
    return f"discard ratio {ratio} is out of range; use a value in [0, 1)"


def discard_ratio_option(default: float) -> Option:
    """The ``discard_ratio`` option of the rollouts (docs/METHODS.md, rollout step 2)."""
    return Option("discard_ratio", default, "Fraction r of the smallest fused-attention entries set to 0, in [0, 1).",
                  check=check_discard_ratio)


def resolve_options(method: Method, given: Mapping[str, Any], clip: bool = False) -> dict[str, Any]:
    """The method's options as used: defaults (CLIP's for a CLIP), ``given``, checked; no model needed.

    For a CLIP, ``text_start_layer`` (default: the start layer) sets the text
    tower's first block when the method has a start layer and explains text.
    """
    given = dict(given)
    text_start = given.pop("text_start_layer", None) if clip else None
    resolved = method.resolve_options(given, clip=clip)
    explains_text = "text" in method.towers
    if clip and explains_text and "start_layer" in resolved:
        resolved["text_start_layer"] = resolved["start_layer"] if text_start is None else int(text_start)
    elif text_start is not None and not explains_text:
        raise UsageError(f"{method.name} explains the image tower only, so it has no text start layer")
    elif text_start is not None:
        raise UsageError(f"{method.name} has no start layer, so no text start layer either")
    return resolved
