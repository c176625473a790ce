"""What an explanation from the Python API draws and writes: overlays, panels, a notebook figure, the CLI's files.

The methods of :class:`~heatmap.explainers.driver.Explanation` and
:class:`~heatmap.explainers.driver.ClipExplanation` call these, so the API
draws every picture exactly as the CLI does (``heatmap.outputs``' writers and
``heatmap.render``), and ``save`` writes the CLI's files and manifest lines.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heatmap.errors import UsageError
from heatmap.outputs import OVERLAY_SIZE, scaled_down

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from heatmap.explainers.driver import ClipExplanation, Explanation
    from heatmap.models.protocols import Box
    from heatmap.pipeline import MapRecord


def overlay_picture(pictures: list[Any] | None, boxes: list[Box] | None, maps: torch.Tensor, i: int, k: int,
                    colormap: str, alpha: float, max_side: int) -> Image.Image:
    """The overlay the CLI writes for map ``maps[i, k]`` (``heatmap.outputs.OverlayWriter``'s steps)."""
    from heatmap.render import overlay

    _check_index(pictures, boxes, maps, i, k)
    assert pictures is not None and boxes is not None
    picture, box = scaled_down(pictures[i], boxes[i], max_side)
    return overlay(picture, maps[i, k].float().numpy(), box, colormap, alpha)


def panel_picture(explanation: Explanation | ClipExplanation, i: int, k: int, colormap: str,
                  alpha: float) -> Image.Image:
    """The labelled panel the CLI's ``--panel`` writes for image ``i``'s ``k``-th target."""
    from heatmap.render.panel import caption_of, panel

    full = with_target_axis(explanation)
    _check_index(full.pictures, full.boxes, full.maps, i, k)
    assert full.pictures is not None and full.boxes is not None
    record = records(full)[i][k]
    # a class other than the model's top one is flagged (the API does not know whether it was asked for by name)
    caption = caption_of(full.method, full.model, record.fields, top_k=1)
    return panel(full.pictures[i], record.heatmap, full.boxes[i], caption, colormap, alpha, None,
                 record.word_pieces, record.token_relevance)


def show_grid(pictures: list[Any] | None, boxes: list[Box] | None, maps: torch.Tensor, titles: list[list[str]],
              method: str, colormap: str, alpha: float) -> Any:
    """One row per image, one column per target: each overlay with its title; shown, and returned."""
    import matplotlib.pyplot as plt

    rows, columns = maps.shape[:2]
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for i in range(rows):
        for k in range(columns):
            axes[i][k].imshow(overlay_picture(pictures, boxes, maps, i, k, colormap, alpha, OVERLAY_SIZE))
            axes[i][k].set_title(titles[i][k], fontsize=9)
            axes[i][k].axis("off")
    figure.suptitle(method)
    figure.tight_layout()
    plt.show()
    return figure


def save(explanation: Explanation | ClipExplanation, folder: Path, colormap: str = "jet", alpha: float = 0.5,
         overlay_size: int = OVERLAY_SIZE, panel: bool = False) -> list[dict[str, Any]]:
    """Write the CLI's files of every map (``.npy``, overlay, token strip, and the panel when asked) and
    their manifest lines into ``folder``; return the manifest entries.

    The inputs are named by their paths when the explanation was given paths
    (as the CLI names them), else ``image0``, ``image1``, ... Files carry the
    configuration's tag, so another model, method or option never replaces them.
    """
    from heatmap.explainers.driver import ClipExplanation
    from heatmap.outputs import (
        TARGET_BYTES,
        OverlayWriter,
        PanelWriter,
        ResultWriter,
        configuration_tag,
        default_writers,
        fitted,
        output_stems,
        slug,
        text_name,
    )

    full = with_target_axis(explanation)
    if full.pictures is None or full.boxes is None:
        raise UsageError("saving needs the pictures: explain paths or PIL images, not a tensor")
    clip = isinstance(full, ClipExplanation)
    sources = [Path(source) for source in full.sources] if full.sources else [
        Path(f"image{i}") for i in range(len(full.pictures))]
    precision = str(full.maps.dtype).removeprefix("torch.")
    model = full.model or "model"
    tag = configuration_tag({"model": model, "weights": None, "kind": "clip" if clip else "classifier",
                             "method": full.method, "options": full.options, "precision": precision})
    writers = default_writers(colormap, alpha, overlay_size)
    if panel:
        writers.append(PanelWriter(full.method, model, colormap, alpha, None, top_k=1))
    writer = ResultWriter(Path(folder), model, writers, tag)
    overlay = {**OverlayWriter(colormap, alpha, overlay_size).settings, **({"panel": True} if panel else {})}
    common = {"weights": None, "precision": precision, "options": full.options, "overlay": overlay}
    entries = []
    for i, (source, stem, row) in enumerate(zip(sources, output_stems(sources), records(full), strict=True)):
        for record in row:
            name = text_name(record.label or "") if clip else (
                fitted(slug(record.label), TARGET_BYTES) if record.label else str(record.target))
            entries.append(writer.write(source, stem, full.pictures[i], record, method=full.method, target_name=name,
                                        common=common))
    return entries


def records(explanation: Explanation | ClipExplanation) -> list[list[MapRecord]]:
    """The explanation (with its target axis) as the pipeline's records, one per image and target."""
    from heatmap.explainers.driver import ClipExplanation
    from heatmap.pipeline import classifier_records, clip_records

    count = explanation.maps.shape[0]
    boxes: list[Box | None] = list(explanation.boxes) if explanation.boxes else [None] * count
    if isinstance(explanation, ClipExplanation):
        return clip_records(explanation, boxes, str)
    return classifier_records(explanation, boxes, str, None)


def with_target_axis(explanation: Any) -> Any:
    """A squeezed classifier explanation (maps ``[B, gh, gw]``) with its target axis back (``[B, 1, gh, gw]``)."""
    if explanation.maps.dim() == 4:
        return explanation

    def first(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[:, None]

    return replace(explanation, maps=explanation.maps[:, None], targets=explanation.targets[:, None],
                   scores=explanation.scores[:, None], labels=[[label] for label in explanation.labels],
                   probabilities=first(explanation.probabilities), class_ranks=first(explanation.class_ranks))


def _check_index(pictures: list[Any] | None, boxes: list[Box] | None, maps: torch.Tensor, i: int, k: int) -> None:
    if pictures is None or boxes is None:
        raise UsageError("an overlay needs the pictures: explain paths or PIL images, not a tensor")
    if not (0 <= i < maps.shape[0] and 0 <= k < maps.shape[1]):
        raise UsageError(f"no map ({i}, {k}): there are {maps.shape[0]} images with {maps.shape[1]} maps each")
