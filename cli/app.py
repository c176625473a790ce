"""The ``heatmap`` command line.

Each registered method (``heatmap.explainers.registry``) is a subcommand:
the shared options of ``cli/options.py`` plus the method's own, generated
from its registration. Nothing heavy is imported until a command runs, so
``heatmap --help`` answers at once.

Exit codes: 0 all good, 1 some inputs failed (all others done) or the run
failed, 2 a usage error, 130 stopped by Ctrl-C (143 by SIGTERM).
"""

import inspect
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from heatmap import __version__
from heatmap.cli import console
from heatmap.cli.console import Output
from heatmap.cli.help import BATCH, EVALUATED, METHOD, MODEL, OUTPUTS, TARGETS, GroupedCommand, examples
from heatmap.cli.options import (
    CLIP_SHARED,
    DEFAULT_COLORMAP,
    SHARED,
    Alpha,
    ColormapOption,
    Debug,
    Device,
    DeviceOption,
    Inputs,
    Json,
    Out,
    Precision,
    PrecisionOption,
    Quiet,
    Recursive,
    clip_method_parameters,
    method_choices,
    method_parameters,
)
from heatmap.compare.metrics import Thresholds
from heatmap.errors import HeatmapError, UsageError
from heatmap.explainers.registry import Method, methods

if TYPE_CHECKING:
    from heatmap.cli.jobs import Shard
    from heatmap.cli.runner import ClassifierRequest, ClipRequest

METHODS = methods()

