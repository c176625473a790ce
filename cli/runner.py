"""Runs of the commands: inputs -> the pipeline -> writers, with progress and a summary.

The math stays in the library (``heatmap.pipeline`` turns pictures into
plain records) and the files in ``heatmap.outputs``; this only moves records
between them and tells the user how it went. No tensor passes through here.
A file that fails is reported in one line and the run goes on with the
others; Ctrl-C stops the run at once, and every file already written is whole.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from heatmap.cli import console
from heatmap.cli.console import Output
from heatmap.cli.jobs import DoneMaps, Job, Shard, plan_jobs
from heatmap.errors import HeatmapError, UsageError

if TYPE_CHECKING:
    from PIL import Image

    from heatmap.pipeline import MapRecord

SUMMARY_ROWS = 40
CLIP_TABLE_ROWS = 20  # texts shown per image; the manifest has them all
LISTED_LABELS = 20  # a model with up to this many classes has them listed when a target is unknown
NAME_WIDTH = 28  # characters of an input's name in the summary tables (the manifest has the whole path)
SHOWN_TEXT = 60  # characters of a text shown in tables and notes; the manifest keeps it whole


@dataclass
class RunRequest:
    """What the user asked for: the options every explaining command shares.

    The commands build one request from their options (``cli/app.py``) and
    hand it to :func:`run_classifier` or :func:`run_clip`.

    Attributes:
        method: the method's registered name.
        options: the method's own options as given (those not given left out
            or at their defaults; the registry fills in and checks the rest).
        inputs: image files, folders and glob patterns, as given.
        model: the model's name (None: the command's default).
        out: the output folder.
        device, precision: ``--device`` and ``--precision`` as given (``"auto"``...).
        batch_size: images per forward pass.
        colormap, alpha, overlay_size: how the overlays are drawn.
        recursive: search folders in their subfolders.
        skip_existing: leave out inputs whose files this run would write are
            already there (``DoneMaps``).
        verbose: name every file of the folders that is left out.
        shard: only this slice of the sorted inputs (None: all).
        output: what the run prints (``console.Output``).
        panel: also write each map's labelled panel (``<base>.<tag>.panel.png``).
        scale: ``"image"``: each picture coloured by its own map's range;
            ``"batch"``: every map of the run by one range, so a weak map looks weak.
        report: write ``<out>/report.html`` at the end.
        command: the command line as typed (recorded in ``runs.jsonl``).
        ray: explain on this Ray cluster (``local``: one started on this machine) and write here; None: in
            this process.
        ray_workers: Ray actors (None: one per GPU of the cluster, or one per node).
    """

    method: str
    options: dict[str, Any]
    inputs: list[Path]
    model: str | None = None
    out: Path = Path("heatmaps")
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    colormap: str = "jet"
    alpha: float = 0.5
    overlay_size: int = 2048
    recursive: bool = False
    skip_existing: bool = False
    verbose: bool = False
    shard: Shard | None = None
    output: Output = "normal"
    panel: bool = False
    scale: str = "image"
    report: bool = False
    command: list[str] = field(default_factory=list)
    ray: str | None = None
    ray_workers: int | None = None

    @property
    def chatty(self) -> bool:
        """Whether progress bars, spinners and tables are shown."""
        return self.output == "normal"


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: stop now, keeping what is written (every file is already whole)."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__()
        self.exit_code = exit_code


@dataclass
class RunSummary:
    """How a run went; what ``--json`` prints.

    Attributes:
        out_dir: the output folder.
        total: inputs found over all shards.
        inputs: inputs of this run (this shard).
        explained, skipped: inputs explained now, and left out as already done.
        maps: maps written.
        failures: one line per input (or argument) that failed.
        interrupted: the exit code of the signal that stopped the run (130 Ctrl-C, 143 SIGTERM), or 0.
    """

    out_dir: Path
    total: int = 0
    inputs: int = 0
    explained: int = 0
    skipped: int = 0
    maps: int = 0
    failures: list[str] = field(default_factory=list)
    interrupted: int = 0
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some inputs failed (the others done), 130/143 interrupted."""
        return self.interrupted or (1 if self.failures else 0)

    def as_json(self) -> str:
        return json.dumps({"out": str(self.out_dir), "inputs_total": self.total, "inputs": self.inputs,
                           "explained": self.explained, "skipped": self.skipped, "maps": self.maps,
                           "failed": len(self.failures), "failures": self.failures,
                           "left_out": len(self.left_out), "left_out_files": self.left_out, "notes": self.notes,
                           "interrupted": bool(self.interrupted), "exit_code": self.exit_code,
                           "seconds": round(self.seconds, 2)})

    def closing_line(self) -> str:
        """``12 map(s) of 4 input(s) written to heatmaps/, 1 skipped, 0 failed, in 3.2 s``."""
        return (f"{self.maps} map(s) of {self.explained} input(s) written to {self.out_dir}, {self.skipped} "
                f"skipped, {len(self.failures)} failed, in {self.seconds:.1f} s")


