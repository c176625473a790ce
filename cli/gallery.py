"""``heatmap gallery``: every method's map of each image and target on one labelled grid.

The model is loaded once; each image is explained by every method asked for
(default: all) for the same targets (``heatmap.pipeline.explain_every_method``),
and each grid is drawn by ``heatmap.render.gallery``. A method that refuses
the model shows its reason in its tile. Files are named like the maps'
(``<name>.gallery.<target>.<tag>.png``), the tag naming the model, weights,
methods and drawing, so another configuration never replaces a gallery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from heatmap.cli import console
from heatmap.cli.console import Output
from heatmap.errors import HeatmapError, UsageError

SHOWN_ROWS = 40


@dataclass
class GalleryRequest:
    """What ``heatmap gallery`` was asked (see its ``--help``)."""

    inputs: list[Path]
    model: str | None = None
    checkpoint: Path | None = None
    pretrained: str | None = None
    methods: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    top_k: int = 1
    texts: list[str] = field(default_factory=list)
    out: Path = Path("heatmaps")
    device: str = "auto"
    precision: str = "auto"
    colormap: str = "jet"
    alpha: float = 0.5
    recursive: bool = False
    output: Output = "normal"


def run_gallery(request: GalleryRequest) -> int:
    """Write one grid per image and target; 0 when every image is done, 1 when some failed."""
    from heatmap.cli.jobs import plan_jobs
    from heatmap.cli.runner import ensure_writable
    from heatmap.explainers.registry import method as find_method
    from heatmap.explainers.registry import methods as registered

    started = time.monotonic()
    names = list(dict.fromkeys(request.methods)) or list(registered())
    for name in names:
        find_method(name)  # an unknown name is a usage error before anything loads
    if request.targets and request.top_k != 1:
        raise UsageError("--target and --top-k exclude each other: name the classes, or ask for the top K")
    if request.texts and (request.targets or request.checkpoint):
        raise UsageError("--text explains a CLIP model; --target and --checkpoint are for classifiers")
    jobs, _, failures = plan_jobs(request.inputs, request.recursive, None, request.out, [])
    for failure in failures:
        console.say_failed(failure)
    if not jobs:
        raise HeatmapError("no images to explain; pass image files, folders or glob patterns")
    ensure_writable(request.out)

    adapter = _load(request)
    written: list[tuple[Path, str, str, int]] = []
    for job in jobs:
        try:
            written += _one_image(request, adapter, names, job.path, job.stem)
        except HeatmapError as error:  # this image fails; the others go on
            failures.append(str(error))
            console.say_failed(str(error))
    if request.output == "normal":
        _print_summary(written, request.out, len(names))
        console.stderr.print(escape(f"{len(written)} gallery picture(s) of {len(jobs) - len(failures)} input(s) "
                                    f"written to {request.out}, {len(failures)} failed, in "
                                    f"{time.monotonic() - started:.1f} s"), soft_wrap=True, highlight=False)
    if request.output == "json":
        import json

        console.say_json(json.dumps({"out": str(request.out), "files": [str(path) for path, *_ in written],
                                     "failed": len(failures), "failures": failures,
                                     "exit_code": 1 if failures else 0}))
    return 1 if failures else 0


def _load(request: GalleryRequest) -> Any:
    status = console.stderr.status("loading the model...") if request.output == "normal" else None
    if status is not None:
        status.start()
    try:
        if request.texts:
            from heatmap.models import load_clip

            return load_clip(request.model, request.pretrained, request.device)
        from heatmap.models import load

        return load(request.model, request.checkpoint, request.device)
    finally:
        if status is not None:
            status.stop()


def _one_image(request: GalleryRequest, adapter: Any, names: list[str], path: Path,
               stem: str) -> list[tuple[Path, str, str, int]]:
    """Explain one image by every method; write its grids; return (file, target, shown target, refused)."""
    from heatmap.inputs import load_image
    from heatmap.models import weights_identity
    from heatmap.outputs import configuration_tag, png_bytes, write_atomically
    from heatmap.pipeline import explain_every_method
    from heatmap.render.gallery import gallery
    from heatmap.render.panel import caption_of

    picture = load_image(path)
    rows = explain_every_method(adapter, picture, names, targets=request.targets or None, top_k=request.top_k,
                                texts=request.texts or None, precision=request.precision)
    weights = request.pretrained if request.texts else request.checkpoint
    tag = configuration_tag({"model": adapter.name, "weights": weights_identity(request.model, weights,
                                                                                  clip=bool(request.texts)),
                             "methods": names, "precision": request.precision, "colormap": request.colormap,
                             "alpha": request.alpha})
    top_k = request.top_k if not request.targets else 1
    box = rows[0].record.box  # the crop the model saw, the same for every target
    written = []
    for row in rows:
        caption = caption_of("", adapter.name, row.record.fields, top_k)
        drawn = gallery(picture, box, caption, row.tiles, request.colormap, request.alpha)
        target = _target_name(adapter, row.record, request.texts)
        file = request.out / f"{stem}.gallery.{target}.{tag}.png"
        try:
            write_atomically(file, png_bytes(drawn))
        except OSError as error:
            raise HeatmapError(f"{path}: cannot write {file.name}: {error.strerror or error}") from None
        refused = sum(tile.heatmap is None for tile in row.tiles)
        written.append((file, str(row.record.label or row.record.target), path.name, refused))
    return written


def _target_name(adapter: Any, record: Any, texts: list[str]) -> str:
    """The target as file names of maps name it (the class's slug, or the text's name)."""
    from heatmap.outputs import target_names, text_name

    if texts:
        return text_name(texts[record.target])
    return target_names(adapter.labels).get(record.target, str(record.target))


def _print_summary(written: list[tuple[Path, str, str, int]], out: Path, methods: int) -> None:
    if not written:
        return
    table = Table(title=f"{len(written)} gallery picture(s) in {out}, {methods} method(s) each",
                  title_justify="left")
    table.add_column("input", overflow="ellipsis", no_wrap=True, max_width=36)
    table.add_column("target", overflow="ellipsis", max_width=36)
    table.add_column("refused", justify="right")
    previous = None
    for _, target, name, refused in written[:SHOWN_ROWS]:
        table.add_row(escape(name) if name != previous else "", escape(target), str(refused))
        previous = name
    if len(written) > SHOWN_ROWS:
        table.caption = f"... and {len(written) - SHOWN_ROWS} more"
    console.stdout.print(table)
