"""Choosing the device (``auto`` picks cuda, then mps, then cpu), the precision, and full float32 on CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from heatmap.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "float64")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A device name -> a ``torch.device`` that works here, or a one-line error."""
    name = str(device)
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise UsageError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu (or auto)")
    if kind == "mps" and not mps_ok:
        raise UsageError("--device mps: MPS is not available on this machine; use --device cpu (or auto)")
    return torch.device(name)


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
