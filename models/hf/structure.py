"""A transformers tower's layers and each layer's parts, read from the model rather than from module names.

Module names change between transformers releases (ViT's ``attention.attention.query``
became ``attention.q_proj``; its ``encoder.layer`` became ``layers``), so nothing
here looks a name up. The layer stack is the one ``nn.ModuleList`` of the
tower with one layer per configured hidden layer. A layer's parts come from
one traced forward pass of the tower, with the attention probe open:

- q, k and v are the Linears whose outputs ARE the query, key and value the
  attention function received (compared exactly);
- the norm before attention is the first LayerNorm called, and q must read
  its output; of the other Linears, in the order they are called, the first
  is the output projection, then fc1 (which must read the second
  LayerNorm's output) and fc2;
- the layer must then be the pre-norm block the LRP rules were written for:
  ``mid = x + o(...)`` and ``out = mid + fc2(...)``, checked on the traced
  numbers. Anything else is named in the refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError
from heatmap.models.hf.attention import attention_probe, observing

# Activations the LRP rules pass relevance through unchanged (docs/METHODS.md); transformers' names.
GELU_ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python")


def layer_stack(tower: nn.Module, num_layers: int, name: str) -> nn.ModuleList:
    """The tower's attention layers: its one ``nn.ModuleList`` of ``num_layers`` modules of one type."""
    stacks = [module for module in tower.modules() if isinstance(module, nn.ModuleList) and len(module) == num_layers
              and len({type(layer) for layer in module}) == 1]
    if len(stacks) != 1:
        raise UnsupportedModelError(f"{name}: found {len(stacks)} stacks of {num_layers} layers where one was "
                                    "expected; this model's structure is not one vit-heatmap knows")
    return stacks[0]


@dataclass(frozen=True)
class LayerParts:
    """One pre-norm layer's modules, by the role they play (whatever the release names them)."""

    attention_norm: nn.LayerNorm
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    mlp_norm: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear
    num_heads: int


@dataclass
class _Call:
    module: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


def trace_layers(model: nn.Module, layers: nn.ModuleList, run: Callable[[], Any], name: str) -> list[LayerParts]:
    """Each layer's parts, from one forward pass ``run()`` of the tower (see the module docstring).

    Raises:
        UnsupportedModelError: naming the first layer whose structure is not a pre-norm block.
    """
    calls: list[list[_Call]] = [[] for _ in layers]
    layer_io: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(layers)
    handles = []

    def record_call(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                calls[index].append(_Call(module, args[0].detach(), output.detach()))
        return hook

    def record_layer(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            first = args[0] if args else kwargs.get("hidden_states")
            result = output[0] if isinstance(output, tuple) else output
            if isinstance(first, torch.Tensor) and isinstance(result, torch.Tensor):
                layer_io[index] = (first.detach(), result.detach())
        return hook

    owner = {id(module): index for index, layer in enumerate(layers) for module in layer.modules()}
    queries: list[list[tuple[nn.Module, torch.Tensor]]] = [[] for _ in layers]

    def observe(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        if id(module) in owner:
            queries[owner[id(module)]].append((module, torch.stack([query.detach(), key.detach(), value.detach()])))

    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(record_layer(index), with_kwargs=True))
            for module in layer.modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)):
                    handles.append(module.register_forward_hook(record_call(index)))
        with attention_probe(model, {}), observing(observe):
            with torch.no_grad():
                run()
    finally:
        for handle in handles:
            handle.remove()
    return [_parts(index, calls[index], queries[index], layer_io[index], name) for index in range(len(layers))]


def _heads_merged(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, d]`` -> ``[B, N, H * d]``, as a Linear computed it before the heads were split."""
    batch, heads, tokens, dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _parts(index: int, calls: list[Any], attention: list[tuple[nn.Module, torch.Tensor]],
           io: tuple[torch.Tensor, torch.Tensor] | None, name: str) -> LayerParts:
    where = f"{name}: layer {index}"
    if io is None or len(attention) != 1:
        raise UnsupportedModelError(f"{where}: {len(attention)} attention calls where one self-attention was "
                                    "expected; its structure is not covered by the LRP rules")
    _module, qkv = attention[0]
    targets = [_heads_merged(tensor) for tensor in qkv]
    found: list[nn.Linear | None] = [None, None, None]
    for call in calls:
        if isinstance(call.module, nn.Linear):
            for role, target in enumerate(targets):
                if found[role] is None and call.output.shape == target.shape and torch.equal(call.output, target):
                    found[role] = call.module
                    break
    if any(module is None for module in found):
        raise UnsupportedModelError(f"{where}: q, k and v are not plain Linear projections of the layer's tokens; "
                                    "not covered by the LRP rules")
    q, k, v = (module for module in found if module is not None)
    q_call = next(call for call in calls if call.module is q)
    norms = [call for call in calls if isinstance(call.module, nn.LayerNorm)]
    linears = [call for call in calls if isinstance(call.module, nn.Linear) and call.module not in (q, k, v)]
    if len(norms) != 2 or len(linears) != 3:
        raise UnsupportedModelError(f"{where}: {len(norms)} LayerNorms and {len(linears) + 3} Linears where a "
                                    "pre-norm block has 2 and 6; not covered by the LRP rules")
    attention_norm, mlp_norm = norms
    out, fc1, fc2 = linears
    x, output = io
    mid = mlp_norm.inputs
    checks = [
        ("the attention norm reads the layer's input", torch.equal(attention_norm.inputs, x)),
        ("q reads the attention norm's output", torch.equal(q_call.inputs, attention_norm.output)),
        ("the first residual adds the output projection", _close(mid, x + out.output)),
        ("fc1 reads the MLP norm's output", torch.equal(fc1.inputs, mlp_norm.output)),
        ("the second residual adds fc2", _close(output, mid + fc2.output)),
    ]
    for what, holds in checks:
        if not holds:
            raise UnsupportedModelError(f"{where}: not a pre-norm block ({what} does not hold); "
                                        "not covered by the LRP rules")
    return LayerParts(attention_norm.module, q, k, v, out.module, mlp_norm.module, fc1.module, fc2.module,
                      num_heads=int(qkv.shape[2]))


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    # the same sum in another order of operands: equal to round-off
    return actual.shape == expected.shape and bool(torch.allclose(actual, expected, rtol=1e-5, atol=1e-6))