app = typer.Typer(
    name="heatmap",
    help="Show what a Vision Transformer or a CLIP model looked at: heatmaps as PNG overlays, "
    "raw .npy maps and a manifest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: flags read "-q, --quiet", not "--quiet <bool>"; markup-free, so also quick
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        console.stdout.print(f"vit-heatmap {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Show what a Vision Transformer looked at."""


def classifier_command(method: Method) -> None:
    """Register ``method`` as a subcommand: the shared options plus its own, from its registration."""
    shared = list(SHARED.values())
    own = method_parameters(method)

    def command(**values: Any) -> None:
        from heatmap.cli.runner import run_classifier

        exit_with(lambda: run_classifier(classifier_request(method, values)).exit_code, values["debug"],
                  values["json"])

    # Typer reads the parameters from __signature__, built here from the registry; mypy knows no such attribute
    command.__signature__ = inspect.Signature(shared[:1] + own + shared[1:])  # type: ignore[attr-defined]
    command.__name__ = method.name.replace("-", "_")
    app.command(method.name, help=f"{method.summary}\n\n{method.description}", no_args_is_help=True,
                cls=GroupedCommand, epilog=examples(
                    f"heatmap {method.name} photo.jpg --top-k 3 --panel",
                    f"heatmap {method.name} sample_images/ --model demo -o runs/{method.name} --report",
                    f"heatmap {method.name} 'photos/*.jpg' --target 'tabby cat' --target 281 --skip-existing"))(command)


def classifier_request(method: Method, values: Mapping[str, Any]) -> "ClassifierRequest":
    """The request of ``heatmap <method>``, from the values of its options.

    The command's signature is built at run time (the shared options of
    ``cli/options.py`` and the method's own), so Typer hands the values over
    by name; this and :func:`clip_request` are the only readers of them.

    Raises:
        UsageError: for a malformed ``--shard``.
    """
    from heatmap.cli.runner import ClassifierRequest

    return ClassifierRequest(
        method=method.name, options={option.name: _plain(values[option.name]) for option in method.options},
        inputs=list(values["inputs"]), model=values["model"], checkpoint=values["checkpoint"],
        targets=list(values["target"] or []), top_k=values["top_k"], out=values["out"],
        device=values["device"].value, precision=values["precision"].value, batch_size=values["batch_size"],
        colormap=values["colormap"].value, alpha=values["alpha"], overlay_size=values["overlay_size"],
        recursive=values["recursive"], skip_existing=values["skip_existing"], verbose=values["verbose"],
        shard=parse_shard(values["shard"]), output=output_mode(values["quiet"], values["json"]),
        **picture_values(values))


def picture_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The request's fields every explaining command shares about pictures, records and where it runs."""
    return {"panel": values["panel"], "scale": values["scale"].value, "report": values["report"],
            "command": command_line(), "ray": values["ray"], "ray_workers": values["ray_workers"]}


def command_line() -> list[str]:
    """The command as typed (``heatmap`` or ``python -m heatmap``), or [] when called otherwise (in-process)."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    return ["heatmap", *sys.argv[1:]] if program in ("heatmap", "__main__.py") else []


def clip_request(values: Mapping[str, Any], method_options: Iterable[str]) -> "ClipRequest":
    """The request of ``heatmap clip``, from the values of its options (see :func:`classifier_request`).

    ``method_options``: the names of the methods' own options; those not
    given are left out, so each method fills in its own defaults.

    Raises:
        UsageError: for an empty text, a texts file with no text, or a malformed ``--shard``.
    """
    from heatmap.cli.runner import ClipRequest

    texts = read_texts(values["text"] or [], values["texts_file"])
    options = {name: _plain(values[name]) for name in method_options if values[name] is not None}
    for name in ("start_layer", "text_start_layer"):  # clip's own: both towers
        if values[name] is not None:
            options[name] = values[name]
    return ClipRequest(
        method=values["method"].value, options=options, inputs=list(values["inputs"]), model=values["model"],
        pretrained=values["pretrained"], texts=texts, out=values["out"], device=values["device"].value,
        precision=values["precision"].value, batch_size=values["batch_size"], colormap=values["colormap"].value,
        alpha=values["alpha"], overlay_size=values["overlay_size"], recursive=values["recursive"],
        skip_existing=values["skip_existing"], verbose=values["verbose"], shard=parse_shard(values["shard"]),
        output=output_mode(values["quiet"], values["json"]), **picture_values(values))


def _plain(value: Any) -> Any:
    """A method option's value as the registry takes it: a choice's string, else the value itself."""
    return getattr(value, "value", value)


def parse_shard(text: Optional[str]) -> "Shard | None":
    """``--shard K/N`` as a :class:`~heatmap.cli.jobs.Shard` (None: every input)."""
    from heatmap.cli.jobs import Shard

    return Shard.parse(text) if text is not None else None


def output_mode(quiet: bool, json_output: bool) -> Output:
    """What a run prints, from ``--quiet`` and ``--json`` (``--json`` wins)."""
    return "json" if json_output else "quiet" if quiet else "normal"


def exit_code(error: HeatmapError) -> int:
    """The exit code of a user error: 2 for a usage error, 1 for the rest."""
    return 2 if isinstance(error, UsageError) else 1


def exit_with(run: Callable[[], int], debug: bool, json_output: bool = False) -> None:
    """Call ``run``; exit with its code, turning errors into one line and an exit code.

    Ctrl-C and SIGTERM (a scheduler's stop) end the run at once: the runner
    keeps what is written (every file is whole) and exits 130 or 143. With
    ``--json``, a run that fails before its summary still prints one JSON
    line on stdout (``error``, ``exit_code``), so a script's ``jq`` always gets one.
    """

    def fail(message: str, code: int) -> typer.Exit:
        console.say_error(message)
        if json_output:
            console.say_json(json.dumps({"error": message, "exit_code": code}))
        return typer.Exit(code)

    from heatmap.cli.runner import Interrupted

    def stop(signum: int, _frame: FrameType | None) -> NoReturn:
        raise Interrupted(128 + signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)} \
        if in_main_thread else {}
    try:
        code = run()
    except HeatmapError as error:
        if debug:
            console.stderr.print_exception()
        raise fail(str(error), exit_code(error)) from None
    except KeyboardInterrupt as interrupt:
        raise fail("interrupted; files already written are complete", getattr(interrupt, "exit_code", 130)) from None
    except OSError as error:  # the file system said no (read-only folder, full disk, unwritable report)
        if debug:
            console.stderr.print_exception()
        where = f"{error.filename}: " if error.filename else ""
        raise fail(f"{where}{error.strerror or error}; check that the path is writable and the disk has room",
                   1) from None
    except Exception as error:  # a bug, not the user's doing: say so in one line
        if debug:
            console.stderr.print_exception()
        hint = "" if debug else " (rerun with --debug for the traceback)"
        raise fail(f"internal error: {type(error).__name__}: {error}{hint}", 1) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise typer.Exit(code)


def read_texts(given: list[str], texts_file: Path | None) -> list[str]:
    """The texts of ``--text`` and ``--texts-file``, checked, each once.

    Raises:
        UsageError: for an empty text or a texts file with no text.
    """
    texts = []
    for text in given:
        if not text.strip():
            raise UsageError("--text '' is empty; give each --text at least one word")
        texts.append(text.strip())
    if texts_file is not None:
        # utf-8-sig: a byte-order mark some editors write is not part of the first text
        from_file = [line.strip() for line in texts_file.read_text(encoding="utf-8-sig").splitlines()
                     if line.strip()]
        if not from_file:
            raise UsageError(f"the texts file {texts_file} holds no text; write one text per line")
        texts += from_file
    unique = list(dict.fromkeys(texts))
    if len(unique) < len(texts):
        duplicates = sorted({text for text in texts if texts.count(text) > 1})
        console.stderr.print(f"[yellow]note:[/] {len(texts) - len(unique)} duplicate text(s) explained once: "
                             f"{', '.join(map(repr, duplicates))}", soft_wrap=True, highlight=False, markup=True)
    return unique


def clip_command() -> None:
    """Register ``heatmap clip``: its own options, every method's options (optional), the shared ones."""
    choices = method_choices(METHODS.values())
    # an annotation made at run time for Typer (the registry's methods); no type to mypy
    method = Annotated[choices, typer.Option(  # type: ignore[valid-type]
        rich_help_panel=METHOD, help="The method.")]
    fixed = [parameter.replace(annotation=method, default=choices("chefer-generic")) if parameter.name == "method"
             else parameter for parameter in CLIP_SHARED.values()]
    own = clip_method_parameters(METHODS.values())
    option_names = [parameter.name for parameter in own]

    def command(**values: Any) -> None:
        from heatmap.cli.runner import run_clip

        exit_with(lambda: run_clip(clip_request(values, option_names)).exit_code, values["debug"], values["json"])

    command.__signature__ = inspect.Signature(fixed[:8] + own + fixed[8:])  # type: ignore[attr-defined]  # as above
    command.__name__ = "clip"
    app.command("clip", no_args_is_help=True, cls=GroupedCommand, epilog=examples(
        "heatmap clip photo.jpg --text 'a bald man' --text 'a red hat' --panel",
        "heatmap clip sample_images/shapes_000*.png --model demo --text 'a white star' --report",
        "heatmap clip photos/ --texts-file captions.txt --method legrad -o runs/clip"), help=(
        "Image-text relevance for CLIP: which parts of each image matched each text, and which words mattered."
        "\n\nWrites per image and text the raw map (.npy), an overlay (.png), the text with its word pieces "
        "shaded by relevance (.tokens.png) and a manifest line; prints one table of every image's logits and "
        "probabilities over the texts."))(command)


for _method in METHODS.values():
    classifier_command(_method)
clip_command()


@app.command("gallery", no_args_is_help=True, cls=GroupedCommand, epilog=examples(
    "heatmap gallery photo.jpg --top-k 2",
    "heatmap gallery sample_images/shapes_002_red-heart_pink-cross.png --model demo --target heart",
    "heatmap gallery photo.jpg --text 'a bald man' --method chefer-generic --method legrad --method rollout"))
def gallery(
    inputs: Inputs,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME", rich_help_panel=MODEL,
        help="As the method commands' --model, or with --text as clip's.", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, metavar="FILE", rich_help_panel=MODEL,
        help="Local weights for a classifier --model.", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        metavar="TAG|FILE", rich_help_panel=MODEL, help="A CLIP's pretrained tag or local checkpoint file.",
        show_default=False)] = None,
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    method: Annotated[Optional[list[str]], typer.Option(
        metavar="METHOD", rich_help_panel=TARGETS, help=f"A method to show ({', '.join(METHODS)}); repeat for "
        "several.", show_default="every method")] = None,
    target: Annotated[Optional[list[str]], typer.Option(
        "--target", "-t", metavar="CLASS", rich_help_panel=TARGETS,
        help="A class, as an index or a label; repeat for several (one grid each). Default: the top-1 class.",
        show_default=False)] = None,
    top_k: Annotated[int, typer.Option(
        min=1, metavar="K", rich_help_panel=TARGETS, help="One grid for each of the K highest-scoring classes.")] = 1,
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", metavar="TEXT", rich_help_panel=TARGETS,
        help="A text to explain a CLIP's images against (one grid each); repeat for several.",
        show_default=False)] = None,
    out: Out = Path("heatmaps"),
    colormap: ColormapOption = DEFAULT_COLORMAP,
    alpha: Alpha = 0.5,
    recursive: Recursive = False,
    quiet: Quiet = False,
    json: Json = False,
    debug: Debug = False,
) -> None:
    """Every method's map of each image on one labelled grid: which method to believe for this model.

    One PNG per image and target (<name>.gallery.<target>.<tag>.png): the input with the crop the model saw,
    then one overlay per method, each scaled by its own range; a method that refuses the model shows why.
    """
    from heatmap.cli.gallery import GalleryRequest, run_gallery

    def run() -> int:
        texts = read_texts(text or [], None) if text else []
        request = GalleryRequest(
            inputs=list(inputs), model=model, checkpoint=checkpoint, pretrained=pretrained, methods=list(method or []),
            targets=list(target or []), top_k=top_k, texts=texts, out=out, device=device.value,
            precision=precision.value, colormap=colormap.value, alpha=alpha, recursive=recursive,
            output=output_mode(quiet, json))
        return run_gallery(request)

    exit_with(run, debug, json)


