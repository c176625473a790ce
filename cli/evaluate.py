"""``heatmap eval``: the evaluation protocols over a folder of images (or a generated demo world).

Inputs, labels, masks and the output folder are checked before torch is
imported. Each image is evaluated with every method; its ``eval.jsonl``
lines are appended as soon as they exist (an interrupted run keeps them), and
an image that fails (unreadable, a label the model does not know) fails
alone. ``eval.json``, the table and ``eval.png`` summarise what was measured.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from heatmap.cli import console
from heatmap.cli.console import Output
from heatmap.errors import HeatmapError, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from heatmap.evaluation.data import EvalImage
    from heatmap.evaluation.given_maps import GivenMaps

RESULTS = ("eval.json", "eval.jsonl", "eval.png")
@dataclass
class EvalRequest:
    """What ``heatmap eval`` was asked."""

    inputs: list[Path]
    model: str | None = None
    checkpoint: Path | None = None
    pretrained: str | None = None
    clip: bool = False
    methods: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    target: str = "predicted"
    labels: Path | None = None
    masks: Path | None = None
    texts: list[str] = field(default_factory=list)
    demo_world: int | None = None
    seed: int = 0
    tolerance: int = 0
    out: Path = Path("heatmap-eval")
    batch_size: int = 64
    device: str = "auto"
    recursive: bool = False
    output: Output = "normal"
    report: bool = False  # also write <out>/report.html (``--report``)
    bootstrap: int = 1000  # resamplings of the images for each interval
    baselines: bool = True  # the random and centre rows (``--no-random`` leaves them out)
    maps: Path | None = None  # an earlier run's folder: its maps are scored, not computed (``--maps``)
    save_maps: bool = False  # keep the computed maps in <out>/maps, in the CLI's layout (``--save-maps``)


def run_eval(request: EvalRequest) -> int:
    """Run ``heatmap eval``; the exit code (1 when an image failed)."""
    from heatmap.evaluation.evaluate import protocols_to_run
    from heatmap.explainers.registry import method as find_method

    if request.maps is not None and (request.inputs or request.demo_world is not None or request.methods
                                     or request.target != "predicted" or request.labels is not None):
        raise UsageError("--maps scores the maps of an earlier run on its own images, methods and targets: "
                         "give no INPUTS, --demo-world, --method, --target or --labels with it")
    if request.maps is not None and request.save_maps:
        raise UsageError("--maps reads maps that are saved already: leave out --save-maps")
    if request.demo_world is None and not request.inputs and request.maps is None:
        raise UsageError("give images (files, folders, patterns), --demo-world N, or --maps RUN_DIR")
    if request.demo_world is not None and (request.inputs or request.labels or request.masks):
        raise UsageError("--demo-world makes its own images, labels and masks; give no INPUTS, --labels or --masks")
    if request.demo_world is not None and request.demo_world < 1:
        raise UsageError(f"--demo-world {request.demo_world}: give at least one scene")
    if request.target == "label" and request.demo_world is None and request.labels is None:
        raise UsageError("--target label needs --labels FILE (or --demo-world)")
    for method in request.methods:
        find_method(method)
    have_masks = request.masks is not None or request.demo_world is not None
    protocols = protocols_to_run(request.protocols, have_masks)
    given = None
    if request.maps is not None:
        from heatmap.evaluation.given_maps import GivenMaps

        given = GivenMaps.read(request.maps)
    clip = request.clip or bool(request.texts) or (given is not None and given.kind == "clip")
    if request.masks is not None and not request.masks.is_dir():
        raise UsageError(f"--masks {request.masks}: not a folder")
    out = Path(request.out)
    # lexists: a link planted under a result's name (even one to nowhere) counts as taken
    taken = [name for name in RESULTS if os.path.lexists(out / name)]
    if taken:
        raise UsageError(_taken(out, taken))
    from heatmap.cli.runner import ensure_writable

    ensure_writable(out)
    reservation = Reservation(out)
    try:
        paths = _collect(request, out, given)
        if clip and not request.texts and request.demo_world is None and given is None:
            raise UsageError("a CLIP is evaluated against candidate texts: give --text (or --texts-file)")
        return _evaluate(request, paths, protocols, clip, out, reservation, given)
    except BaseException:
        reservation.give_up()
        raise
    finally:
        reservation.close()


def _taken(out: Path, taken: list[str]) -> str:
    """The refusal of a folder that holds ``taken`` results (only ``eval.jsonl``: a run going on or stopped)."""
    held = ", ".join(taken) + (", of a run still going or one that was stopped" if taken == ["eval.jsonl"] else "")
    return (f"{out} already holds an evaluation ({held}); choose another --out so that no run overwrites "
            "another's results")


class Reservation:
    """``eval.jsonl``, created new before the model loads: while it exists the folder is this run's.

    A second run into the folder (started while this one loads or evaluates)
    finds it and is refused, so one folder never mixes two runs' lines. It is
    created with ``O_EXCL`` and never through a link, and its lines are
    written through the descriptor that created it.

    Raises:
        UsageError: ``eval.jsonl`` is there already.
        HeatmapError: it cannot be created.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / "eval.jsonl"
        from heatmap.outputs import CREATE_NEW

        try:
            self.descriptor = os.open(self.path, CREATE_NEW | os.O_APPEND, 0o666)
        except FileExistsError:
            raise UsageError(_taken(out, ["eval.jsonl"])) from None
        except OSError as error:
            raise HeatmapError(f"cannot create {self.path}: {error.strerror or error}; choose another --out"
                               ) from None

    def lines(self) -> TextIO:
        """``eval.jsonl`` for appending lines; closing it leaves the reservation held."""
        return os.fdopen(self.descriptor, "a", encoding="utf-8", closefd=False)

    def give_up(self) -> None:
        """After a failed start, free the folder again when no line was written (a rerun may use it)."""
        try:
            if os.fstat(self.descriptor).st_size == 0 and os.path.samestat(os.fstat(self.descriptor),
                                                                          os.lstat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass

    def close(self) -> None:
        os.close(self.descriptor)


def write_result(path: Path, data: bytes) -> None:
    """Write one of the summary files (``eval.json``, ``eval.png``) whole, never through a link."""
    from heatmap.outputs import write_atomically

    try:
        write_atomically(path, data)
    except OSError as error:
        raise HeatmapError(f"cannot write {path}: {error.strerror or error}") from None


def plot_bytes(summary: dict[str, dict[str, Any]], title: str) -> bytes:
    """``eval.png``'s bytes, drawn in memory (no name in the output folder is followed)."""
    from heatmap.evaluation.plot import curves_png

    return curves_png(summary, title)


def _collect(request: EvalRequest, out: Path, given: GivenMaps | None) -> list[Path]:
    from heatmap.inputs import collect_inputs

    if request.demo_world is not None:
        return []
    if given is not None:  # the earlier run's inputs, as it recorded them (found where it ran)
        return [Path(recorded) for recorded in given.inputs]
    paths = collect_inputs(request.inputs, recursive=request.recursive, out_dir=out)
    if not paths:
        raise UsageError("no image files found in the given inputs")
    return paths


def _evaluate(request: EvalRequest, paths: list[Path], protocols: list[str], clip: bool, out: Path,
              reservation: Reservation, given: GivenMaps | None = None) -> int:
    from heatmap.evaluation.baselines import BASELINES
    from heatmap.evaluation.data import EvalImage, read_labels, split_normalisation
    from heatmap.evaluation.demo_world import demo_world
    from heatmap.evaluation.evaluate import Evaluator, compare_methods, summarise
    from heatmap.evaluation.protocols import PixelScorer
    from heatmap.explainers.driver import unsupported
    from heatmap.explainers.registry import methods

    status = console.stderr.status("loading the model...") if request.output == "normal" else None
    if status is not None:
        status.start()
    try:
        adapter = _load(request, clip)
    finally:
        if status is not None:
            status.stop()
    pixel_transform, mean, std = split_normalisation(adapter.transform)
    texts = list(request.texts) or (given.texts if given is not None and given.kind == "clip" else [])
    world = None
    if request.demo_world is not None:
        world = demo_world(request.demo_world, request.seed, pixel_transform, clip)
        texts = texts or world.texts
    chosen = (list(given.methods) if given is not None else request.methods
              or [name for name in methods() if unsupported(methods()[name], adapter, clip) is None])
    if given is not None and adapter.name not in given.models:
        console.stderr.print(f"[yellow]note:[/] the maps in {escape(str(request.maps))} are of "
                             f"{escape(', '.join(given.models))}; they are scored with {escape(adapter.name)}",
                             soft_wrap=True, highlight=False)
    scorer = PixelScorer(adapter, mean, std, texts=texts if clip else None, batch_size=request.batch_size)
    if request.baselines:
        chosen = [*chosen, *(name for name in BASELINES if name not in chosen)]
    evaluator = Evaluator(adapter, scorer, chosen, protocols, target=request.target,
                          tolerance=request.tolerance, seed=request.seed, given=given, keep_maps=request.save_maps)
    saver = _map_saver(request, adapter, out, paths) if request.save_maps else None
    label_table = read_labels(request.labels) if request.labels is not None else {}

    # a demo world's scenes are drawn as their turn comes; a file is read then (and may fail alone)
    items: Iterable[tuple[str, EvalImage | Path]] = (((image.name, image) for image in world.images)
                                                     if world is not None else [(str(path), path) for path in paths])

    def load(item: EvalImage | Path) -> EvalImage:
        if isinstance(item, EvalImage):
            return item
        if given is not None:  # read from where the earlier run found it; named as it recorded it
            found = given.resolve(str(item))
            if found is None:
                raise HeatmapError(f"cannot find this input of {request.maps}; run from the folder that run "
                                   "ran in, or restore the file")
            return replace(_load_image(found, pixel_transform, label_table, request.masks, texts), name=str(item))
        return _load_image(item, pixel_transform, label_table, request.masks, texts)

    lines, failures = [], []
    count = len(world.images) if world is not None else len(paths)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console.stderr, disable=request.output != "normal", transient=True) as progress:
        task = progress.add_task("evaluating (images x methods)", total=count * len(chosen))
        with reservation.lines() as sink:
            for number, (name, item) in enumerate(items):
                try:
                    image = load(item)
                    own = evaluator.evaluate(image, on_method=lambda _method: progress.advance(task))
                except (HeatmapError, OSError) as error:  # this image fails; the others go on
                    failures.append(f"{name}: {error}")
                    console.say_failed(f"{name}: {error}")
                    progress.update(task, completed=(number + 1) * len(chosen))
                    continue
                for line in own:
                    sink.write(json.dumps(line.as_json()) + "\n")
                sink.flush()
                if saver is not None:
                    _save_maps(saver, evaluator, image, own, item if isinstance(item, Path) else None)
                lines.extend(own)
    summary = summarise(lines, request.bootstrap, request.seed)
    comparisons = compare_methods(lines, request.bootstrap, request.seed)
    unmasked = [line for line in lines if line.pointing is None and line.energy_pointing is None
                and line.segmentation is None]
    if unmasked and set(protocols) & {"pointing", "energy-pointing", "segmentation"} and request.output != "json":
        console.stderr.print(f"[yellow]note:[/] {len(unmasked)} of {len(lines)} line(s) have no mask for their "
                             "target (say, a predicted class that is not among the image's objects): the mask "
                             "protocols leave them out", soft_wrap=True, highlight=False)
    settings = {"model": adapter.name, "methods": chosen, "protocols": protocols, "target": request.target,
                "tolerance": request.tolerance, "batch_size": request.batch_size, "seed": request.seed,
                "inputs": [str(p) for p in request.inputs] if world is None else
                {"demo_world": request.demo_world, "seed": request.seed}, "texts": texts if clip else None,
                "labels": str(request.labels) if request.labels else None,
                "masks": str(request.masks) if request.masks else None}
    images_done = len({line.input for line in lines})
    report = {"settings": settings, "images": images_done, "failed": failures, "methods": summary,
              "comparisons": comparisons,
              "bootstrap": {"samples": request.bootstrap, "seed": request.seed, "level": 0.95,
                            "unit": "image (its targets resampled together)", "method": "percentile"}}
    write_result(out / "eval.json", (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    if lines and any(key in figures for figures in summary.values()
                     for key in ("perturbation_positive", "deletion")):
        write_result(out / "eval.png", plot_bytes(summary, title=f"{adapter.name}, {images_done} images"))
    if request.output == "json":
        console.say_json(json.dumps(report))
    elif request.output == "normal":
        print_table(summary, comparisons, images_done)
        console.stderr.print(f"eval.json, eval.jsonl{', eval.png' if (out / 'eval.png').exists() else ''} "
                             f"in {escape(str(out))}", highlight=False)
    if saver is not None:
        saver.record_run(["heatmap", "eval", *map(str, request.inputs)], "clip" if clip else "classifier",
                         images_done)
        if request.output == "normal":
            console.stderr.print(f"{saver.maps} map(s) in {escape(str(out / 'maps'))} (--save-maps)", highlight=False)
    if request.report:
        page = _write_page(out)
        if request.output == "normal":
            console.stderr.print(f"report: {escape(str(page))}", highlight=False)
    if failures and request.output != "json":
        console.stderr.print(f"[red]{len(failures)} image(s) failed[/]; the others were evaluated.")
    return 1 if failures else 0


def _map_saver(request: EvalRequest, adapter: Any, out: Path, paths: list[Path]) -> Any:
    """``--save-maps``: where eval's computed maps go, ``<out>/maps``, in the CLI's layout."""
    from heatmap.evaluation.given_maps import MapSaver
    from heatmap.models import weights_identity

    clip = request.clip or bool(request.texts)
    weights = weights_identity(request.model, request.pretrained if clip else request.checkpoint, clip=clip)
    return MapSaver(out / "maps", adapter.name, weights, str(adapter.dtype).removeprefix("torch."), inputs=paths)


def _save_maps(saver: Any, evaluator: Any, image: EvalImage, lines: list[Any], path: Path | None) -> None:
    """One image's maps, method by method, as the CLI's files and manifest lines."""
    from heatmap.evaluation.given_maps import pixels_picture
    from heatmap.outputs import target_names, text_name
    from heatmap.pipeline import MapRecord

    texts = evaluator.scorer.texts
    names = target_names(evaluator.adapter.labels) if texts is None else {}
    picture = pixels_picture(image.pixels)
    by_method: dict[str, list[Any]] = {}
    for line in lines:
        by_method.setdefault(line.method, []).append(line)
    for method, own in by_method.items():
        records = []
        for line in own:
            fields: dict[str, Any] = ({"text": texts[line.target], "text_index": line.target, "logit": line.score}
                                      if texts is not None else
                                      {"target": line.target, "label": line.label, "score": line.score})
            name = text_name(texts[line.target]) if texts is not None else names.get(line.target, str(line.target))
            records.append(MapRecord(line.raw_map.numpy(), name, None, line.target, line.label, line.score or 0.0,
                                     fields=fields))
        driver = evaluator.drivers.get(method)
        options = dict(driver.options) if driver is not None else {"seed": evaluator.seed}
        saver.save(image.name, method, options, records, picture, path)


def _write_page(out: Path) -> Path:
    """``<out>/report.html`` (``--report``).

    Raises:
        HeatmapError: when it cannot be written.
    """
    from heatmap.report import write_eval_report

    try:
        return write_eval_report(out)
    except OSError as error:
        raise HeatmapError(f"cannot write {out / 'report.html'}: {error.strerror or error}") from None


def _load(request: EvalRequest, clip: bool) -> Any:
    from heatmap.models import load, load_clip

    if clip:
        if request.checkpoint is not None:
            raise UsageError("--checkpoint is for classifiers; give a CLIP's weights with --pretrained")
        name = request.model or ("demo" if request.demo_world is not None else None)
        return load_clip(name, request.pretrained, request.device)
    if request.pretrained is not None:
        raise UsageError("--pretrained is for CLIP models (--clip or --text); give a classifier's weights "
                         "with --checkpoint")
    return load(request.model or ("demo" if request.demo_world is not None else None), request.checkpoint,
                request.device)


def _load_image(path: Path, pixel_transform: Any, label_table: dict[str, list[str]], masks: Path | None,
                texts: list[str]) -> EvalImage:
    """One input file -> :class:`EvalImage`: its pixels, labels and masks."""
    from heatmap.evaluation.data import EvalImage, image_masks, labels_of, masks_of
    from heatmap.inputs import load_image

    picture = load_image(path).convert("RGB")
    pixels = pixel_transform(picture).float()
    labels = labels_of(path, label_table)
    found = masks_of(path, masks, [*labels, *texts]) if masks is not None else {}
    size = (pixels.shape[1], pixels.shape[2])
    return EvalImage(str(path), pixels, labels, image_masks(picture.size, pixel_transform, size, found))


def print_table(summary: dict[str, dict[str, Any]], comparisons: dict[str, dict[str, Any]], images: int) -> None:
    """The evaluation's tables (``heatmap.evaluation.table``) and their legend on stdout."""
    from heatmap.evaluation.table import LEGEND, TABLE_WIDTH, tables

    # a table cut to 80 columns (a pipe, a CI log) would hide the figures: give it the room it needs
    wide = console.stdout if console.stdout.width >= TABLE_WIDTH else Console(width=TABLE_WIDTH, highlight=False)
    for table in tables(summary, comparisons, images):
        wide.print(table)
    wide.print(LEGEND, width=min(wide.width, TABLE_WIDTH))
