"""Time and peak memory of every method against the same model's forward pass and the gradient floor.

    python benchmarks/methods_speed.py [--model vit_base_patch16_224] [--batch 1 8] [--rounds 7]

Random weights (timing does not depend on them). Two yardsticks:

- the forward pass (no grad): what any method must at least run;
- the floor: a forward pass plus a backward pass with FROZEN weights and the
  input requiring grad, the least any gradient method does.

Every method runs through the public explainer (probe, forward, backward,
aggregation), so the ratio is what a user pays. ``transformer-attribution
(float64)`` is the same method with ``precision="float64"``.

Time: all rows live in ONE process and are timed in interleaved rounds
(each round times every row once, after one warm-up call each); the figure
is the median over rounds of the per-round ratio, which is what survives
the noise of a shared machine. Memory: each row runs again in a child
process of its own, so that its peak is its own: on the CPU the peak
resident size minus the size before the row was built (model and inputs
loaded; a float64 copy of the model counts), on CUDA ``torch.cuda.max_memory_allocated`` minus the memory
allocated before.
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


def model_and_images(model_name: str, batch: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The random-weight model (frozen) and a batch of random images."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval().to(device)
    images = torch.randn(batch, 3, *model.pretrained_cfg["input_size"][1:], device=device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, images


def build_rows(model: torch.nn.Module, images: torch.Tensor, model_name: str,
               only: str | None = None) -> dict[str, Callable[[], object]]:
    """Row name -> a call that does the row's work once (``only``: build that row alone)."""
    from heatmap.explainers.driver import Driver
    from heatmap.explainers.registry import methods
    from heatmap.models import adapter_for

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def floor() -> None:
        inputs = images.detach().requires_grad_(True)
        torch.autograd.grad(model(inputs).max(dim=1).values.sum(), inputs)

    rows: dict[str, Callable[[], object]] = {FORWARD: forward, FLOOR: floor}
    explainers = {name: (name, "auto") for name in methods()}
    explainers[FLOAT64] = ("transformer-attribution", "float64")
    adapter = adapter_for(model, model_name)
    for row, (method, precision) in explainers.items():
        if only in (None, row):
            rows[row] = functools.partial(Driver(adapter, method, precision=precision).explain, images)
    return {name: function for name, function in rows.items() if only in (None, name)}


def interleaved_ratios(rows: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, dict]:
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
                   "x_forward": statistics.median(t / f for t, f in zip(times, seconds[FORWARD], strict=False)),
                   "x_floor": statistics.median(t / f for t, f in zip(times, seconds[FLOOR], strict=False))}
            for name, times in seconds.items()}


def peak_resident_bytes() -> int:
    """This process's peak resident size (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork and exec, so a child of a large parent would see no growth at all."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_mib(model_name: str, row: str, batch: int, device: str) -> float:
    """Extra peak MiB of one row, built and run in this process (a child's), over the model and inputs."""
    model, images = model_and_images(model_name, batch, device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = peak_resident_bytes()
    function = build_rows(model, images, model_name, only=row)[row]  # a float64 copy of the model counts
    function()
    function()
    peak = torch.cuda.max_memory_allocated() if cuda else peak_resident_bytes()
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)  # one row's memory, in a child process
    args = parser.parse_args()
    if args.memory_row:
        print(json.dumps({"extra_mib": peak_mib(args.model, args.memory_row, args.batch[0], args.device)}))
        return

    print(f"{args.model}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| batch | row | seconds | x forward | x floor | extra peak MiB | x floor's MiB |\n"
          "|---|---|---|---|---|---|---|")
    for batch in args.batch:
        model, images = model_and_images(args.model, batch, args.device)
        timing = interleaved_ratios(build_rows(model, images, args.model), args.rounds, args.device)
        for row, figures in timing.items():
            print(f"timing | {batch} | {row} | {figures['seconds']:.3f} | {figures['x_forward']:.2f} | "
                  f"{figures['x_floor']:.2f} |", flush=True)
        memory = {}
        for row in timing:
            child = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--batch", str(batch), "--device", args.device,
                 "--memory-row", row], capture_output=True, text=True, check=True)
            memory[row] = json.loads(child.stdout.strip().splitlines()[-1])["extra_mib"]
        for row, figures in timing.items():
            floor_share = memory[row] / (memory[FLOOR] or float("nan"))
            print(f"| {batch} | {row} | {figures['seconds']:.3f} | {figures['x_forward']:.2f} | "
                  f"{figures['x_floor']:.2f} | {memory[row]:.0f} | {floor_share:.2f} |", flush=True)


if __name__ == "__main__":
    main()
