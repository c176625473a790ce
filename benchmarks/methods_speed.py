"""Time and peak memory of every method against the same model's forward pass and the gradient floor.

    python benchmarks/methods_speed.py [--model vit_base_patch16_224] [--batch 1 8] [--rounds 7]
                                       [--clip-model ViT-B-32] [--texts 5] [--skip-memory]
                                       [--image-size 518] [--methods rollout chefer-generic ...]

``--model vit_base_patch14_dinov2 --image-size 518`` is DINOv2-B/14 at 518 px
(1,370 tokens), with a random 1,000-class head as every model here gets.

Random weights (timing does not depend on them): ``timm.create_model(...,
pretrained=False)`` and ``open_clip.create_model(name)``, nothing downloaded.

Classifier rows (per ``--batch``), two yardsticks:

- the forward pass (no grad): what any method must at least run;
- the floor: a forward pass plus a backward pass with FROZEN weights and the
  input requiring grad, the least any gradient method does.

Every method runs through the public explainer (probe, forward, backward,
aggregation), so the ratio is what a user pays. ``transformer-attribution
(float64)`` is the same method with ``precision="float64"``.

CLIP rows (``--clip-model``; ``--clip-model none`` leaves them out): one image
against ``--texts`` texts through ``Driver(...).explain_texts(image, texts)``,
which tokenizes, runs each tower once and scores every pair. Every method runs
at "last block" (``start_layer=-1``) and "all blocks" (``start_layer=0``; the
text tower's start follows it); a method without a ``start_layer`` option runs
as it is, once. Methods that explain the image tower only (legrad, full-lrp)
leave the text tower's relevance out. A method the driver refuses for the
model (``UnsupportedModelError`` at construction) is printed as refused, with
the first clause of the refusal. Two yardsticks, on texts tokenized once
beforehand (tokenizing is part of the methods' cost, a fraction of a
millisecond):

- the forward of both towers (no grad): ``encode_image`` of the image once and
  ``encode_text`` of the T texts once, what any method must at least run;
- the floor: the same forward with FROZEN weights and the image requiring
  grad, the T logits ``logit_scale * <image, text>`` of the unit embeddings,
  then one backward pass of the image tower per text (``torch.autograd.grad``
  of logit t with respect to the image, graph retained): a gradient map per
  text needs T distinct image gradients, so one forward and T image-tower
  backward passes is the least a gradient method does for T texts. The text
  tower has no backward pass in it (nothing there requires grad): the
  methods that explain the text tower pay for that on top of the floor.

Time: all rows of a table live in ONE process and are timed in interleaved
rounds (each round times every row once, after one warm-up call each); the
figure is the median over rounds of the per-round ratio, which is what
survives the noise of a shared machine. Memory (unless ``--skip-memory``):
each row runs again in a child process of its own, so that its peak is its
own: on the CPU the peak resident size minus the size before the row was
built (model and inputs loaded; a float64 copy of the model counts), on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

FORWARD = "forward (no grad)"
FLOOR = "floor: forward + backward (frozen weights)"
FLOAT64 = "transformer-attribution (float64)"
CLIP_FORWARD = "forward of both towers (no grad)"
CLIP_FLOOR = "floor: forward of both towers + one image backward per text (frozen weights)"
TEXTS = ["a photo of a cat", "a dog on a sofa", "a red car", "two people talking", "a bowl of soup",
         "a mountain lake", "a plate of food", "a bald man"]  # as benchmarks/clip_texts.py

Rows = dict[str, Callable[[], object]]


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with no parameter requiring grad."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


IMAGE_SIZE: dict[str, int] = {}  # {"img_size": N} when --image-size is given
METHODS: list[str] = []  # --methods: only these rows (and the yardsticks); empty: every method


def model_and_images(model_name: str, batch: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The random-weight model with a 1,000-class head (frozen) and a batch of random images."""
    import timm

    torch.manual_seed(0)
    model = frozen(timm.create_model(model_name, pretrained=False, num_classes=1000, **IMAGE_SIZE).to(device))
    size = (IMAGE_SIZE["img_size"],) * 2 if IMAGE_SIZE else model.pretrained_cfg["input_size"][1:]
    images = torch.randn(batch, 3, *size, device=device)
    return model, images


