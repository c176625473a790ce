"""ROAD: MoRF and LeRF with noisy linear imputation (Rong et al., ICML 2022; docs/road.md).

The perturbation test blacks out the removed pixels; a black region's shape
alone can tell the model which class it hides ("class information leakage").
ROAD instead fills the removed pixels from their surroundings: each removed
pixel is the weighted mean of its 8 neighbours, all removed pixels solved at
once as one sparse linear system per channel, plus a little Gaussian noise.
The weights, the border rule and the noise follow the authors'
``road/imputations.py`` (``NoisyLinearImputer``). Everything works on ONE
image in [0, 1] pixel space, before the model's normalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from heatmap.errors import HeatmapError
from heatmap.evaluation.measures import perturbation_auc, perturbed_counts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from heatmap.evaluation.protocols import PixelScorer

# The authors' default: NoisyLinearImputer(noise=0.01), an absolute standard deviation in pixel units.
NOISE_STD = 0.01
# (row offset, column offset, weight): 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones (sum 1).
NEIGHBOUR_WEIGHTS = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12),
)


def _sparse_tools() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """SciPy's ``coo_matrix`` and ``spsolve``, imported only when ROAD runs (SciPy is optional)."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError as error:
        raise HeatmapError("ROAD's noisy linear imputation needs SciPy: pip install scipy") from error
    return coo_matrix, spsolve


