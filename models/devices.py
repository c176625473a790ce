"""Choosing the device: ``auto`` picks cuda, then mps, then cpu."""

from __future__ import annotations

import torch

from heatmap.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")


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
