"""The ``heatmap`` command line.

Each method of ``heatmap.explainers.METHODS`` is a subcommand: the shared
options of ``cli/options.py`` plus the method's own. Nothing heavy is imported
until a command runs, so ``heatmap --help`` answers at once.

Exit codes: 0 all good, 1 some inputs failed (all others done) or the run
failed, 2 a usage error.
"""

import inspect
from typing import Annotated, Callable, Optional

import typer

from heatmap import __version__
from heatmap.cli import console
from heatmap.cli.options import SHARED, DiscardRatio, HeadFusion, HeadFusionOption, StartLayer
from heatmap.errors import HeatmapError
from heatmap.explainers import METHODS

app = typer.Typer(
    name="heatmap",
    help="Show what a Vision Transformer looked at: heatmaps as PNG overlays, raw .npy maps and a manifest.",
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


def execute(method: str, options: dict, inputs, model, checkpoint, target, top_k, out, device,
            batch_size, colormap, alpha, debug) -> None:
    """Run one command; turn errors into one line and an exit code."""
    try:
        from heatmap.cli.runner import RunRequest, run
        code = run(RunRequest(method=method, options=options, inputs=list(inputs), model=model,
                              checkpoint=checkpoint, targets=list(target or []), top_k=top_k, out=out,
                              device=device.value, batch_size=batch_size, colormap=colormap.value, alpha=alpha))
    except HeatmapError as error:
        if debug:
            console.stderr.print_exception()
        console.say_error(str(error))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        console.say_error("interrupted; files already written are complete")
        raise typer.Exit(130) from None
    except Exception as error:  # a bug, not the user's doing: say so in one line
        if debug:
            console.stderr.print_exception()
        console.say_error(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


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


def main() -> None:
    """The console script's entry point."""
    app()
