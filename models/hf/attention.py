"""The attention probe for transformers models: eager attention whose probabilities are a tensor.

transformers computes attention in a free function chosen by the config's
``attn_implementation`` (SDPA by default, or flash attention), which never
forms the probabilities. Its own registry of attention functions
(``AttentionInterface``) is the seam: :data:`PROBE` names a function that
computes eager attention and hands each layer's probabilities to whoever
asked for that module's. For the duration of a probe the model's configs
name :data:`PROBE`; on exit, also on error, every config gets back the
implementation it had, so the model is left as it was.

The causal mask of a text tower is built by transformers' mask registry
(``AttentionMaskInterface``), keyed by the same name: :data:`PROBE` is
registered there with the eager mask, so masks come as eager attention gets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError

PROBE = "vit_heatmap_probe"

# id(attention module) -> what to do with its probabilities (returns the tensor the forward pass goes on with)
Route = Callable[[torch.Tensor], torch.Tensor]
_ROUTES: dict[int, Route] = {}
# id(attention module) -> its attention through a fused kernel: (q, k, v, additive bias, scale) -> [B, H, N, d]
FusedRoute = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
_FUSED_ROUTES: dict[int, FusedRoute] = {}
# called with (module, query, key, value) on every call while set: how the structure trace sees q, k, v
Observer = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None]
_OBSERVERS: list[Observer] = []

# Extra inputs some attention functions take; the probe computes plain softmax attention, so none may be set.
_UNSUPPORTED_KWARGS = ("position_bias", "softcap", "sliding_window", "s_aux", "sinks")


def probe_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention, ``softmax((Q * scaling) K^T + mask) V``, in the dtype of ``query``.

    The softmax runs in the computation's own dtype (float64 stays float64;
    eager attention's float32 softmax is the same for float32). The
    probabilities go through the module's route, when one is open.

    Args:
        module: the attention module calling (its route is looked up by identity).
        query, key, value: ``[B, H, N, d]``.
        attention_mask: additive ``[B, 1, N, S]`` (or boolean, True = attend), or None.
        scaling: the factor of the scores; None = ``d ** -0.5``.
        dropout: must be 0 (eval mode).

    A module with a fused route (:func:`attention_probe`'s ``fused``) gets
    its attention from that route instead, and no probabilities are returned.

    Returns:
        ``([B, N, H, d], [B, H, N, S])``: the merged-heads-ready output and the probabilities.
    """
    used = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if used:
        raise UnsupportedModelError(f"{type(module).__name__}: attention with {', '.join(used)} is not plain "
                                    "softmax attention; no attention map can be made")
    if dropout:
        raise RuntimeError("the attention probe runs in eval mode only (attention dropout is on)")
    if key.shape[1] != query.shape[1]:
        raise UnsupportedModelError(f"{type(module).__name__}: grouped-query attention ({query.shape[1]} query heads, "
                                    f"{key.shape[1]} key heads) is not supported")
    for observe in _OBSERVERS:
        observe(module, query, key, value)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    fused = _FUSED_ROUTES.get(id(module))
    if fused is not None:
        bias = None
        if attention_mask is not None:
            mask = attention_mask[..., : key.shape[-2]]
            bias = (torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min) if mask.dtype == torch.bool else mask.to(query.dtype))
        return fused(query, key, value, bias, scale).transpose(1, 2).contiguous(), None
    # q scaled BEFORE the product, as timm and PyTorch's MultiheadAttention compute it (transformers' eager
    # scales after): the same weights then give the same probabilities in every library, bit for bit
    scores = torch.matmul(query * scale, key.transpose(2, 3))
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        scores = (scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool
                  else scores + mask.to(scores.dtype))
    probs = scores.softmax(dim=-1)
    route = _ROUTES.get(id(module))
    if route is not None:
        probs = route(probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def _register() -> None:
    """Add :data:`PROBE` to transformers' attention and mask registries (once; registering again is harmless)."""
    from transformers import AttentionInterface

    try:
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:  # pragma: no cover - guarded by the supported range in pyproject.toml
        raise UnsupportedModelError("this transformers release has no attention-mask registry; "
                                    "vit-heatmap needs transformers >= 4.57") from None
    AttentionInterface.register(PROBE, probe_attention)
    AttentionMaskInterface.register(PROBE, eager_mask)


def model_configs(model: nn.Module) -> list[Any]:
    """Every config whose ``attn_implementation`` the model's modules read, parents before sub-configs."""
    found: list[Any] = []
    seen: set[int] = set()
    pending = [module.config for module in model.modules() if hasattr(module, "config")
               and hasattr(module.config, "_attn_implementation")]
    while pending:
        config = pending.pop(0)
        if id(config) in seen:
            continue
        seen.add(id(config))
        found.append(config)
        pending.extend(sub for key in getattr(config, "sub_configs", {}) if (sub := getattr(config, key, None))
                       is not None)
    return found


@contextmanager
def attention_probe(model: nn.Module, routes: dict[nn.Module, Route],
                    fused: dict[nn.Module, FusedRoute] | None = None) -> Iterator[None]:
    """Within: ``model`` computes eager attention through :func:`probe_attention`, each module's probabilities
    through its route (or, for a module in ``fused``, its attention through that route); on exit every config's
    attention implementation is restored, also on error.

    Args:
        model: the whole transformers model (every config it holds is switched).
        routes: attention module -> what to do with its probabilities.
        fused: attention module -> its attention through a fused kernel.
    """
    _register()
    fused = fused or {}
    configs = model_configs(model)
    saved = [config._attn_implementation for config in configs]
    overlap = [module for module in [*routes, *fused] if id(module) in _ROUTES or id(module) in _FUSED_ROUTES]
    if overlap:
        raise RuntimeError("an attention probe is already open on this model")
    try:
        for config in configs:
            config._attn_implementation = PROBE
        _ROUTES.update({id(module): route for module, route in routes.items()})
        _FUSED_ROUTES.update({id(module): route for module, route in fused.items()})
        yield
    finally:
        for module in routes:
            _ROUTES.pop(id(module), None)
        for module in fused:
            _FUSED_ROUTES.pop(id(module), None)
        # parents first: a parent's setter also sets its sub-configs, which get their own value after
        for config, implementation in zip(configs, saved, strict=True):
            config._attn_implementation = implementation


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Within: ``observer`` sees the query, key and value of every call of the probe."""
    _OBSERVERS.append(observer)
    try:
        yield
    finally:
        _OBSERVERS.remove(observer)


def layer_routes(layers: Sequence[nn.Module], route: Callable[[int, torch.Tensor], torch.Tensor]
                 ) -> dict[nn.Module, Route]:
    """A route for every submodule of each layer, so whichever of them calls the attention function is found."""
    def layer_route(index: int) -> Route:
        return lambda probs: route(index, probs)

    return {module: layer_route(index) for index, layer in enumerate(layers) for module in layer.modules()}