_thresholds = Thresholds()


@app.command("compare", no_args_is_help=True, cls=GroupedCommand, epilog=examples(
    "heatmap compare snapshots/ heatmaps/",
    "heatmap compare snapshots/ heatmaps/ --max-diff 0.05 --report junit.xml --html compare.html"))
def compare(
    baseline: Annotated[Path, typer.Argument(
        exists=True, file_okay=False, help="Output folder of the reference run (e.g. committed).", show_default=False)],
    candidate: Annotated[Path, typer.Argument(
        exists=True, file_okay=False, help="Output folder of the run to check.", show_default=False)],
    max_diff: Annotated[float, typer.Option(
        min=0.0, metavar="X", help="Largest allowed |difference| of the two maps, each scaled to max |value| = 1.")
    ] = _thresholds.max_diff,
    min_corr: Annotated[float, typer.Option(
        min=-1.0, max=1.0, metavar="R", help="Smallest allowed Pearson correlation of the two maps.")
    ] = _thresholds.min_corr,
    min_top_iou: Annotated[float, typer.Option(
        min=0.0, max=1.0, metavar="IOU", help="Smallest allowed overlap (IoU) of the cells holding each map's top 10%.")
    ] = _thresholds.min_top_iou,
    report: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Write a JUnit XML report here: one test case per entry.", show_default=False)] = None,
    diff_dir: Annotated[Optional[Path], typer.Option(
        file_okay=False, help="Write baseline | candidate | difference pictures of the failed entries here.",
        show_default=False)] = None,
    html: Annotated[Optional[Path], typer.Option(
        dir_okay=False, metavar="FILE.html", help="Write the comparison's HTML page here: pass/fail and thresholds "
        "first, the failed entries first, baseline | candidate | |difference| on one colour scale.",
        show_default=False)] = None,
    quiet: Quiet = False,
    json: Json = False,
    debug: Debug = False,
) -> None:
    """Compare two output folders entry by entry: fails (exit 1) when maps drifted, or entries are missing or extra.

    Entries are paired by input, model, method, options and target. For each pair: the largest difference,
    the correlation and the top-10% overlap of the two maps, and the change of the target score.
    """
    from heatmap.cli.compare import CompareRequest, run_compare

    request = CompareRequest(baseline, candidate, Thresholds(max_diff, min_corr, min_top_iou), report, diff_dir,
                             output_mode(quiet, json), html)
    exit_with(lambda: run_compare(request), debug, json)


