"""The options of the explaining commands, as Typer parameters.

The shared ones are written here; each method's own are generated from its
registration (``heatmap.explainers.registry``). No torch here: these are read
by ``heatmap --help``.
"""

import inspect
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer

from heatmap.cli.help import BATCH, MESSAGES, METHOD, MODEL, OUTPUTS, TARGETS
from heatmap.explainers.registry import Method, Option
from heatmap.render import COLORMAPS


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Scale(str, Enum):
    image = "image"
    batch = "batch"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"


# the choices are render.COLORMAPS, read at run time: mypy takes only literal members, so it sees none
Colormap = Enum("Colormap", {name: name for name in COLORMAPS}, type=str)  # type: ignore[misc]
DEFAULT_COLORMAP = Colormap("jet")

Inputs = Annotated[list[Path], typer.Argument(
    metavar="IMAGES", help="Image files, folders of images (sorted) or glob patterns.", show_default=False)]
Out = Annotated[Path, typer.Option(
    "--out", "-o", rich_help_panel=OUTPUTS, file_okay=False, metavar="DIR", help="Output folder.")]
DeviceOption = Annotated[Device, typer.Option(
    rich_help_panel=MODEL, help="auto picks cuda, then mps, then cpu.")]
PrecisionOption = Annotated[Precision, typer.Option(rich_help_panel=MODEL,
    help="dtype of the explanation: auto = the wider of float32 and the model's (a bfloat16 model in float32); "
    "float64 explains a float64 copy of the model, for maps that do not depend on round-off.")]
BatchSize = Annotated[int, typer.Option(rich_help_panel=BATCH,
    min=1, metavar="N",
    help="Images per forward pass on a GPU; on CPU each image runs alone, so maps are byte-identical.")]
ColormapOption = Annotated[Colormap, typer.Option(rich_help_panel=OUTPUTS, help="Colormap of the overlay.")]
Alpha = Annotated[float, typer.Option(rich_help_panel=OUTPUTS,
    min=0.0, max=1.0, metavar="0..1", help="Opacity of the heatmap over the image.")]
OverlaySize = Annotated[int, typer.Option(rich_help_panel=OUTPUTS,
    min=0, metavar="PIXELS",
    help="Longest side of the overlay PNG in pixels (the picture is scaled down to it); 0: the picture's own size.")]
Panel = Annotated[bool, typer.Option(
    "--panel", rich_help_panel=OUTPUTS, help="Also write each map's labelled picture (<name>.panel.png): the input "
    "with the crop the model saw, the overlay, a colour bar, the class or text, score, probability and rank.")]
ScaleOption = Annotated[Scale, typer.Option(
    rich_help_panel=OUTPUTS, help="Colour range of overlays and panels: image = each map's own minimum to maximum; "
    "batch = one range for every map of the run, so a weak map (an absent class) looks weak.")]
Report = Annotated[bool, typer.Option(
    "--report", rich_help_panel=OUTPUTS, help="At the end, write <out>/report.html: every map of the folder on "
    "one page (see heatmap report).")]
Debug = Annotated[bool, typer.Option("--debug", rich_help_panel=MESSAGES, help="Show the full traceback on errors.")]
Recursive = Annotated[bool, typer.Option(
    "--recursive", "-r", rich_help_panel=BATCH, help="Search folders in their subfolders too.")]
SkipExisting = Annotated[bool, typer.Option(
    "--skip-existing", rich_help_panel=BATCH, help="Resume: leave out inputs whose maps for the same model, "
    "weights, method, options and targets, with overlays of the same --colormap, --alpha and --overlay-size, "
    "are already in "
    "--out (manifest line and whole files).")]
Shard = Annotated[Optional[str], typer.Option(rich_help_panel=BATCH,
    metavar="K/N", help="Process only the K-th of N slices of the sorted inputs (K = 1..N), so that N jobs "
    "split one folder with no overlap and no gap.", show_default=False)]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray", rich_help_panel=BATCH, metavar="ADDRESS", help="Explain on a Ray cluster and write here, the same "
    "files and manifest: 'local' starts one on this machine, 'auto' joins the one 'ray start' runs, or "
    "ray://HOST:10001. Every node must read the inputs and write --out at the same paths. Needs "
    "vit-heatmap[ray].",
    show_default=False)]
RayWorkers = Annotated[Optional[int], typer.Option(
    min=1, rich_help_panel=BATCH, metavar="N", help="With --ray: model copies (Ray actors). Default: one per GPU of "
    "the cluster, or one per node.", show_default=False)]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=MESSAGES, help="No progress bar and no table; errors still go to stderr.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", rich_help_panel=MESSAGES, help="Name every file of the folders that is left out.")]
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=MESSAGES,
    help="No progress bar; print a machine-readable summary (JSON) on stdout instead of tables.")]