class Run:
    """One run's inputs, their progress and its summary.

    Expands and orders the inputs (``cli/jobs.py``), reports each input that
    fails in one line and goes on with the others, leaves out what
    ``--skip-existing`` finds done, loads pictures batch by batch under a
    progress bar, and says at the end how it went (also after Ctrl-C / SIGTERM,
    which the runners catch as :class:`Interrupted`).
    """

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self.started = time.monotonic()
        left_out: list[str] = []
        jobs, total, failures = plan_jobs(request.inputs, request.recursive, request.shard, Path(request.out),
                                          left_out)
        self.summary = RunSummary(Path(request.out), total=total, inputs=len(jobs), left_out=left_out)
        if left_out and request.verbose and request.output != "json":
            for line in left_out:
                console.stderr.print(f"left out: {escape(line)}", soft_wrap=True, highlight=False)
        elif left_out:
            self.note(f"{len(left_out)} file(s) in the folders are left out (not images, broken links, "
                      "linked folders, earlier outputs); --verbose lists them")
        for failure in failures:
            self.fail(failure)
        if not total:
            raise HeatmapError("no images to explain; pass image files, folders or glob patterns")
        self.jobs = jobs
        self.devices: set[str] = set()  # what explained the maps on a Ray cluster

    def fail(self, message: str) -> None:
        self.summary.failures.append(message)
        console.say_failed(message)

    def note(self, message: str) -> None:
        """One line on stderr about something the user should know (in the JSON summary with --json)."""
        self.summary.notes.append(message)
        if self.request.chatty:
            console.stderr.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True, highlight=False)

    def leave_out_done(self, is_done: Callable[[Job], bool]) -> None:
        """Drop the jobs ``is_done(job)`` says are complete (``--skip-existing``)."""
        remaining = [job for job in self.jobs if not is_done(job)]
        self.summary.skipped = len(self.jobs) - len(remaining)
        self.jobs = remaining
        if self.summary.skipped and self.request.chatty:
            console.stderr.print(f"{self.summary.skipped} input(s) already done in {self.request.out}; skipped")

    @contextmanager
    def progress(self) -> Iterator[Callable[[int], None]]:
        """A progress bar over this run's inputs (none when quiet or for one input); yields ``advance(n)``."""
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console.stderr,
                      disable=not self.request.chatty or len(self.jobs) <= 1, transient=True) as progress:
            task = progress.add_task(self.request.method, total=len(self.jobs))
            yield lambda count: progress.advance(task, count)

    def batches(self, batch_size: int) -> Iterator[list[tuple[Job, Image.Image]]]:
        """Lists of ``(job, picture)``; an unreadable file is reported and left out."""
        from heatmap.inputs import load_image

        batches = [self.jobs[i:i + batch_size] for i in range(0, len(self.jobs), batch_size)]
        with self.progress() as advance:
            for batch in batches:
                loaded = []
                for job in batch:
                    try:
                        loaded.append((job, load_image(job.path)))
                    except HeatmapError as error:
                        self.fail(str(error))
                if loaded:
                    yield loaded
                advance(len(batch))

    def finish(self) -> RunSummary:
        summary = self.summary
        summary.seconds = time.monotonic() - self.started
        if self.request.output == "json":
            console.say_json(summary.as_json())
        if not summary.interrupted and self.request.chatty and (summary.explained or summary.skipped):
            # the counts and the time; a failure's line, below, stays the last word
            console.stderr.print(escape(summary.closing_line()), soft_wrap=True, highlight=False)
        if summary.interrupted:
            console.say_error(f"interrupted after {summary.explained} of {len(self.jobs)} input(s); files "
                              "already written are complete: rerun with --skip-existing to finish")
        elif summary.failures and not summary.explained:
            skipped = f" ({summary.skipped} already done, skipped)" if summary.skipped else ""
            console.stderr.print(f"[red]{len(summary.failures)} input(s) failed[/]; no input was explained"
                                 f"{escape(skipped)}.")
        elif summary.failures:
            console.stderr.print(f"[red]{len(summary.failures)} input(s) failed[/]; the others were written.")
        return summary


