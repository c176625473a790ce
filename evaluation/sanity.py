"""The sanity checks of Adebayo et al. 2018 ("Sanity Checks for Saliency Maps") for ``heatmap eval``.

Two questions per method, each answered by a Spearman rank correlation of raw maps (:func:`spearman`):

* **Model-parameter randomisation** (cascading, from the top): for
  l = L-1 down to 0, the map of the same image and target on a copy of the
  model whose attention blocks l..L-1 (the explained tower's; for a CLIP the
  image tower's, an attention-pool head counted as its last layer) are
  re-initialised, against the map on the original model. A map that follows
  the model decorrelates as more blocks are randomised; one that does not
  tracks the image, not the model.
* **Random class**: the map for the target against the map for another class
  (a CLIP: another text) on the original model. A class-agnostic method
  (rollout) gives 1 by construction.

The re-initialisation rule: every parameter tensor of a randomised block is
redrawn element-wise as ``mean + std * z``, ``z ~ N(0, 1)``, where ``mean`` and
``std`` are that tensor's own mean and (population) standard deviation over its
elements in the trained model, so each tensor keeps its scale. A tensor with
std 0 (a LayerNorm weight of ones, a zero bias) is kept as it is: no scale is
there to draw at. Buffers are kept. The draws are float64 on the CPU from a
``torch.Generator`` seeded per block from ``(seed, block index)``, then cast to the
parameter's dtype and device, so a block's new values do not depend on which
copy asked for it first or on the device, and the same seed gives the same copies.

The original model is never written: each copy is a deep copy of it in which
the blocks below l are the original's own modules (only read) and the blocks
from l on are the randomised blocks, drawn once per block and shared by every
copy; what lies outside the blocks (embedding, norms, head) is copied per copy.
The L copies so cost about one model more in memory, not L models.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heatmap.errors import UnsupportedModelError, UsageError
from heatmap.models.protocols import is_image_text

if TYPE_CHECKING:
    from heatmap.explainers.driver import Driver
    from heatmap.models.protocols import Adapter, Tower


# -- the correlation -------------------------------------------------------------------


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps, flattened, in float64.

    Ties get the average of the ranks they span (as ``scipy.stats.spearmanr``).

    Args:
        a, b: maps of any shape with the same number of elements (``[gh, gw]`` say).

    Returns:
        rho in [-1, 1]; NaN when either map is constant (its ranks have no
        variance, so no correlation is defined) or holds a non-finite value.
        The caller reports a NaN; it is never turned into a number here.

    Raises:
        ValueError: for maps of different sizes.
    """
    x, y = a.detach().reshape(-1).double().cpu(), b.detach().reshape(-1).double().cpu()
    if x.numel() != y.numel():
        raise ValueError(f"maps of {x.numel()} and {y.numel()} values cannot be correlated")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.nan
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    rank_x, rank_y = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    spread = math.sqrt(float((rank_x * rank_x).sum()) * float((rank_y * rank_y).sum()))
    if spread == 0.0:
        return math.nan
    return float((rank_x * rank_y).sum()) / spread


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """``[n]`` float64: 1-based ranks of ``values [n]``, tied values sharing the mean of their ranks."""
    order = torch.argsort(values, stable=True)
    _, group, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, dim=0).double()  # each tie group spans ranks ends - counts + 1 .. ends
    group_ranks = ends - (counts.double() - 1.0) / 2.0
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = group_ranks[group]
    return ranks


# -- seeds ------------------------------------------------------------------------------


