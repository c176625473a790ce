"""Reading weights safely, and finding a pretrained model's weights offline first.

A ``.pt``/``.pth``/``.bin`` file is read with ``torch.load(weights_only=True)``:
a pickle that needs code to load is refused, never executed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from heatmap.errors import HeatmapError

# Keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file, read in chunks (a weight file's identity in the manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a weights-only pickle.

    Nested dicts (``{"state_dict": ...}``, ``{"model": ...}``) and the
    ``module.`` prefix of DataParallel are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise HeatmapError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise HeatmapError(f"checkpoint {path} is not a readable .safetensors file ({error})") from None
    else:
        try:
            with warnings.catch_warnings():  # torch's notes on old pickle protocols are not the user's business
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message advises turning the safety off; never relay that, name what was refused
            needed = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(error))
            if needed:
                raise HeatmapError(
                    f"checkpoint {path} needs code to unpickle ({needed.group(1)}), which vit-heatmap never runs; "
                    "save it with torch.save(model.state_dict(), ...) or as .safetensors") from None
            raise HeatmapError(f"checkpoint {path} is not a PyTorch checkpoint (its contents are not a "
                               "pickle of tensors); pass a .safetensors, .pt or .pth file of weights") from None
        except Exception:  # zip errors, EOF, wrong magic number...
            raise HeatmapError(f"checkpoint {path} is not a PyTorch checkpoint (unreadable as one); pass a "
                               ".safetensors, .pt or .pth file of weights") from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HeatmapError(f"checkpoint {path} holds no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, architecture: str) -> None:
    """Raise an error naming the mismatched keys unless ``state`` fits ``model`` exactly."""
    expected = model.state_dict()
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
                for key, value in expected.items() if key in state and state[key].shape != value.shape]
    problems = fit_problems(set(expected) - set(state), set(state) - set(expected), reshaped)
    if problems:
        raise HeatmapError(f"{source} does not fit {architecture}: {problems}; pass the --model it was trained with")


def fit_problems(missing: Iterable[str], unexpected: Iterable[str], reshaped: Iterable[str]) -> str:
    """Weights that do not fit a model, in a few words: each kind's first keys (sorted), then its count; ""
    when they fit."""
    problems = []
    for what, found in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", reshaped)):
        keys = sorted(found)
        if keys:
            problems.append(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})")
    return "; ".join(problems)


def cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """The first of ``filenames`` found in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers at all (and offline mode is off).

    Asked once, quickly, so that a machine without network gets its error at
    once instead of after the hub client's minute of retries.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def download_hub_file(repo_id: str, filenames: tuple[str, ...], model_name: str,
                      local_option: str = "--checkpoint FILE") -> str:
    """Download the first of ``filenames`` that exists; a one-line error when none can be had."""
    from huggingface_hub import hf_hub_download
    reason = "offline"
    if hub_reachable():
        for filename in filenames:
            try:
                return hf_hub_download(repo_id, filename)
            except Exception as error:  # no such file, gated repo, dropped connection: keep its own words
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
                reason = f"{type(error).__name__}: {first_line}"
    raise HeatmapError(
        f"weights of {model_name} are not in the local cache and could not be downloaded ({reason}); "
        f"download them once with network access (e.g. `hf download {repo_id}`), "
        f"pass {local_option}, or use --model demo, which runs offline"
    )
