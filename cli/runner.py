"""Runs of the commands: inputs -> batches -> explainer -> files, with progress.

The math stays in the explainers and the files in ``heatmap.outputs``; this
only moves things between them and tells the user how it went. A file that
fails is reported in one line and the run goes on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from heatmap.cli import console
from heatmap.errors import HeatmapError, UsageError

SUMMARY_ROWS = 40


@dataclass
class RunRequest:
    """What the user asked for: the options every command shares."""

    method: str
    options: dict[str, Any]
    inputs: list[Path]
    model: str | None = None
    out: Path = Path("heatmaps")
    device: str = "auto"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5


@dataclass
class ClassifierRequest(RunRequest):
    """A classifier run: which classes to explain."""

    checkpoint: Path | None = None
    targets: list[str] = field(default_factory=list)
    top_k: int = 1


@dataclass
class ClipRequest(RunRequest):
    """A CLIP run: which texts to explain the images against."""

    pretrained: str | None = None
    texts: list[str] = field(default_factory=list)


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


class Batches:
    """The inputs in batches of loaded pictures, with a progress bar and the failures.

    Iterating yields lists of ``(path, output stem, picture)``; a file that
    cannot be read is reported at once and left out.
    """

    def __init__(self, request: RunRequest) -> None:
        from heatmap.outputs import output_stems

        paths, self.failures = expand_inputs(request.inputs)
        for failure in self.failures:
            console.say_failed(failure)
        if not paths:
            raise HeatmapError("no images to explain; pass image files, folders or glob patterns")
        self.jobs = list(zip(paths, output_stems(paths)))
        self.size = request.batch_size
        self.label = request.method

    def __iter__(self) -> Iterator[list[tuple[Path, str, Any]]]:
        from heatmap.images import load_image

        batches = [self.jobs[i:i + self.size] for i in range(0, len(self.jobs), self.size)]
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console.stderr, disable=len(batches) <= 1,
                      transient=True) as progress:
            task = progress.add_task(self.label, total=len(self.jobs))
            for batch in batches:
                loaded = []
                for path, stem in batch:
                    try:
                        loaded.append((path, stem, load_image(path)))
                    except HeatmapError as error:
                        self.failures.append(str(error))
                        console.say_failed(str(error))
                if loaded:
                    yield loaded
                progress.advance(task, len(batch))

    def exit_code(self) -> int:
        """0 when every input was explained, 1 when some failed (the others were written)."""
        if self.failures:
            console.stderr.print(f"[red]{len(self.failures)} input(s) failed[/]; the others were written.")
        return 1 if self.failures else 0


def run_classifier(request: ClassifierRequest) -> int:
    """Run a classifier command; return the exit code."""
    from heatmap.explainers import METHODS
    from heatmap.models import load
    from heatmap.outputs import ResultWriter, target_names

    if request.targets and request.top_k != 1:
        raise UsageError("--target and --top-k exclude each other: name the classes, or ask for the top K")
    explainer_class = METHODS[request.method].explainer_class()
    explainer_class.resolve_options(request.options)  # a bad option fails before the model loads
    batches = Batches(request)
    with console.stderr.status(f"loading {request.model or 'the default model'}..."):
        adapter = load(request.model, request.checkpoint, request.device)
        explainer = explainer_class(adapter, **request.options)
    targets = list(dict.fromkeys(adapter.class_index(t) for t in request.targets)) or None
    names = target_names(adapter.labels)
    writer = ResultWriter(request.out, adapter.name, request.colormap, request.alpha)
    entries = []
    for loaded in batches:
        tensor, boxes = adapter.preprocess([picture for _, _, picture in loaded])
        explanation = explainer.explain(tensor, None if targets is None else [targets] * len(loaded),
                                        top_k=request.top_k)
        for i, (path, stem, picture) in enumerate(loaded):
            for k, target in enumerate(explanation.targets[i].tolist()):
                entries.append(writer.write(
                    path, stem, picture, boxes[i], explanation.maps[i, k].numpy(),
                    method=request.method, target_name=names.get(target, str(target)),
                    record={"options": explanation.options, "target": target,
                            "label": explanation.labels[i][k], "score": float(explanation.scores[i, k])}))
    _print_classifier_summary(entries, writer.out_dir)
    return batches.exit_code()


def run_clip(request: ClipRequest) -> int:
    """Run ``heatmap clip``; return the exit code."""
    from heatmap.explainers.clip import ClipExplainer
    from heatmap.models import load_clip
    from heatmap.outputs import ResultWriter, target_names
    from heatmap.render import text_strip

    if not request.texts:
        raise UsageError("give at least one --text (or --texts-file) to explain the images against")
    ClipExplainer.resolve_options(request.method, request.options)  # fail before the model loads
    batches = Batches(request)
    with console.stderr.status(f"loading {request.model or 'ViT-B-32 (openai)'}..."):
        adapter = load_clip(request.model, request.pretrained, request.device)
        explainer = ClipExplainer(adapter, request.method, **request.options)
    names = target_names(request.texts)
    writer = ResultWriter(request.out, adapter.name, request.colormap, request.alpha)
    for loaded in batches:
        tensor, boxes = adapter.preprocess([picture for _, _, picture in loaded])
        explanation = explainer.explain(tensor, request.texts)
        probabilities = explanation.probabilities
        for i, (path, stem, picture) in enumerate(loaded):
            for t, text in enumerate(request.texts):
                relevance = explanation.text_relevance[i][t]
                writer.write(
                    path, stem, picture, boxes[i], explanation.maps[i, t].numpy(),
                    method=request.method, target_name=names[t],
                    record={"options": explanation.options, "text": text, "text_index": t,
                            "logit": float(explanation.logits[i, t]),
                            "probability": float(probabilities[i, t]),
                            "word_pieces": explanation.word_pieces[t], "token_relevance": relevance.tolist()},
                    extra_images={"tokens": text_strip(explanation.word_pieces[t], relevance.numpy())})
            _print_clip_table(path, request.texts, explanation.logits[i].tolist(), probabilities[i].tolist())
    console.stderr.print(f"maps, overlays and token strips in {writer.out_dir}")
    return batches.exit_code()


def _print_classifier_summary(entries: list[dict], out_dir: Path) -> None:
    if not entries:
        return
    table = Table(title=f"{len(entries)} map(s) in {out_dir}", title_justify="left")
    for column in ("input", "target", "score", "overlay"):
        table.add_column(column, justify="right" if column == "score" else "left", overflow="fold")
    for entry in entries[:SUMMARY_ROWS]:
        table.add_row(Path(entry["input"]).name, f"{entry['target']} {entry['label'] or ''}".strip(),
                      f"{entry['score']:.3f}", entry["files"]["png"])
    if len(entries) > SUMMARY_ROWS:
        table.caption = f"... and {len(entries) - SUMMARY_ROWS} more in manifest.jsonl"
    console.stdout.print(table)


def _print_clip_table(path: Path, texts: list[str], logits: list[float], probabilities: list[float]) -> None:
    table = Table(title=str(path), title_justify="left")
    table.add_column("text", overflow="fold")
    table.add_column("logit", justify="right")
    table.add_column("probability", justify="right")
    best = max(range(len(texts)), key=logits.__getitem__)
    for t, text in enumerate(texts):
        style = "bold green" if t == best else None
        table.add_row(text, f"{logits[t]:.2f}", f"{probabilities[t]:.1%}", style=style)
    console.stdout.print(table)