def clip_model_and_inputs(model_name: str, count: int,
                          device: str) -> tuple[torch.nn.Module, torch.Tensor, list[str], torch.Tensor]:
    """The random-weight CLIP (frozen), one random image, ``count`` texts and their tokens."""
    import open_clip

    torch.manual_seed(0)
    model = frozen(open_clip.create_model(model_name).to(device))
    image = torch.randn(1, 3, *model.visual.image_size, device=device)
    texts = (TEXTS * (count // len(TEXTS) + 1))[:count]
    tokens = open_clip.get_tokenizer(model_name)(texts).to(device)
    return model, image, texts, tokens


def first_clause(message: str) -> str:
    """A refusal's first clause: up to the first ``;`` or ``, so``."""
    return message.split(";")[0].split(", so ")[0]


def explainer_rows(adapter: object, call: Callable[[object], object],
                   explainers: dict[str, tuple[str, dict]], only: str | None) -> tuple[Rows, dict[str, str]]:
    """Row name -> ``call(driver)`` for each ``(method, options)``; and row name -> why the driver refused it."""
    from heatmap.errors import UnsupportedModelError
    from heatmap.explainers.driver import Driver

    rows: Rows = {}
    refused: dict[str, str] = {}
    for row, (method, options) in explainers.items():
        if only not in (None, row):
            continue
        try:
            driver = Driver(adapter, method, **options)
        except UnsupportedModelError as error:
            refused[row] = first_clause(str(error))
            continue
        rows[row] = functools.partial(call, driver)
    return rows, refused


def build_rows(model: torch.nn.Module, images: torch.Tensor, model_name: str,
               only: str | None = None) -> tuple[Rows, dict[str, str]]:
    """Classifier: row name -> a call that does the row's work once (``only``: build that row alone); refusals."""
    from heatmap.explainers.registry import methods
    from heatmap.models import adapter_for

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def floor() -> None:
        inputs = images.detach().requires_grad_(True)
        torch.autograd.grad(model(inputs).max(dim=1).values.sum(), inputs)

    explainers: dict[str, tuple[str, dict]] = {name: (name, {"precision": "auto"}) for name in methods()
                                               if not METHODS or name in METHODS}
    if not METHODS or FLOAT64 in METHODS:
        explainers[FLOAT64] = ("transformer-attribution", {"precision": "float64"})
    explained, refused = explainer_rows(adapter_for(model, model_name), lambda driver: driver.explain(images),
                                        explainers, only)
    rows = {name: function for name, function in {FORWARD: forward, FLOOR: floor}.items() if only in (None, name)}
    return {**rows, **explained}, refused


def clip_explainers() -> dict[str, tuple[str, dict]]:
    """CLIP row name -> (method, options): last block and all blocks, or as it is without a start layer."""
    from heatmap.explainers.registry import methods

    explainers: dict[str, tuple[str, dict]] = {}
    for name, method in methods().items():
        if "start_layer" in method.defaults:
            explainers[f"{name}, last block"] = (name, {"start_layer": -1})
            explainers[f"{name}, all blocks"] = (name, {"start_layer": 0})
        else:
            explainers[name] = (name, {})
    return explainers


def build_clip_rows(model: torch.nn.Module, image: torch.Tensor, texts: list[str], tokens: torch.Tensor,
                    model_name: str, only: str | None = None) -> tuple[Rows, dict[str, str]]:
    """CLIP: row name -> a call that does the row's work once (``only``: build that row alone); refusals."""
    from heatmap.models import adapter_for

    def forward() -> None:
        with torch.no_grad():
            model.encode_image(image)
            model.encode_text(tokens)

    def floor() -> None:
        inputs = image.detach().requires_grad_(True)
        image_embedding = model.encode_image(inputs, normalize=True)
        text_embedding = model.encode_text(tokens, normalize=True)
        logits = model.logit_scale.exp() * image_embedding @ text_embedding.T  # [1, T]
        count = logits.shape[1]
        for t in range(count):
            torch.autograd.grad(logits[0, t], inputs, retain_graph=t + 1 < count)

    explained, refused = explainer_rows(adapter_for(model, model_name),
                                        lambda driver: driver.explain_texts(image, texts), clip_explainers(), only)
    rows = {name: function for name, function in {CLIP_FORWARD: forward, CLIP_FLOOR: floor}.items()
            if only in (None, name)}
    return {**rows, **explained}, refused


def interleaved_ratios(rows: Rows, rounds: int, device: str, forward: str = FORWARD,
                       floor: str = FLOOR) -> dict[str, dict]:
    """Per row: median seconds, and the medians of the per-round ratios to the forward and to the floor."""
    def timed(function: Callable[[], object]) -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for function in rows.values():
        function()  # warm-up: allocator, lazy initialisation
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, function in rows.items():
            seconds[name].append(timed(function))
    return {name: {"seconds": statistics.median(times),
                   "x_forward": statistics.median(t / f for t, f in zip(times, seconds[forward], strict=True)),
                   "x_floor": statistics.median(t / f for t, f in zip(times, seconds[floor], strict=True))}
            for name, times in seconds.items()}


def peak_resident_bytes() -> int:
    """This process's peak resident size (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork and exec, so a child of a large parent would see no growth at all."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_mib(args: argparse.Namespace) -> float:
    """Extra peak MiB of one row, built and run in this process (a child's), over the model and inputs."""
    row, device = args.memory_row, args.device
    if args.memory_clip:
        model, image, texts, tokens = clip_model_and_inputs(args.clip_model, args.texts, device)
        build = functools.partial(build_clip_rows, model, image, texts, tokens, args.clip_model)
    else:
        model, images = model_and_images(args.model, args.batch[0], device)
        build = functools.partial(build_rows, model, images, args.model)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = peak_resident_bytes()
    function = build(only=row)[0][row]  # a float64 copy of the model counts
    function()
    function()
    peak = torch.cuda.max_memory_allocated() if cuda else peak_resident_bytes()
    return (peak - before) / 2**20


def child_memory(args: argparse.Namespace, rows: list[str], batch: int, clip: bool) -> dict[str, float]:
    """Row -> extra peak MiB, each row measured in a child process of its own."""
    memory = {}
    for row in rows:
        command = [sys.executable, __file__, "--model", args.model, "--batch", str(batch), "--device", args.device,
                   "--clip-model", args.clip_model, "--texts", str(args.texts), "--memory-row", row,
                   *(["--image-size", str(args.image_size)] if args.image_size else [])]
        child = subprocess.run(command + (["--memory-clip"] if clip else []), capture_output=True, text=True,
                               check=True)
        memory[row] = json.loads(child.stdout.strip().splitlines()[-1])["extra_mib"]
    return memory


def progress(label: str, timing: dict[str, dict]) -> None:
    """The timings as soon as they are known, on stderr (the tables on stdout wait for the memory)."""
    for row, figures in timing.items():
        print(f"timing | {label} | {row} | {figures['seconds']:.3f} | {figures['x_forward']:.2f} | "
              f"{figures['x_floor']:.2f} |", file=sys.stderr, flush=True)


def print_table(label: str, timing: dict[str, dict], refused: dict[str, str], memory: dict[str, float] | None,
                floor: str) -> None:
    """One table row per timed row, then the refused ones."""
    for row, figures in timing.items():
        cells = (f"| {label} | {row} | {figures['seconds']:.3f} | {figures['x_forward']:.2f} | "
                 f"{figures['x_floor']:.2f} |")
        if memory is not None:
            floor_share = memory[row] / (memory[floor] or float("nan"))
            cells += f" {memory[row]:.0f} | {floor_share:.2f} |"
        print(cells, flush=True)
    for row, why in refused.items():
        print(f"| {label} | {row} | refused: {why} |" + " |" * (4 if memory is not None else 2), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip-model", default="ViT-B-32", help="an open_clip model name; 'none' for no CLIP rows")
    parser.add_argument("--texts", type=int, default=5, help="texts the CLIP image is explained against")
    parser.add_argument("--skip-memory", action="store_true", help="time only (no child process per row)")
    parser.add_argument("--skip-classifier", action="store_true", help="CLIP rows only")
    parser.add_argument("--image-size", type=int, help="the classifier's input side in pixels (default: its own)")
    parser.add_argument("--methods", nargs="+", default=[], help="only these classifier rows (and the yardsticks)")
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)  # one row's memory, in a child process
    parser.add_argument("--memory-clip", action="store_true", help=argparse.SUPPRESS)  # ... a CLIP row's
    args = parser.parse_args()
    if args.image_size:
        IMAGE_SIZE["img_size"] = args.image_size
    METHODS.extend(args.methods)
    if args.memory_row:
        print(json.dumps({"extra_mib": peak_mib(args)}))
        return

    memory_columns = "" if args.skip_memory else " extra peak MiB | x floor's MiB |"
    rule = "|---|---|---|---|---|" + ("" if args.skip_memory else "---|---|")
    import heatmap

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
          f"median of {args.rounds} interleaved rounds; heatmap from {heatmap.__file__}\n")
    if not args.skip_classifier:
        print(f"{args.model}\n\n| batch | row | seconds | x forward | x floor |{memory_columns}\n{rule}")
        for batch in args.batch:
            model, images = model_and_images(args.model, batch, args.device)
            rows, refused = build_rows(model, images, args.model)
            timing = interleaved_ratios(rows, args.rounds, args.device)
            del rows, model, images
            progress(str(batch), timing)
            memory = None if args.skip_memory else child_memory(args, list(timing), batch, clip=False)
            print_table(str(batch), timing, refused, memory, FLOOR)
        print()
    if args.clip_model.lower() != "none":
        print(f"{args.clip_model} (CLIP), 1 image x {args.texts} texts\n\n"
              f"| image x texts | row | seconds | x forward | x floor |{memory_columns}\n{rule}")
        model, image, texts, tokens = clip_model_and_inputs(args.clip_model, args.texts, args.device)
        rows, refused = build_clip_rows(model, image, texts, tokens, args.clip_model)
        timing = interleaved_ratios(rows, args.rounds, args.device, CLIP_FORWARD, CLIP_FLOOR)
        del rows, model, image
        progress(f"1 x {args.texts}", timing)
        memory = None if args.skip_memory else child_memory(args, list(timing), 1, clip=True)
        print_table(f"1 x {args.texts}", timing, refused, memory, CLIP_FLOOR)


if __name__ == "__main__":
    main()