def run_classifier(request: ClassifierRequest) -> RunSummary:
    """Run a classifier command."""
    if request.targets and request.top_k != 1:
        raise UsageError("--target and --top-k exclude each other: name the classes, or ask for the top K")

    def load() -> Any:
        from heatmap.models import load

        # with --ray the cluster explains: this copy only names the model, its classes and files
        return load(request.model, request.checkpoint, "cpu" if request.ray else request.device)

    return _run(request, load,
                request.model or "the default model", weights=request.checkpoint)


def run_clip(request: ClipRequest) -> RunSummary:
    """Run ``heatmap clip``."""
    if not request.texts:
        raise UsageError("give at least one --text (or --texts-file) to explain the images against")

    def load() -> Any:
        from heatmap.models import load_clip

        return load_clip(request.model, request.pretrained, "cpu" if request.ray else request.device)

    return _run(request, load,
                request.model or "ViT-B-32 (openai)", weights=request.pretrained)


def _run(request: ClassifierRequest | ClipRequest, load: Callable[[], Any], what: str,
         weights: str | Path | None) -> RunSummary:
    """Load the model, leave out what is done, explain batch by batch, write, summarise.

    ``weights``: the local checkpoint, or the pretrained tag or file, as given (None: the name says it).
    With ``--ray`` the cluster is joined in the background from the start, and left at the end.
    """
    if not request.ray:
        return _run_here_or_on(None, request, load, what, weights)
    from heatmap.distributed.ray import joined

    with joined(request.ray) as cluster:
        return _run_here_or_on(cluster, request, load, what, weights)


