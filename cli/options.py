"""The options every explaining command shares, as Typer parameters.

No torch here: these are read by ``heatmap --help``.
"""

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from heatmap.explainers import HEAD_FUSIONS
from heatmap.render import COLORMAPS


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    float64 = "float64"


Colormap = Enum("Colormap", {name: name for name in COLORMAPS}, type=str)
HeadFusion = Enum("HeadFusion", {name: name for name in HEAD_FUSIONS}, type=str)

Inputs = Annotated[list[Path], typer.Argument(
    help="Image files, folders of images (sorted) or glob patterns.", show_default=False)]
Out = Annotated[Path, typer.Option("--out", "-o", file_okay=False, help="Output folder.")]
DeviceOption = Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")]
PrecisionOption = Annotated[Precision, typer.Option(
    help="dtype of the explanation: auto = the wider of float32 and the model's (a bfloat16 model in float32); "
    "float64 explains a float64 copy of the model, for maps that do not depend on round-off.")]
BatchSize = Annotated[int, typer.Option(
    min=1, help="Images per forward pass on a GPU; on CPU each image runs alone, so maps are byte-identical.")]
ColormapOption = Annotated[Colormap, typer.Option(help="Colormap of the overlay.")]
Alpha = Annotated[float, typer.Option(min=0.0, max=1.0, help="Opacity of the heatmap over the image.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Search folders in their subfolders too.")]
SkipExisting = Annotated[bool, typer.Option(
    "--skip-existing", help="Resume: leave out inputs whose maps for the same model, weights, method, "
    "options and targets are already in --out (manifest line and whole files).")]
Shard = Annotated[Optional[str], typer.Option(
    metavar="K/N", help="Process only the K-th of N slices of the sorted inputs (K = 1..N), so that N jobs "
    "split one folder with no overlap and no gap.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table; errors still go to stderr.")]
Json = Annotated[bool, typer.Option(
    "--json", help="No progress bar; print a machine-readable summary (JSON) on stdout instead of tables.")]

StartLayer = Annotated[int, typer.Option(
    help="First block to use, counted like a Python index (-1 = the last block only).")]
DiscardRatio = Annotated[float, typer.Option(
    min=0.0, help="Fraction r of the smallest fused-attention entries set to 0, in [0, 1).")]
HeadFusionOption = Annotated[HeadFusion, typer.Option(help="How to fuse the heads of each block.")]


def shared_options(
    inputs: Inputs,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="'demo' (shipped, offline), a timm name (vit_base_patch16_224[.tag]) "
        "or hf-hub:org/name. Default: vit_base_patch16_224 from the local cache.", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        exists=True, dir_okay=False, help="Local .safetensors / .pt / .pth weights for --model's architecture.")] = None,
    target: Annotated[Optional[list[str]], typer.Option(
        "--target", "-t", help="Class to explain, as an index or a label; repeat for several. "
        "Default: the top-1 prediction.", show_default=False)] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Explain the K highest-scoring classes of each image.")] = 1,
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
    """Never called: its signature is the shared part of each command's."""


SHARED = inspect.signature(shared_options).parameters