def _imputation_system(values: np.ndarray, removed: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """The linear system whose solution is the removed pixels' values.

    Unknown i (the i-th removed pixel in raster order) has the equation
    ``(sum of its in-image neighbours' weights) * x_i - sum over removed neighbours j of w_j * x_j
    = sum over known neighbours k of w_k * v_k``: x_i is the weighted mean of its neighbours that
    exist in the image, known or removed.

    Args:
        values: the image ``[C, H, W]`` float64.
        removed: ``[H, W]`` bool.

    Returns:
        The sparse matrix ``[m, m]`` (CSC), the right-hand sides ``[m, C]``, and the removed
        pixels' flat indices ``[m]``.
    """
    coo_matrix, _ = _sparse_tools()
    channels, height, width = values.shape
    known_values = values.reshape(channels, -1)
    unknown = np.flatnonzero(removed.ravel())
    variable_of_pixel = np.full(height * width, -1, dtype=np.int64)
    variable_of_pixel[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    diagonal = np.zeros(unknown.size)
    right_hand_side = np.zeros((unknown.size, channels))
    entry_rows, entry_cols, entry_weights = [], [], []
    for row_offset, col_offset, weight in NEIGHBOUR_WEIGHTS:
        neighbour_rows, neighbour_cols = rows + row_offset, cols + col_offset
        # a neighbour outside the image does not exist: its weight leaves the normalisation
        inside = (neighbour_rows >= 0) & (neighbour_rows < height) & (neighbour_cols >= 0) & (neighbour_cols < width)
        diagonal[inside] += weight
        equations = np.flatnonzero(inside)
        neighbours = neighbour_rows[inside] * width + neighbour_cols[inside]
        neighbour_removed = removed.ravel()[neighbours]
        known_equations = equations[~neighbour_removed]
        right_hand_side[known_equations] += weight * known_values[:, neighbours[~neighbour_removed]].T
        entry_rows.append(equations[neighbour_removed])
        entry_cols.append(variable_of_pixel[neighbours[neighbour_removed]])
        entry_weights.append(np.full(int(neighbour_removed.sum()), -weight))
    entry_rows.append(np.arange(unknown.size))
    entry_cols.append(np.arange(unknown.size))
    entry_weights.append(diagonal)
    matrix = coo_matrix((np.concatenate(entry_weights), (np.concatenate(entry_rows), np.concatenate(entry_cols))),
                        shape=(unknown.size, unknown.size)).tocsc()
    return matrix, right_hand_side, unknown


def noisy_linear_imputation(image: torch.Tensor, removed: torch.Tensor, noise_std: float = NOISE_STD,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation of one image (the authors' ``NoisyLinearImputer``).

    Each removed pixel, per channel, is the weighted mean of its 8 neighbours:
    1/6 for the 4 direct ones, 1/12 for the 4 diagonal ones, normalised over
    the neighbours that exist in the image (a corner pixel has 3, an edge
    pixel 5). A neighbour that is removed too enters with its own unknown
    value, so all removed pixels are solved together as one sparse linear
    system (``scipy.sparse.linalg.spsolve``, float64), the known pixels fixed.
    A removed pixel with no known neighbour therefore gets no special case,
    as in the authors' code: it is the weighted mean of its neighbours'
    imputed values. Then Gaussian noise of standard deviation ``noise_std``
    is added to the removed pixels only (the known ones stay bit for bit).

    Args:
        image: ``[C, H, W]`` in [0, 1] pixel space (before the model's normalisation), C = 3 for RGB.
        removed: ``[H, W]`` bool, True where the pixel is removed and imputed.
        noise_std: the noise's standard deviation, absolute, in pixel units; 0 for none.
        generator: the CPU generator the noise is drawn from (``torch.randn``, float64, shape
            ``[C, m]`` for m removed pixels in raster order); seeded by the caller; None for torch's global one.

    Returns:
        A new ``[C, H, W]`` tensor in the image's dtype and device. Nothing removed: a copy.

    Raises:
        ValueError: shapes that do not match, or every pixel removed (nothing to impute from: the
            system is singular, and the authors' code returns NaN or 0 depending on SuperLU's pivots).
        HeatmapError: SciPy is not installed.
    """
    if image.dim() != 3 or tuple(removed.shape) != tuple(image.shape[1:]) or removed.dtype != torch.bool:
        raise ValueError(f"expected an image [C, H, W] and a bool mask [H, W]; got {tuple(image.shape)} "
                         f"and {tuple(removed.shape)} {removed.dtype}")
    removed_pixels = removed.detach().cpu().numpy()
    filled = image.detach().cpu().flatten(1).clone(memory_format=torch.contiguous_format)
    if not removed_pixels.any():
        return filled.reshape(image.shape).to(image.device)
    if removed_pixels.all():
        raise ValueError("every pixel is removed: nothing to impute from")
    values = image.detach().cpu().to(torch.float64).numpy()
    matrix, right_hand_side, unknown = _imputation_system(values, removed_pixels)
    _, spsolve = _sparse_tools()
    solution = np.asarray(spsolve(matrix, right_hand_side)).reshape(unknown.size, -1).T  # [C, m]
    imputed = torch.from_numpy(np.ascontiguousarray(solution))
    if noise_std:
        imputed = imputed + noise_std * torch.randn(imputed.shape, generator=generator, dtype=torch.float64)
    filled[:, torch.from_numpy(unknown)] = imputed.to(filled.dtype)
    return filled.reshape(image.shape).to(image.device)


def _imputed_logits(scorer: PixelScorer, pixels: torch.Tensor, order: torch.Tensor, counts: Sequence[int],
                    generator: torch.Generator) -> torch.Tensor:
    """``[len(counts), classes]``: the logits of ``pixels`` with the first ``k`` pixels of ``order`` imputed, per k.

    Only ``scorer.batch_size`` imputed copies exist at a time; the noise is
    drawn from ``generator`` copy after copy, in the order of ``counts``.
    """
    height, width = pixels.shape[1:]
    results = []
    for start in range(0, len(counts), scorer.batch_size):
        copies = []
        with torch.inference_mode():  # nothing here needs gradients
            for count in counts[start:start + scorer.batch_size]:
                removed = torch.zeros(height * width, dtype=torch.bool)
                removed[order[:count].cpu()] = True
                copies.append(noisy_linear_imputation(pixels, removed.reshape(height, width), generator=generator))
            batch = torch.stack(copies)
        results.append(scorer.logits(batch))
    return torch.cat(results)


def road_test(scorer: PixelScorer, pixels: torch.Tensor, order_most: torch.Tensor, order_least: torch.Tensor,
              target: int, clean_hit: bool, generator: torch.Generator) -> dict[str, dict[str, Any]]:
    """ROAD's MoRF and LeRF curves of one image (Rong et al. 2022), with noisy linear imputation.

    For p = 0.1 .. 0.9 the first ``floor(p * H * W)`` pixels of ``order_most``
    (MoRF: most relevant first) or of ``order_least`` (LeRF: least relevant
    first) are removed and imputed (:func:`noisy_linear_imputation`, noise std
    :data:`NOISE_STD`); a hit is a top-1 class equal to ``target``. The curve
    starts with the clean image's hit (p = 0); AUC = ``100 * trapz(curve, p)``.
    MoRF: lower is better; LeRF: higher is better. The orders come from the
    caller (its own seeded tie-break): nothing is ranked here. The noise is
    drawn from ``generator``: the 9 MoRF copies, then the 9 LeRF copies.

    Args:
        scorer: the model seen from [0, 1] pixel space (its ``logits`` and ``batch_size`` are used).
        pixels: the image ``[3, H, W]`` in [0, 1].
        order_most, order_least: LongTensors ``[H * W]`` of flat pixel indices.
        target: the class a hit must be.
        clean_hit: whether the unperturbed image is a hit.
        generator: a seeded CPU generator for the noise.

    Returns:
        ``{"morf": {"curve": [10 floats], "auc": float}, "lerf": {...}}``.
    """
    counts = perturbed_counts(pixels.shape[1] * pixels.shape[2])
    tests = {}
    for name, order in (("morf", order_most), ("lerf", order_least)):
        logits = _imputed_logits(scorer, pixels, order, counts, generator)
        curve = [float(clean_hit)] + [float(hit) for hit in (logits.argmax(dim=1) == target).tolist()]
        tests[name] = {"curve": curve, "auc": perturbation_auc(curve)}
    return tests
