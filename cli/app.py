"""The ``heatmap`` command line.

Each method of ``heatmap.explainers.METHODS`` is a subcommand: the shared
options of ``cli/options.py`` plus the method's own. Nothing heavy is imported
until a command runs, so ``heatmap --help`` answers at once.

Exit codes: 0 all good, 1 some inputs failed (all others done) or the run
failed, 2 a usage error, 130 stopped by Ctrl-C (143 by SIGTERM).
"""

import inspect
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from heatmap import __version__
from heatmap.cli import console
from heatmap.cli.options import (SHARED, Alpha, BatchSize, Colormap, ColormapOption, Debug, Device, DeviceOption,
                                 DiscardRatio, HeadFusion, HeadFusionOption, Inputs, Json, Out, Precision,
                                 PrecisionOption, Quiet, Recursive, Shard, SkipExisting, StartLayer)
from heatmap.comparison import Thresholds
from heatmap.errors import HeatmapError
from heatmap.explainers import METHODS

app = typer.Typer(
    name="heatmap",
    help="Show what a Vision Transformer or a CLIP model looked at: heatmaps as PNG overlays, "
    "raw .npy maps and a manifest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
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


def classifier_command(method: str) -> Callable:
    """Register ``function`` (the method's own options) as a subcommand with the shared options."""

    def register(function: Callable) -> Callable:
        own = list(inspect.signature(function).parameters.values())
        shared = list(SHARED.values())

        def command(**kwargs):
            shared_values = {name: kwargs.pop(name) for name in SHARED}
            options = {name: getattr(value, "value", value) for name, value in kwargs.items()}
            execute(method, options, **shared_values)

        command.__signature__ = inspect.Signature(shared[:1] + own + shared[1:])
        command.__name__ = function.__name__
        app.command(method, help=f"{METHODS[method].summary}\n\n{inspect.getdoc(function)}",
                    no_args_is_help=True)(command)
        return function

    return register


def execute(method: str, options: dict, inputs, model, checkpoint, target, top_k, out, device, precision,
            batch_size, colormap, alpha, recursive, skip_existing, shard, quiet, json, debug) -> None:
    """Run one classifier command."""
    from heatmap.cli.runner import ClassifierRequest, run_classifier

    def run() -> int:
        request = ClassifierRequest(method=method, options=options, inputs=list(inputs), model=model, out=out,
                                    device=device.value, precision=precision.value, batch_size=batch_size,
                                    colormap=colormap.value,
                                    alpha=alpha, checkpoint=checkpoint, targets=list(target or []), top_k=top_k,
                                    **batch_options(recursive, skip_existing, shard, quiet, json))
        return run_classifier(request).exit_code

    exit_with(run, debug)


def batch_options(recursive: bool, skip_existing: bool, shard: Optional[str], quiet: bool, json: bool) -> dict:
    """The shared options of unattended runs, as ``RunRequest`` fields."""
    from heatmap.cli.jobs import Shard as InputShard

    return {"recursive": recursive, "skip_existing": skip_existing,
            "shard": InputShard.parse(shard) if shard is not None else None,
            "output": "json" if json else "quiet" if quiet else "normal"}


def exit_with(run: Callable[[], int], debug: bool) -> None:
    """Call ``run``; exit with its code, turning errors into one line and an exit code.

    Ctrl-C and SIGTERM (a scheduler's stop) end the run at once: the runner
    keeps what is written (every file is whole) and exits 130 or 143.
    """
    from heatmap.cli.runner import Interrupted

    def stop(signum, _frame):
        raise Interrupted(128 + signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)} \
        if in_main_thread else {}
    try:
        code = run()
    except HeatmapError as error:
        if debug:
            console.stderr.print_exception()
        console.say_error(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt as interrupt:
        console.say_error("interrupted; files already written are complete")
        raise typer.Exit(getattr(interrupt, "exit_code", 130)) from None
    except Exception as error:  # a bug, not the user's doing: say so in one line
        if debug:
            console.stderr.print_exception()
        console.say_error(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise typer.Exit(code)


ClipMethod = Enum("ClipMethod", {name: name for name in METHODS}, type=str)
_defaults = {name: method.defaults for name, method in METHODS.items()}


@classifier_command("rollout")
def rollout(
    head_fusion: HeadFusionOption = HeadFusion(_defaults["rollout"]["head_fusion"]),
    discard_ratio: DiscardRatio = _defaults["rollout"]["discard_ratio"],
    start_layer: StartLayer = _defaults["rollout"]["start_layer"],
):
    """Multiplies each block's head-fused attention (plus identity, rows normalised) from the start layer on."""


@classifier_command("grad-rollout")
def grad_rollout(
    discard_ratio: DiscardRatio = _defaults["grad-rollout"]["discard_ratio"],
    start_layer: StartLayer = _defaults["grad-rollout"]["start_layer"],
):
    """Rollout of each block's attention weighted by its gradient, negatives clamped."""


@classifier_command("chefer-generic")
def chefer_generic(
    start_layer: StartLayer = _defaults["chefer-generic"]["start_layer"],
):
    """R = I, then R += mean_h((dA * A)+) @ R for each block from the start layer on."""


@classifier_command("transformer-attribution")
def transformer_attribution(
    start_layer: StartLayer = _defaults["transformer-attribution"]["start_layer"],
):
    """LRP relevance of each block's attention times its gradient, rolled out (CVPR 2021)."""


@app.command("clip", no_args_is_help=True)
def clip(
    inputs: Inputs,
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", help="A text to explain the images against; repeat for several.", show_default=False)] = None,
    texts_file: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, help="A file of texts, one per line (blank lines skipped).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="'demo' (shipped, offline) or an open_clip name. Default: ViT-B-32 "
        "with the openai weights, from the local cache.", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        help="A pretrained tag of --model (openai, laion2b_s34b_b79k, ...) or a local checkpoint file.",
        show_default=False)] = None,
    method: Annotated[ClipMethod, typer.Option(help="The method.")] = ClipMethod("chefer-generic"),
    start_layer: Annotated[Optional[int], typer.Option(
        help="First block used in both towers (-1 = last only). Default: the method's; "
        "chefer-generic uses the last block, as the authors' CLIP notebook.", show_default=False)] = None,
    text_start_layer: Annotated[Optional[int], typer.Option(
        help="First block of the text tower, when it differs from --start-layer.", show_default=False)] = None,
    head_fusion: Annotated[Optional[HeadFusion], typer.Option(
        help="rollout: how to fuse heads. Default: mean.", show_default=False)] = None,
    discard_ratio: Annotated[Optional[float], typer.Option(
        min=0.0, help="rollout, grad-rollout: fraction of smallest entries set to 0.", show_default=False)] = None,
    out: Out = Path("heatmaps"),
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    batch_size: BatchSize = 8,
    colormap: ColormapOption = Colormap.jet,
    alpha: Alpha = 0.5,
    recursive: Recursive = False,
    skip_existing: SkipExisting = False,
    shard: Shard = None,
    quiet: Quiet = False,
    json: Json = False,
    debug: Debug = False,
):
    """Image-text relevance for CLIP: which parts of each image matched each text, and which words mattered.

    Writes per image and text the raw map (.npy), an overlay (.png), the text with its word pieces shaded by relevance (.tokens.png) and a manifest line; prints each image's logits and probabilities over the texts.
    """
    from heatmap.cli.runner import ClipRequest, run_clip

    def run() -> int:
        texts = list(text or [])
        if texts_file is not None:
            texts += [line.strip() for line in texts_file.read_text().splitlines() if line.strip()]
        options = {name: getattr(value, "value", value) for name, value in (
            ("start_layer", start_layer), ("text_start_layer", text_start_layer),
            ("head_fusion", head_fusion), ("discard_ratio", discard_ratio)) if value is not None}
        return run_clip(ClipRequest(method=method.value, options=options, inputs=list(inputs), model=model,
                                    out=out, device=device.value, precision=precision.value, batch_size=batch_size,
                                    colormap=colormap.value, alpha=alpha, pretrained=pretrained, texts=texts,
                                    **batch_options(recursive, skip_existing, shard, quiet, json))).exit_code

    exit_with(run, debug)