def derived_seed(seed: int, text: str) -> int:
    """A 63-bit seed from ``(seed, text)`` by SHA-256: the same on every run and machine (unlike ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def other_target(count: int, target: int, seed_text: str, seed: int) -> int:
    """A class (or text) index other than ``target``, uniform over the other ``count - 1``.

    Fixed by ``(seed, seed_text)`` alone (SHA-256 of ``f"{seed}:{seed_text}"``), so an
    image's choice does not depend on which other images are evaluated.

    Args:
        count: how many classes (or texts) there are.
        target: the explained index, in ``[0, count)``.
        seed_text: what names the draw, e.g. the image's name.
        seed: the run's seed.

    Raises:
        UsageError: for fewer than two classes, or a target out of range.
    """
    if count < 2:
        raise UsageError(f"the random-class check needs at least two classes or texts, got {count}")
    if not 0 <= target < count:
        raise UsageError(f"target {target} is not one of the {count} classes or texts")
    digest = hashlib.sha256(f"{seed}:{seed_text}".encode()).digest()
    pick = int.from_bytes(digest, "big") % (count - 1)  # the bias of a 256-bit modulus is nil for any count
    return pick if pick < target else pick + 1


# -- randomised copies ----------------------------------------------------------------


def attention_layers(tower: Tower) -> list[nn.Module]:
    """The tower's attention layers in forward order, one per ``tower.num_blocks``.

    The blocks (timm's ``blocks``, open_clip's ``transformer.resblocks``,
    transformers' layer stack), then an attention-pool head when the tower counts
    one as its last layer (timm's ``attn_pool``, SigLIP's ``head``).

    Raises:
        UnsupportedModelError: for a tower whose layers are not found here.
    """
    blocks = _block_stack(tower)
    if blocks is not None and len(blocks) + 1 == tower.num_blocks:
        head = getattr(tower, "pool_head", None)
        head = head if head is not None else getattr(tower, "head", None)
        blocks = blocks + [head] if isinstance(head, nn.Module) else None
    if blocks is None or len(blocks) != tower.num_blocks:
        raise UnsupportedModelError(f"{tower.name}: its attention layers could not be found, so its blocks "
                                    "cannot be randomised")
    return blocks


def _block_stack(tower: Tower) -> list[nn.Module] | None:
    """The tower's blocks without a pooling head, or None when it has no stack known here."""
    layers = getattr(tower, "layers", None)  # transformers
    if isinstance(layers, nn.ModuleList):
        return list(layers)
    transformer = getattr(getattr(tower, "module", None), "transformer", None)  # open_clip
    if isinstance(getattr(transformer, "resblocks", None), nn.ModuleList):
        return list(transformer.resblocks)  # type: ignore[union-attr]
    blocks = getattr(getattr(tower, "model", None), "blocks", None)  # timm
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        return list(blocks)
    return None


@torch.no_grad()
def randomised_block(block: nn.Module, generator: torch.Generator) -> nn.Module:
    """A copy of ``block`` with every parameter of nonzero std redrawn as ``mean + std * N(0, 1)`` (module doc)."""
    fresh = copy.deepcopy(block)
    for parameter in fresh.parameters():
        values = parameter.detach().double().cpu()
        std = float(values.std(correction=0)) if values.numel() else 0.0
        if std == 0.0:  # all elements equal: no scale to draw at, the tensor is kept
            continue
        noise = torch.randn(values.shape, generator=generator, dtype=torch.float64)
        parameter.copy_((values.mean() + std * noise).to(dtype=parameter.dtype, device=parameter.device))
    return fresh


class RandomisedModels:
    """The cascading copies of one model, built on first use and kept (they are reused for every image).

    Args:
        adapter: the model's adapter; it needs ``rebuilt`` (every adapter of ``heatmap.models`` has it).
        seed: fixes every draw; the same seed gives the same copies.
    """

    def __init__(self, adapter: Adapter, seed: int = 0) -> None:
        self.adapter = adapter
        self.seed = seed
        self.layers = attention_layers(adapter.towers[0])
        self._random_layers: dict[int, nn.Module] = {}
        self._copies: dict[int, Adapter] = {}

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def randomised_from(self, first: int) -> Adapter:
        """The adapter of a copy whose layers ``first .. L-1`` are re-initialised (the rest as trained).

        Raises:
            UnsupportedModelError: for an adapter that cannot be rebuilt around a copy.
        """
        if not 0 <= first < self.num_layers:
            raise ValueError(f"first randomised layer {first} is not in 0..{self.num_layers - 1}")
        if first not in self._copies:
            self._copies[first] = self._rebuilt(self._copied_model(first))
        return self._copies[first]

    def _random_layer(self, index: int) -> nn.Module:
        if index not in self._random_layers:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, f"layer {index}"))
            self._random_layers[index] = randomised_block(self.layers[index], generator)
        return self._random_layers[index]

    def _copied_model(self, first: int) -> nn.Module:
        # deepcopy takes a module found in the memo as its copy: the trained layers below `first` stay the
        # original's own (only read), those from `first` on become the shared randomised ones.
        memo: dict[int, Any] = {id(layer): layer for layer in self.layers[:first]}
        memo.update({id(layer): self._random_layer(index)
                     for index, layer in enumerate(self.layers) if index >= first})
        model: nn.Module = copy.deepcopy(self.adapter.model, memo)
        return model

    def _rebuilt(self, model: nn.Module) -> Adapter:
        rebuilt = getattr(self.adapter, "rebuilt", None)
        if rebuilt is None:
            raise UnsupportedModelError(f"{self.adapter.name}: its adapter cannot be rebuilt around a copy of the "
                                        "model, so its blocks cannot be randomised")
        copied: Adapter = rebuilt(model)
        return copied


