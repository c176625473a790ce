"""One classifier run: inputs -> batches -> explainer -> files, with progress.

The math stays in the explainers and the files in ``heatmap.outputs``; this
only moves things between them and tells the user how it went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from heatmap.cli import console
from heatmap.errors import HeatmapError, UsageError

SUMMARY_ROWS = 40


@dataclass
class RunRequest:
    """What the user asked for (the shared options of every classifier command)."""

    method: str
    options: dict[str, Any]
    inputs: list[Path]
    model: str | None = None
    checkpoint: Path | None = None
    targets: list[str] = field(default_factory=list)
    top_k: int = 1
    out: Path = Path("heatmaps")
    device: str = "auto"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Each argument expanded on its own, so one bad argument loses no others."""
    from heatmap.images import collect_inputs

    paths: dict[Path, Path] = {}
    failures = []
    for argument in inputs:
        try:
            for path in collect_inputs([argument]):
                paths.setdefault(path.resolve(), path)
        except HeatmapError as error:
            failures.append(str(error))
    return list(paths.values()), failures


def run(request: RunRequest) -> int:
    """Run the request; return the exit code (0 all good, 1 some inputs failed)."""
    from heatmap.explainers import METHODS
    from heatmap.images import load_image
    from heatmap.models import load
    from heatmap.outputs import ResultWriter, output_stems, target_names

    if request.targets and request.top_k != 1:
        raise UsageError("--target and --top-k exclude each other: name the classes, or ask for the top K")
    paths, failures = expand_inputs(request.inputs)
    for failure in failures:
        console.say_failed(failure)
    if not paths:
        raise HeatmapError("no images to explain; pass image files, folders or glob patterns")

    with console.stderr.status(f"loading {request.model or 'the default model'}..."):
        adapter = load(request.model, request.checkpoint, request.device)
        explainer = METHODS[request.method].explainer_class()(adapter, **request.options)
    targets = list(dict.fromkeys(adapter.class_index(t) for t in request.targets)) or None
    names = target_names(adapter.labels)
    writer = ResultWriter(request.out, adapter.name, request.colormap, request.alpha)
    jobs = list(zip(paths, output_stems(paths)))
    batches = [jobs[i:i + request.batch_size] for i in range(0, len(jobs), request.batch_size)]
    entries = []
    with _progress(len(batches) > 1) as progress:
        task = progress.add_task(request.method, total=len(jobs))
        for batch in batches:
            loaded = []
            for path, stem in batch:
                try:
                    loaded.append((path, stem, load_image(path)))
                except HeatmapError as error:
                    failures.append(str(error))
                    console.say_failed(str(error))
            if loaded:
                tensor, boxes = adapter.preprocess([picture for _, _, picture in loaded])
                explanation = explainer.explain(tensor, None if targets is None else [targets] * len(loaded),
                                                top_k=request.top_k)
                for i, (path, stem, picture) in enumerate(loaded):
                    for k, target in enumerate(explanation.targets[i].tolist()):
                        entries.append(writer.write(
                            path, stem, picture, boxes[i], explanation.maps[i, k].numpy(),
                            method=request.method, options=explanation.options, target=target,
                            target_name=names.get(target, str(target)), label=explanation.labels[i][k],
                            score=float(explanation.scores[i, k])))
            progress.advance(task, len(batch))
    _print_summary(entries, failures, writer.out_dir)
    return 1 if failures else 0


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console.stderr, disable=not enabled, transient=True)


def _print_summary(entries: list[dict], failures: list[str], out_dir: Path) -> None:
    table = Table(title=f"{len(entries)} map(s) in {out_dir}", title_justify="left")
    for column in ("input", "target", "score", "overlay"):
        table.add_column(column, justify="right" if column == "score" else "left", overflow="fold")
    for entry in entries[:SUMMARY_ROWS]:
        label = entry["label"] or ""
        table.add_row(Path(entry["input"]).name, f"{entry['target']} {label}".strip(),
                      f"{entry['score']:.3f}", entry["files"]["png"])
    if len(entries) > SUMMARY_ROWS:
        table.caption = f"... and {len(entries) - SUMMARY_ROWS} more in manifest.jsonl"
    if entries:
        console.stdout.print(table)
    if failures:
        console.stderr.print(f"[red]{len(failures)} input(s) failed[/]; the others were written.")