def _run_here_or_on(cluster: Any, request: ClassifierRequest | ClipRequest, load: Callable[[], Any], what: str,
                    weights: str | Path | None) -> RunSummary:
    """:func:`_run` in this process (``cluster`` None) or on a Ray cluster being joined."""
    from heatmap.explainers.registry import method as find_method
    from heatmap.explainers.registry import resolve_options

    # Options, inputs and the output folder are checked before torch is even imported:
    # a typo is reported at once, not after seconds of imports and model loading.
    clip = isinstance(request, ClipRequest)
    method = find_method(request.method)
    options = resolve_options(method, request.options, clip=clip)
    run = Run(request)
    ensure_writable(Path(request.out))
    from heatmap.outputs import check_manifest

    check_manifest(Path(request.out))
    if request.scale == "batch" and (request.shard or request.skip_existing or request.ray):
        raise UsageError("--scale batch colours every map of the run by one range, so it needs the whole run at "
                         "once, in this process: leave out --shard, --skip-existing and --ray, or use --scale image")
    if request.shard and not run.jobs:
        # a job array with more shards than inputs: nothing to load, nothing to write
        shard = request.shard
        run.note(f"shard {shard.index}/{shard.count} has no inputs ({run.summary.total} input(s) over all "
                 f"{shard.count} shards); nothing to do")
        return run.finish()

    from heatmap.explainers.driver import Driver
    from heatmap.models import weights_identity
    from heatmap.outputs import (
        OverlayWriter,
        ResultWriter,
        configuration_tag,
        remove_stale_temporaries,
        repair_manifest,
    )
    from heatmap.pipeline import Pipeline

    with _loading(request, what):
        driver = Driver(load(), method, precision=request.precision, **request.options)
    if isinstance(request, ClipRequest):
        pipeline = Pipeline(driver, texts=request.texts)
        for text in pipeline.truncated_texts():
            run.note(f"text {shown_text(text, quoted=True)} is longer than the model's context: only its beginning "
                     "is explained (manifest: truncated)")
        several = len(request.texts) > 1
    else:
        # checked once the model is loaded (its classes are known) and before any image is read
        check_targets(driver.adapter, request.targets)
        pipeline = Pipeline(driver, targets=request.targets, top_k=request.top_k)
        several = len(pipeline.targets or []) > 1 or request.top_k > 1
    if method.class_agnostic and several:
        run.note(f"{method.name} is class-agnostic: every target of an image gets the same map")
    model_name = driver.adapter.name
    identity = weights_identity(request.model, weights, clip=clip)
    # the overlay's settings make files too: recorded in each manifest line, and an input
    # whose overlay was drawn otherwise is not done (its new overlay has a name of its own)
    overlay = {**OverlayWriter(request.colormap, request.alpha, request.overlay_size).settings,
               **({"panel": True} if request.panel else {})}
    if request.skip_existing:
        run.leave_out_done(_done_test(request, DoneMaps(request.out, model_name, identity, request.method, options,
                                                        pipeline.precision, overlay=overlay), pipeline.targets))
    tag = configuration_tag({"model": model_name, "weights": identity, "kind": "clip" if clip else "classifier",
                             "method": request.method, "options": options, "precision": pipeline.precision})
    writer = ResultWriter(request.out, model_name, _writers(request, model_name, None), tag)
    remove_stale_temporaries(writer.out_dir)
    repaired = repair_manifest(writer.out_dir)
    if repaired:
        run.note(f"{writer.out_dir / 'manifest.jsonl'}: removed {len(repaired)} broken line(s) an interrupted run "
                 f"left (line {', '.join(map(str, repaired))})")
    common = {"weights": identity, "precision": pipeline.precision, "options": driver.options, "overlay": overlay}
    entries: list[dict[str, Any]] = []
    explained: list[tuple[Job, list[MapRecord]]] = []
    try:
        if cluster:
            _run_on_ray(run, request, cluster, _file_settings(request, writer, common), entries)
        else:
            for job, picture, row in _explained_here(run, request, pipeline):
                if request.scale == "batch":  # written once every map of the run is known
                    explained.append((job, row))
                else:
                    _write_input(run, writer, job, picture, row, common, entries)
        if request.scale == "batch" and explained:
            value_range = run_range(row for _, row in explained)
            writer.writers = _writers(request, model_name, value_range)
            common["overlay"] = {**overlay, "scale": "batch", "value_range": list(value_range)}
            _write_batch(run, writer, explained, common, entries)
    except Interrupted as stop:
        run.summary.interrupted = stop.exit_code
    if request.chatty:
        if clip:
            _print_clip_summary(entries, writer.out_dir)
        else:
            _print_classifier_summary(entries, writer.out_dir)
    summary = run.finish()
    _record_run(request, summary, _device_name(driver.adapter.device) if not request.ray else
                f"ray {request.ray}: {', '.join(sorted(run.devices)) or 'none'}", model_name, identity,
                pipeline.precision, driver.options)
    if request.report and not summary.interrupted:
        _write_report(request)
    return summary


ExplainedHere = Iterator[tuple[Job, "Image.Image", "list[MapRecord]"]]