# -- the checks -------------------------------------------------------------------------


class SanityChecks:
    """Both sanity checks for several methods on one model, one image at a time.

    Args:
        adapter: the model's adapter (a classifier, or a CLIP explained against texts).
        methods: method names; each is checked against the original model here.
        options: per method, its options, as ``Driver`` takes them (``precision`` included).
        seed: fixes the randomised copies (:class:`RandomisedModels`).

    Raises:
        UsageError, UnsupportedModelError: as ``Driver`` raises them for the original model.
    """

    def __init__(self, adapter: Adapter, methods: Sequence[str],
                 options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0) -> None:
        from heatmap.explainers.driver import Driver

        self.adapter = adapter
        self.options = {name: dict((options or {}).get(name, {})) for name in methods}
        self.drivers = {name: Driver(adapter, name, **self.options[name]) for name in methods}
        self.copies = RandomisedModels(adapter, seed)
        self._copy_drivers: dict[tuple[str, int], Driver] = {}

    def measure(self, normalised: torch.Tensor, target: int, other: int,
                texts: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per method, the correlations of one image's raw maps (JSON-ready floats; NaN for a constant map).

        Args:
            normalised: the image as the model reads it, ``[1, 3, H, W]``.
            target: the explained class index (a CLIP: the index of its text in ``texts``).
            other: another class (text) index for the random-class check (:func:`other_target`).
            texts: a CLIP's texts; None for a classifier.

        Returns:
            ``{method: {"randomisation": [{"blocks_randomised_from": l, "spearman": rho}, ...]
            (l from L-1 down to 0), "random_class": rho}}``.

        Raises:
            UnsupportedModelError: when a method refuses a randomised copy, as ``Driver`` does.
        """
        if normalised.dim() != 4 or normalised.shape[0] != 1:
            raise UsageError(f"the sanity checks take one image [1, 3, H, W], got {tuple(normalised.shape)}")
        if target == other:
            raise UsageError(f"the random-class check needs another class than the target {target}")
        results = {}
        for name, driver in self.drivers.items():
            target_map, other_map = _raw_maps(driver, normalised, [target, other], texts)
            levels = [{"blocks_randomised_from": first,
                       "spearman": spearman(target_map,
                                            _raw_maps(self._copy_driver(name, first), normalised, [target], texts)[0])}
                      for first in reversed(range(self.copies.num_layers))]
            results[name] = {"randomisation": levels, "random_class": spearman(target_map, other_map)}
        return results

    def _copy_driver(self, method: str, first: int) -> Driver:
        from heatmap.explainers.driver import Driver

        key = (method, first)
        if key not in self._copy_drivers:
            self._copy_drivers[key] = Driver(self.copies.randomised_from(first), method, **self.options[method])
        return self._copy_drivers[key]


def _raw_maps(driver: Driver, normalised: torch.Tensor, targets: list[int],
              texts: Sequence[str] | None) -> list[torch.Tensor]:
    """One explanation of the image for all ``targets``: one raw map per target."""
    if texts is not None or is_image_text(driver.adapter):
        if texts is None:
            raise UsageError(f"{driver.adapter.name} is a CLIP model: give the texts its targets index")
        return list(driver.explain_texts(normalised, [texts[index] for index in targets]).maps[0])
    return list(driver.explain(normalised, torch.tensor([targets])).maps[0])