def _register_report() -> None:
    """``heatmap report`` (its options in ``cli/report.py``)."""
    from heatmap.cli.report import report

    app.command("report", no_args_is_help=True, cls=GroupedCommand, epilog=examples(
        "heatmap report runs/chefer-generic",
        "heatmap report runs/vit runs/deit -o models.html --embed",
        "heatmap report baseline/ candidate/ --compare -o drift.html",
        "heatmap report heatmap-eval"))(report)


_register_report()


PROTOCOL_NAMES = ("perturbation", "deletion-insertion", "road", "pointing", "energy-pointing", "segmentation", "sanity")


@app.command("eval", no_args_is_help=True, cls=GroupedCommand, epilog=examples(
    "heatmap eval --demo-world 50 --method rollout --method chefer-generic --report",
    "heatmap eval val/ --model vit_base_patch16_224 --labels labels.csv --masks masks/ -o eval-vit",
    "heatmap eval photos/ --model demo --text 'a white star' --text 'a red heart' --protocol perturbation"))
def evaluate(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Image files, folders and glob patterns (or none, with --demo-world).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", rich_help_panel=MODEL,
        metavar="NAME",
        help="demo, a timm name or a Hugging Face transformers repo id or folder; with "
        "--clip/--text an open_clip name or a transformers CLIP/SigLIP.",
        show_default="vit_base_patch16_224; demo with --demo-world")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        rich_help_panel=MODEL,
        exists=True, dir_okay=False, metavar="FILE",
        help="Local weights for a classifier --model.", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        rich_help_panel=MODEL,
        metavar="TAG|FILE", help="A CLIP's pretrained tag or local checkpoint file.", show_default=False)] = None,
    clip: Annotated[bool, typer.Option(
        "--clip", rich_help_panel=MODEL, help="The model is a CLIP (implied by --text).")] = False,
    method: Annotated[Optional[list[str]], typer.Option(
        rich_help_panel=EVALUATED,
        metavar="METHOD", help=f"A method to evaluate ({', '.join(METHODS)}); repeat for several.",
        show_default="every method the model supports")] = None,
    protocol: Annotated[Optional[list[str]], typer.Option(
        rich_help_panel=EVALUATED,
        metavar="PROTOCOL", help=f"{', '.join(PROTOCOL_NAMES)}; repeat for several.",
        show_default="perturbation, deletion-insertion, and with masks pointing, energy-pointing, segmentation; "
        "road and sanity (many more forward passes) when named")] = None,
    target: Annotated[str, typer.Option(
        rich_help_panel=EVALUATED,
        metavar="predicted|label",
        help="predicted: explain and test the model's top-1 class (a CLIP: best text); label: each label of "
             "--labels.")] = "predicted",
    labels: Annotated[Optional[Path], typer.Option(
        rich_help_panel=EVALUATED,
        exists=True, dir_okay=False, metavar="FILE", help="CSV image,label (index or name; a row per object).",
        show_default=False)] = None,
    masks: Annotated[Optional[Path], typer.Option(
        rich_help_panel=EVALUATED,
        file_okay=False, metavar="DIR",
        help="Object masks: <stem>.png, or <stem>.<label>.png per object (nonzero = object).",
        show_default=False)] = None,
    text: Annotated[Optional[list[str]], typer.Option(
        rich_help_panel=EVALUATED,
        metavar="TEXT", help="A CLIP's candidate text; repeat for several.", show_default=False)] = None,
    texts_file: Annotated[Optional[Path], typer.Option(
        rich_help_panel=EVALUATED,
        exists=True, dir_okay=False, metavar="FILE",
        help="A file of candidate texts, one per line.", show_default=False)] = None,
    demo_world: Annotated[Optional[int], typer.Option(
        rich_help_panel=EVALUATED,
        metavar="N",
        help="Evaluate on N freshly generated shapes-world scenes with labels and masks, instead of INPUTS.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        rich_help_panel=EVALUATED, metavar="N",
        help="Seeds the demo world, the random maps, the tie-breaks of the pixel rankings and the bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(
        min=10, metavar="N", rich_help_panel=EVALUATED,
        help="Resamplings of the images for each figure's 95% interval and each paired difference.")] = 1000,
    maps: Annotated[Optional[Path], typer.Option(
        exists=True, file_okay=False, metavar="RUN_DIR", rich_help_panel=EVALUATED,
        help="Score the maps of an earlier run (its manifest and .npy files) on its own images and targets, "
        "without computing them; give its --model.", show_default=False)] = None,
    save_maps: Annotated[bool, typer.Option(
        "--save-maps", rich_help_panel=OUTPUTS,
        help="Keep the maps eval computed in <out>/maps, as an explaining command writes them (compare and "
        "report read them).")] = False,
    no_random: Annotated[bool, typer.Option(
        "--no-random", rich_help_panel=EVALUATED,
        help="Leave out the random and centre rows (a uniform random map and a centred Gaussian: chance and "
        "the centre bias).")] = False,
    tolerance: Annotated[int, typer.Option(
        rich_help_panel=EVALUATED,
        min=0, metavar="PIXELS", help="The pointing game's tolerance in pixels.")] = 0,
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel=OUTPUTS,
        metavar="DIR", help="Folder for eval.json, eval.jsonl and eval.png.")] = Path("heatmap-eval"),
    batch_size: Annotated[int, typer.Option(
        rich_help_panel=BATCH, min=1, metavar="N", help="Perturbed copies per forward pass.")] = 64,
    device: DeviceOption = Device.auto,
    recursive: Annotated[bool, typer.Option(
        "--recursive", "-r", rich_help_panel=BATCH, help="Search folders in their subfolders.")
                         ] = False,
    report: Annotated[bool, typer.Option(
        "--report", rich_help_panel=OUTPUTS,
        help="Also write report.html in --out: the figures, the curves and each method's worst images.")] = False,
    quiet: Quiet = False,
    json: Json = False,
    debug: Debug = False,
) -> None:
    """How far can each method's maps be trusted? The papers' faithfulness and localisation protocols.

    Perturbation (positive and negative), deletion/insertion, ROAD, and with object masks the pointing game,
    the energy pointing game and segmentation (docs/METHODS.md, "The evaluation protocols"); the sanity
    checks (model randomisation, random class). Every figure with its 95% bootstrap interval over images,
    beside a random map and a centred Gaussian. Prints the tables and writes eval.json, eval.jsonl (one
    line per image, method and target) and eval.png.
    """
    from heatmap.cli.evaluate import EvalRequest, run_eval

    def run() -> int:
        if target not in ("predicted", "label"):
            raise UsageError(f"unknown --target {target!r}; use predicted or label")
        request = EvalRequest(
            inputs=[Path(i) for i in inputs or []], model=model, checkpoint=checkpoint, pretrained=pretrained,
            clip=clip, methods=list(method or []), protocols=list(protocol or []), target=target, labels=labels,
            masks=masks, texts=read_texts(text or [], texts_file) if (text or texts_file) else [],
            demo_world=demo_world, seed=seed, tolerance=tolerance, out=out, batch_size=batch_size,
            device=device.value, recursive=recursive, output=output_mode(quiet, json), report=report,
            bootstrap=bootstrap, baselines=not no_random, maps=maps, save_maps=save_maps)
        return run_eval(request)

    exit_with(run, debug, json)


def main() -> None:
    """The console script's entry point: a usage error is one line, like every other error (exit 2)."""
    try:
        from typer._click import exceptions as click_errors  # recent Typer vendors click
    except ImportError:
        # the same exceptions where older Typer takes them from click; mypy sees a second definition
        from click import exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as help_instead:
        console.stdout.print(help_instead.format_message(), markup=False, highlight=False)
        sys.exit(2)
    except click_errors.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "heatmap"
        console.say_error(f"{error.format_message().rstrip('.')}; see {command} --help")
        sys.exit(2)
    except typer.Abort:  # Typer's own since it vendors click (and click's before)
        console.say_error("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