_thresholds = Thresholds()


@app.command("compare", no_args_is_help=True)
def compare(
    baseline: Annotated[Path, typer.Argument(
        exists=True, file_okay=False, help="Output folder of the reference run (e.g. committed).", show_default=False)],
    candidate: Annotated[Path, typer.Argument(
        exists=True, file_okay=False, help="Output folder of the run to check.", show_default=False)],
    max_diff: Annotated[float, typer.Option(
        min=0.0, help="Largest allowed |difference| of the two maps, each scaled to max |value| = 1.")
    ] = _thresholds.max_diff,
    min_corr: Annotated[float, typer.Option(
        min=-1.0, max=1.0, help="Smallest allowed Pearson correlation of the two maps.")] = _thresholds.min_corr,
    min_top_iou: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Smallest allowed overlap (IoU) of the cells holding each map's top 10%.")
    ] = _thresholds.min_top_iou,
    report: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Write a JUnit XML report here: one test case per entry.", show_default=False)] = None,
    diff_dir: Annotated[Optional[Path], typer.Option(
        file_okay=False, help="Write baseline | candidate | difference pictures of the failed entries here.",
        show_default=False)] = None,
    quiet: Quiet = False,
    json: Json = False,
    debug: Debug = False,
):
    """Compare two output folders entry by entry: fails (exit 1) when maps drifted, or entries are missing or extra.

    Entries are paired by input, model, method, options and target. For each pair: the largest difference,
    the correlation and the top-10% overlap of the two maps, and the change of the target score.
    """
    from heatmap.cli.compare import CompareRequest, run_compare

    request = CompareRequest(baseline, candidate, Thresholds(max_diff, min_corr, min_top_iou), report, diff_dir,
                             "json" if json else "quiet" if quiet else "normal")
    exit_with(lambda: run_compare(request), debug)


def main() -> None:
    """The console script's entry point."""
    app()