def _explained_here(run: Run, request: RunRequest, pipeline: Any) -> ExplainedHere:
    """Each readable input with its picture and records, explained in this process batch by batch."""
    for loaded in run.batches(pipeline.forward_batch_size(request.batch_size)):
        for job, picture in loaded:
            for note in pipeline.picture_notes(str(job.path), picture):
                run.note(note)
        records = pipeline.explain([picture for _, picture in loaded])
        for (job, picture), row in zip(loaded, records, strict=True):
            yield job, picture, row


def _file_settings(request: RunRequest, writer: Any, common: dict[str, Any]) -> Any:
    """What a Ray actor needs to write the files this run's writer would."""
    from heatmap.distributed.ray import FileSettings

    return FileSettings(str(writer.out_dir.resolve()), writer.model, writer.tag, common, request.colormap,
                        request.alpha, request.overlay_size, request.panel, _panel_top_k(request))


def _run_on_ray(run: Run, request: RunRequest, cluster: Any, files: Any, entries: list[dict[str, Any]]) -> None:
    """``--ray``: the cluster's actors explain the inputs and write their files; here each input's manifest lines
    are appended once its files are whole, in input order, as a plain run appends them."""
    from heatmap.distributed.ray import explained_on_ray
    from heatmap.outputs import MANIFEST, append_manifest_line

    explainer: dict[str, Any] = {"method": request.method, "model": request.model, "device": request.device,
                                 "precision": request.precision, "options": request.options, "files": files}
    if isinstance(request, ClipRequest):
        explainer.update(texts=request.texts, pretrained=request.pretrained)
    else:
        assert isinstance(request, ClassifierRequest)
        explainer.update(targets=request.targets, top_k=request.top_k,
                         checkpoint=None if request.checkpoint is None else str(request.checkpoint.resolve()))
    with _status(request, f"joining Ray ({request.ray})..."):
        cluster.wait()
    results = explained_on_ray([(job.path, job.stem) for job in run.jobs], explainer, request.ray_workers,
                               request.batch_size)
    with closing(results), run.progress() as advance:  # closed at once, also when stopped
        for result in results:
            advance(1)
            for note in result.notes:
                run.note(note)
            if result.error:
                run.fail(result.error)
                continue
            for entry in result.entries:
                append_manifest_line(Path(files.out) / MANIFEST, entry)
                entries.append(entry)
                run.summary.maps += 1
            run.summary.explained += 1
            run.devices.add(result.device)


def _write_report(request: RunRequest) -> None:
    """``--report``: the folder's page, after the run (a page that cannot be written loses no map)."""
    from heatmap.report import write_run_report

    try:
        page = write_run_report(Path(request.out))
    except (HeatmapError, OSError) as error:
        console.say_failed(f"cannot write the report of {request.out}: {error}")
        return
    if request.chatty:
        console.stderr.print(f"report: {escape(str(page))}", highlight=False, soft_wrap=True)


def _writers(request: RunRequest, model: str, value_range: tuple[float, float] | None) -> list[Any]:
    """The run's file writers: map, overlay, token strip, and the panel when asked for."""
    from heatmap.outputs import run_writers

    return run_writers(request.method, model, request.colormap, request.alpha, request.overlay_size, value_range,
                       request.panel, _panel_top_k(request))


def _panel_top_k(request: RunRequest) -> int:
    return request.top_k if isinstance(request, ClassifierRequest) and not request.targets else 1