def shared_options(
    inputs: Inputs,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME", rich_help_panel=MODEL,
        help="'demo' (shipped, offline), a timm name (vit_base_patch16_224[.tag]), "
        "hf-hub:org/name, or a Hugging Face transformers repo id (google/vit-base-patch16-224) or "
        "save_pretrained folder. Default: vit_base_patch16_224 from the local cache.", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, metavar="FILE", rich_help_panel=MODEL,
        help="Local .safetensors / .pt / .pth weights for --model's architecture.")] = None,
    target: Annotated[Optional[list[str]], typer.Option(
        "--target", "-t", metavar="CLASS", rich_help_panel=TARGETS,
        help="Class to explain, as an index or a label; repeat for several. "
        "Default: the top-1 prediction.", show_default=False)] = None,
    top_k: Annotated[int, typer.Option(
        min=1, metavar="K", rich_help_panel=TARGETS,
        help="Explain the K highest-scoring classes of each image.")] = 1,
    out: Out = Path("heatmaps"),
    device: DeviceOption = Device.auto,
    precision: PrecisionOption = Precision.auto,
    batch_size: BatchSize = 8,
    colormap: ColormapOption = DEFAULT_COLORMAP,
    alpha: Alpha = 0.5,
    overlay_size: OverlaySize = 2048,
    panel: Panel = False,
    scale: ScaleOption = Scale.image,
    report: Report = False,
    recursive: Recursive = False,
    skip_existing: SkipExisting = False,
    shard: Shard = None,
    ray: RayAddress = None,
    ray_workers: RayWorkers = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    json: Json = False,
    debug: Debug = False,
) -> None:
    """Never called: its signature is the shared part of each classifier command's."""


def clip_options(
    inputs: Inputs,
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", metavar="TEXT", rich_help_panel=TARGETS,
        help="A text to explain the images against; repeat for several.",
        show_default=False)] = None,
    texts_file: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, metavar="FILE", rich_help_panel=TARGETS,
        help="A file of texts, one per line (blank lines skipped).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME", rich_help_panel=MODEL,
        help="'demo' (shipped, offline), an open_clip name, or a Hugging Face transformers CLIP/SigLIP repo id "
        "(openai/clip-vit-base-patch32) or save_pretrained folder. Default: ViT-B-32 "
        "with the openai weights, from the local cache.", show_default=False)] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        metavar="TAG|FILE", rich_help_panel=MODEL,
        help="A pretrained tag of --model (openai, laion2b_s34b_b79k, ...) or a local checkpoint file.",
        show_default=False)] = None,
    # its choices are set from the registry
    method: Annotated[Any, typer.Option(rich_help_panel=METHOD, help="The method.")] = None,
    start_layer: Annotated[Optional[int], typer.Option(
        metavar="LAYER", rich_help_panel=METHOD,
        help="First block used in both towers (-1 = last only). Default: the method's; "
        "chefer-generic uses the last block, as the authors' CLIP notebook.", show_default=False)] = None,
    text_start_layer: Annotated[Optional[int], typer.Option(
        metavar="LAYER", rich_help_panel=METHOD,
        help="First block of the text tower, when it differs from --start-layer.",
        show_default=False)] = None,
) -> None:
    """Never called: its signature is the head of ``heatmap clip``'s; the tail is the classifiers' (``--out`` on)."""


SHARED = inspect.signature(shared_options).parameters
_TAIL = list(SHARED)[list(SHARED).index("out"):]  # --out, --device, ... --debug: every explaining command's
CLIP_SHARED = {**inspect.signature(clip_options).parameters, **{name: SHARED[name] for name in _TAIL}}


def _choices(name: str, values: Iterable[str]) -> type[Enum]:
    # the functional API makes a class; mypy reads the call as an instance
    return cast(type[Enum], Enum(name, {value: value for value in values}, type=str))


def _typer_parameter(option: Option, default: Any, help_text: str) -> inspect.Parameter:
    """One method option as a keyword parameter with its Typer annotation."""
    kind: Any = type(option.default)
    if option.choices is not None:
        kind = _choices(option.name.title().replace("_", ""), option.choices)
        default = kind(default) if default is not None else None
    if default is None:
        kind = Optional[kind]
    # a number's metavar is its last word (--start-layer LAYER, --discard-ratio RATIO); choices are listed
    metavar = None if option.choices is not None else option.name.rsplit("_", 1)[-1].upper()
    annotation = Annotated[kind, typer.Option(option.flag, metavar=metavar, help=help_text, rich_help_panel=METHOD,
                                              show_default=default is not None)]
    return inspect.Parameter(option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=annotation)


def method_parameters(method: Method) -> list[inspect.Parameter]:
    """The Typer parameters of ``method``'s own options (``--head-fusion``, ``--start-layer``, ...)."""
    return [_typer_parameter(option, option.default, option.help) for option in method.options]


def clip_method_parameters(methods: Iterable[Method]) -> list[inspect.Parameter]:
    """``heatmap clip``'s method options: every method's, each optional (None: the method's default).

    The start layers are ``clip``'s own (both towers), so they are left out here.
    """
    by_name: dict[str, tuple[Option, list[str]]] = {}
    for method in methods:
        for option in method.options:
            if option.name != "start_layer":
                by_name.setdefault(option.name, (option, []))[1].append(method.name)
    return [_typer_parameter(option, None, f"{', '.join(users)}: {option.help} Default: the method's.")
            for option, users in by_name.values()]


def method_choices(methods: Iterable[Method]) -> type[Enum]:
    """``clip --method``'s choices: every registered method."""
    return _choices("ClipMethod", (method.name for method in methods))