def _write_input(run: Run, writer: Any, job: Job, picture: Image.Image | None,
                 row: list[MapRecord], common: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Write one input's maps (all or none counted): an input whose files cannot be written fails alone."""
    from heatmap.outputs import OutputError

    try:
        for record in row:
            entries.append(writer.write(job.path, job.stem, picture, record, method=run.request.method,
                                        target_name=record.target_name, common=common))
            run.summary.maps += 1
    except OutputError as error:  # this input fails; the others go on
        run.fail(str(error))
        return
    run.summary.explained += 1


def _write_batch(run: Run, writer: Any, explained: list[tuple[Job, list[MapRecord]]], common: dict[str, Any],
                 entries: list[dict[str, Any]]) -> None:
    """``--scale batch``: every input's files, each picture read again (the run keeps maps, not pictures)."""
    from heatmap.inputs import load_image

    for job, row in explained:
        try:
            picture = load_image(job.path)
        except HeatmapError as error:  # changed or removed since it was explained
            run.fail(str(error))
            continue
        _write_input(run, writer, job, picture, row, common, entries)


def run_range(rows: Iterator[list[MapRecord]] | Any) -> tuple[float, float]:
    """The lowest and highest value over every map of the run: ``--scale batch``'s one range."""
    low, high = float("inf"), float("-inf")
    for row in rows:
        for record in row:
            low, high = min(low, float(record.heatmap.min())), max(high, float(record.heatmap.max()))
    return low, high


def _done_test(request: ClassifierRequest | ClipRequest, done: DoneMaps,
               targets: list[int] | None) -> Callable[[Job], bool]:
    """Whether a job is done (``--skip-existing``): every text, every class asked for, or the top K classes."""
    if isinstance(request, ClipRequest):
        texts = request.texts
        return lambda job: done.has_targets(job.path, "text", texts)
    if targets:
        return lambda job: done.has_targets(job.path, "target", targets)
    top_k = request.top_k
    return lambda job: done.has_top_k(job.path, top_k)


def check_targets(adapter: Any, targets: list[str]) -> None:
    """Check every target names a class of ``adapter``; an unknown name lists a small model's classes.

    Raises:
        UsageError: the adapter's message, with the class names when there are at most ``LISTED_LABELS``.
    """
    for target in targets:
        try:
            adapter.class_index(str(target))
        except UsageError as error:
            labels = adapter.labels
            if str(target).lstrip("-").isdigit() or not labels or len(labels) > LISTED_LABELS:
                raise
            raise UsageError(f"{error} (its classes: {', '.join(labels)})") from None


def shown_text(text: str, quoted: bool = False) -> str:
    """``text`` as tables and notes show it: whole when short, else its beginning, "…" and its length."""
    if len(text) <= SHOWN_TEXT:
        return repr(text) if quoted else text
    beginning = repr(text[:SHOWN_TEXT]) if quoted else text[:SHOWN_TEXT]
    return f"{beginning}… ({len(text)} characters)"


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check a file can be written there, or say what to do.

    Raises:
        HeatmapError: naming the folder and the file system's reason.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # created new under an unpredictable name (O_EXCL, never through a link): a name
        # planted in a shared folder can neither redirect nor block the probe
        descriptor, probe = tempfile.mkstemp(prefix=f".heatmap-write-check-{os.getpid()}-", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise HeatmapError(f"cannot write to the output folder {folder}: {error.strerror or error}; "
                           "choose another --out or make it writable") from None


def _loading(request: RunRequest, what: str) -> AbstractContextManager[object]:
    return _status(request, f"loading {what}...")


def _status(request: RunRequest, message: str) -> AbstractContextManager[object]:
    return console.stderr.status(message) if request.chatty else nullcontext()


def _print_classifier_summary(entries: list[dict[str, Any]], out_dir: Path) -> None:
    """One table of the run's maps: each input named once, its targets under it (the files: manifest.jsonl)."""
    if not entries:
        return
    table = Table(title=f"{len(entries)} map(s) in {out_dir}", title_justify="left")
    table.add_column("input", overflow="ellipsis", no_wrap=True, max_width=NAME_WIDTH)
    table.add_column("target", overflow="ellipsis", no_wrap=True, max_width=NAME_WIDTH)
    for column in ("logit", "probability", "rank"):
        table.add_column(column, justify="right", no_wrap=True)
    previous = None
    for entry in entries[:SUMMARY_ROWS]:
        name = Path(entry["input"]).name
        probability = entry.get("probability")
        rank = entry.get("class_rank")
        table.add_row(escape(name) if name != previous else "", escape(f"{entry['target']} {entry['label'] or ''}"),
                      f"{entry['score']:.3f}", "" if probability is None else f"{probability:.1%}",
                      "" if rank is None else str(rank + 1))
        previous = name
    if len(entries) > SUMMARY_ROWS:
        table.caption = f"... and {len(entries) - SUMMARY_ROWS} more in manifest.jsonl"
    console.stdout.print(table)


def _print_clip_summary(entries: list[dict[str, Any]], out_dir: Path) -> None:
    """One table for every image of a CLIP run: each image named once, at most ``CLIP_TABLE_ROWS`` of its
    texts under it (its best always, in bold), at most ``SUMMARY_ROWS`` rows in all."""
    if not entries:
        return
    table = Table(title=f"{len(entries)} map(s) in {out_dir}", title_justify="left")
    table.add_column("image", overflow="ellipsis", no_wrap=True, max_width=NAME_WIDTH)
    table.add_column("text", overflow="fold", min_width=20)
    table.add_column("logit", justify="right", no_wrap=True)
    table.add_column("probability", justify="right", no_wrap=True)
    by_image: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_image.setdefault(entry["input"], []).append(entry)
    shown = 0
    for image, texts in by_image.items():
        best = max(texts, key=lambda entry: entry["logit"])
        chosen = texts[:CLIP_TABLE_ROWS] if best in texts[:CLIP_TABLE_ROWS] else [*texts[:CLIP_TABLE_ROWS - 1], best]
        for index, entry in enumerate(chosen[:max(0, SUMMARY_ROWS - table.row_count)]):
            table.add_row(escape(Path(image).name) if index == 0 else "", escape(shown_text(entry["text"])),
                          f"{entry['logit']:.2f}", f"{entry['probability']:.1%}",
                          style="bold green" if entry is best else None)
            shown += 1
    if shown < len(entries):
        table.caption = f"... and {len(entries) - shown} more texts in manifest.jsonl; each image's best in bold"
    console.stdout.print(table)


def _device_name(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _record_run(request: RunRequest, summary: RunSummary, device_name: str, model: str, weights: str | None,
                precision: str, options: dict[str, Any]) -> None:
    """Append the run's settings and outcome to ``<out>/runs.jsonl`` (what ``heatmap report`` shows at the top).

    One line per run into the folder, never rewritten: several runs into one
    folder each keep their own line.
    """
    import platform
    import sys
    from datetime import datetime, timedelta, timezone

    from heatmap import __version__
    from heatmap.outputs import RUNS, append_manifest_line

    versions = {"vit-heatmap": __version__, "python": platform.python_version()}
    for module, name in (("torch", "torch"), ("timm", "timm"), ("open_clip", "open_clip"),
                         ("transformers", "transformers")):
        if module in sys.modules:  # only the libraries the run used; none is imported for this
            versions[name] = str(getattr(sys.modules[module], "__version__", "?"))
    started = datetime.now(timezone.utc) - timedelta(seconds=summary.seconds)
    line = {"command": request.command, "cwd": os.getcwd(), "started": started.isoformat(timespec="seconds"),
            "seconds": round(summary.seconds, 2), "versions": versions, "model": model, "weights": weights,
            "kind": "clip" if isinstance(request, ClipRequest) else "classifier", "method": request.method,
            "options": options, "precision": precision, "device": device_name, "scale": request.scale,
            "inputs": summary.inputs, "explained": summary.explained, "skipped": summary.skipped,
            "maps": summary.maps, "failures": summary.failures, "exit_code": summary.exit_code}
    try:
        append_manifest_line(Path(request.out) / RUNS, json.loads(json.dumps(line, default=str)))
    except (OSError, HeatmapError) as error:  # the maps are written; a missing record loses no map
        console.say_failed(f"cannot record the run in {Path(request.out) / RUNS}: {error}")
