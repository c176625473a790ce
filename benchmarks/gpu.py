"""Images per second and peak memory of every method on a GPU, and CUDA maps against CPU maps.

    python benchmarks/gpu.py [--batch 1 64] [--rounds 3] [--time-limit 240] [--json gpu.json]
    python benchmarks/gpu.py --device cpu --smoke      # a tiny configuration, to check the script on a CPU

One prepared run, under 5 minutes on one GPU. Random weights (timing does not
depend on them), nothing downloaded: ViT-B/16 at 224
(``vit_base_patch16_224``) and DINOv2-B/14 at 518 (``vit_base_patch14_dinov2``,
or ``vit_base_patch14_reg4_dinov2`` where the installed timm lacks it), both
with a 1,000-class head.

Rows per model and batch, as in benchmarks/methods_speed.py:

- the forward pass (no grad): what any method must at least run;
- the floor: a forward pass plus a backward pass with FROZEN weights and the
  input requiring grad, the least any gradient method does;
- every registered method through the public explainer,
  ``Driver(adapter_for(model), method, precision=...).explain(images, top_k=1)``.
  A method the driver refuses for the model (``UnsupportedModelError``) is
  printed as refused, one that runs out of GPU memory as out of memory.

Two precisions: ``float32`` (a float32 model, TF32 off for matmuls and cuDNN),
and ``bf16 model, explained in float32`` (``model.to(torch.bfloat16)``, the
forward and the floor in bfloat16; the methods run with ``precision="auto"``,
so the driver explains in float32 on a converted copy of the model, which is
made when the driver is built and counts in the row's memory).

Time: all rows of a table (one model, batch and precision) are timed in
interleaved rounds (each round times every row once, CUDA-synchronised),
after one warm-up call each; the figures are the medians over rounds of the
images per second and of the per-round ratio to the floor. From the time a
table's warm-up calls took, it is timed in as many of ``--rounds`` rounds as
end by ``--time-limit`` seconds into the run (default 240, leaving time for
the CUDA-against-CPU maps), at least one: each table's heading says how
many. Memory: on CUDA, each row's
``torch.cuda.max_memory_allocated`` over its warm-up call (driver built
inside it), after ``torch.cuda.reset_peak_memory_stats``, minus the memory
allocated before (model and inputs loaded); not measured on the CPU.

CUDA against CPU: ViT-B/16 at 224, batch 2 (seeded inputs, the same random
weights, float32), each method explained on CUDA and on the CPU for the CPU
run's top class; the three metrics of ``heatmap compare``
(``heatmap.compare.metrics.compare_maps``: max-diff, corr, top-iou; the worst
over the images) and whether they pass its default thresholds.

The output is markdown (device, torch version, command line, then the
tables); ``--json FILE`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

FORWARD = "forward (no grad)"
FLOOR = "floor: forward + backward (frozen weights)"
FLOAT32 = "float32"
BF16 = "bf16 model, explained in float32"
OUT_OF_MEMORY = "out of memory"
VIT = ("vit_base_patch16_224", 224)
DINOV2 = (("vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"), 518)
SMOKE = ("vit_tiny_patch16_224", 224)

Rows = dict[str, Callable[[], object]]


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with no parameter requiring grad."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def available(names: str | tuple[str, ...]) -> str:
    """The first of ``names`` the installed timm knows."""
    import timm

    for name in (names,) if isinstance(names, str) else names:
        if timm.list_models(name):
            return name
    raise SystemExit(f"none of {names} is in timm {timm.__version__}")


def create(model_name: str, size: int, device: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The random-weight model (seeded, frozen, 1,000 classes) at ``size`` pixels."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, img_size=size, num_classes=1000)
    return frozen(model.to(device=device, dtype=dtype))


def seeded_images(batch: int, size: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch of random images, the same for every run with the same shape."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=generator).to(device=device, dtype=dtype)


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def first_clause(message: str) -> str:
    """A refusal's first clause: up to the first ``;`` or ``, so``."""
    return message.split(";")[0].split(", so ")[0]


def row_builders(model: torch.nn.Module, images: torch.Tensor, model_name: str,
                 precision: str) -> dict[str, Callable[[], Callable[[], object]]]:
    """Row name -> a builder that returns the call doing the row's work once (a method's builds its driver)."""
    from heatmap.explainers.driver import Driver
    from heatmap.explainers.registry import methods
    from heatmap.models import adapter_for

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def floor() -> None:
        inputs = images.detach().requires_grad_(True)
        torch.autograd.grad(model(inputs).max(dim=1).values.float().sum(), inputs)

    adapter = adapter_for(model, model_name)

    def method_row(name: str) -> Callable[[], object]:
        driver = Driver(adapter, name, precision=precision)
        return functools.partial(driver.explain, images, top_k=1)

    builders: dict[str, Callable[[], Callable[[], object]]] = {FORWARD: lambda: forward, FLOOR: lambda: floor}
    for name in methods():
        builders[name] = functools.partial(method_row, name)
    return builders


def warm_rows(builders: dict[str, Callable[[], Callable[[], object]]],
              device: str) -> tuple[Rows, dict[str, float | None], dict[str, str]]:
    """Build each row and run it once: the rows that ran, their extra peak MiB (CUDA), and why the others did not."""
    from heatmap.errors import UnsupportedModelError

    rows: Rows = {}
    memory: dict[str, float | None] = {}
    failed: dict[str, str] = {}
    for name, build in builders.items():
        synchronize(device)
        if is_cuda(device):
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        try:
            function = build()
            function()
            synchronize(device)
        except UnsupportedModelError as error:
            failed[name] = f"refused: {first_clause(str(error))}"
            continue
        except torch.cuda.OutOfMemoryError:
            failed[name] = OUT_OF_MEMORY
            function = None  # let go of the driver's copy, if any, before the next row
            torch.cuda.empty_cache()
            continue
        rows[name] = function
        memory[name] = (torch.cuda.max_memory_allocated() - before) / 2**20 if is_cuda(device) else None
    return rows, memory, failed


def interleaved(rows: Rows, rounds: int, batch: int, device: str, failed: dict[str, str]) -> dict[str, dict]:
    """Per row: median seconds, images per second and ratio to the floor over ``rounds`` interleaved rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, function in rows.items():
            if name in failed:
                continue
            synchronize(device)
            start = time.perf_counter()
            try:
                function()
                synchronize(device)
            except torch.cuda.OutOfMemoryError:
                failed[name] = OUT_OF_MEMORY
                torch.cuda.empty_cache()
                continue
            seconds[name].append(time.perf_counter() - start)
    floor = seconds.get(FLOOR, [])
    timing = {}
    for name, times in seconds.items():
        if name in failed or not times:
            continue
        ratios = [t / f for t, f in zip(times, floor, strict=False)] if len(floor) == len(times) else []
        timing[name] = {"seconds": statistics.median(times),
                        "images_per_second": statistics.median(batch / t for t in times),
                        "x_floor": statistics.median(ratios) if ratios else None}
    return timing


def measure(model_name: str, size: int, batch: int, precision: str, rounds: int, device: str,
            deadline: float = float("inf")) -> dict[str, Any]:
    """One table: every row of one model, batch and precision, timed and measured; in as many of ``rounds``
    rounds (at least one) as the warm-up's time says will end before ``deadline`` (a ``perf_counter`` time)."""
    dtype = torch.bfloat16 if precision == BF16 else torch.float32
    model = create(model_name, size, device, dtype)
    images = seeded_images(batch, size, device, dtype)
    builders = row_builders(model, images, model_name, "auto" if precision == BF16 else "float32")
    order = list(builders)  # the forward, the floor, then the registry's methods
    warm_start = time.perf_counter()
    rows, memory, failed = warm_rows(builders, device)
    warm = time.perf_counter() - warm_start
    rounds = max(1, min(rounds, int((deadline - time.perf_counter()) / max(warm, 1e-9))))
    timing = interleaved(rows, rounds, batch, device, failed)
    del rows, builders, model, images
    if is_cuda(device):
        torch.cuda.empty_cache()
    results = []
    for name in order:
        if name in failed:
            results.append({"row": name, "status": failed[name]})
        elif name in timing:
            results.append({"row": name, "status": "ok", **timing[name], "extra_peak_mib": memory.get(name)})
    return {"model": model_name, "image_size": size, "batch": batch, "precision": precision, "rounds": rounds,
            "rows": results}


def worst(metrics: list[Any]) -> dict[str, float]:
    """The worst of each metric over the images (NaN stays NaN)."""
    def pick(values: list[float], choose: Callable[[list[float]], float]) -> float:
        return float("nan") if any(v != v for v in values) else choose(values)

    return {"max_diff": pick([m.max_diff for m in metrics], max), "corr": pick([m.corr for m in metrics], min),
            "top_iou": pick([m.top_iou for m in metrics], min)}


def device_against_cpu(model_name: str, size: int, batch: int, device: str) -> list[dict[str, Any]]:
    """Per method: ``heatmap compare``'s metrics of the maps on ``device`` against the maps on the CPU."""
    from heatmap.compare.metrics import MapMetrics, Thresholds, compare_maps
    from heatmap.errors import UnsupportedModelError
    from heatmap.explainers.driver import Driver
    from heatmap.explainers.registry import methods
    from heatmap.models import adapter_for

    on_cpu = create(model_name, size, "cpu")
    on_device = create(model_name, size, device)
    images = seeded_images(batch, size, "cpu")
    thresholds = Thresholds()
    results = []
    for name in methods():
        try:
            reference = Driver(adapter_for(on_cpu, model_name), name, precision="float32").explain(images, top_k=1)
            candidate = Driver(adapter_for(on_device, model_name), name, precision="float32").explain(
                images.to(device), targets=reference.targets)
        except UnsupportedModelError as error:
            results.append({"method": name, "status": f"refused: {first_clause(str(error))}"})
            continue
        metrics = [compare_maps(reference.maps[i, k].numpy(), candidate.maps[i, k].float().numpy())
                   for i in range(reference.maps.shape[0]) for k in range(reference.maps.shape[1])]
        figures = worst(metrics)
        failures = MapMetrics(**figures).failures(thresholds)
        results.append({"method": name, "status": "ok", **figures, "passes": not failures, "failures": failures})
    return results


def cell(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(tables: list[dict[str, Any]], precisions: list[str]) -> None:
    """One markdown table per model and batch, the precisions side by side."""
    groups: dict[tuple[str, int, int], dict[str, dict]] = {}
    for table in tables:
        groups.setdefault((table["model"], table["image_size"], table["batch"]), {})[table["precision"]] = table
    for (model, size, batch), by_precision in groups.items():
        rounds = ", ".join(f"{p}: {t['rounds']}" for p, t in by_precision.items())
        print(f"{model} at {size}, batch {batch} (rounds: {rounds})\n")
        header = "".join(f" {p}: images/s | x floor | extra peak MiB |" for p in precisions)
        print(f"| row |{header}\n|---|" + "---|---|---|" * len(precisions))
        names = list(dict.fromkeys(row["row"] for t in by_precision.values() for row in t["rows"]))
        for name in names:
            cells = []
            for precision in precisions:
                row = next((r for r in by_precision.get(precision, {"rows": []})["rows"] if r["row"] == name), None)
                if row is None:
                    cells.append(" - | - | - |")
                elif row["status"] != "ok":
                    cells.append(f" {row['status']} | | |")
                else:
                    cells.append(f" {cell(row['images_per_second'], 1)} | {cell(row['x_floor'], 2)} | "
                                 f"{cell(row['extra_peak_mib'])} |")
            print(f"| {name} |{''.join(cells)}")
        print()


def print_comparison(model: str, size: int, batch: int, device: str, results: list[dict[str, Any]]) -> None:
    from heatmap.compare.metrics import Thresholds

    thresholds = Thresholds()
    print(f"Maps on {device} against maps on the CPU: {model} at {size}, batch {batch}, float32, the CPU run's top "
          f"class; the worst image; `heatmap compare` defaults: max-diff <= {thresholds.max_diff:g}, "
          f"corr >= {thresholds.min_corr:g}, top-iou >= {thresholds.min_top_iou:g}\n")
    print("| method | max-diff | corr | top-iou | passes |\n|---|---|---|---|---|")
    for result in results:
        if result["status"] != "ok":
            print(f"| {result['method']} | {result['status']} | | | |")
        else:
            verdict = "yes" if result["passes"] else "no: " + "; ".join(result["failures"])
            print(f"| {result['method']} | {result['max_diff']:.2e} | {result['corr']:.6f} | "
                  f"{result['top_iou']:.3f} | {verdict} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-limit", type=float, default=240.0,
                        help="seconds into the run by which the timing rounds should end (a table gets at least one)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a tiny run ({SMOKE[0]}, batch 1, one round, no 518 model) to check the script")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    args = parser.parse_args()
    if is_cuda(args.device) and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --device cpu --smoke for a tiny check)")
    if not is_cuda(args.device) and not args.smoke:
        raise SystemExit(f"benchmarks/gpu.py times a GPU; on {args.device} run it with --smoke")

    start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.smoke:
        models, batches, rounds, compared = [SMOKE], [1], 1, SMOKE
    else:
        models, batches, rounds, compared = [VIT, (available(DINOV2[0]), DINOV2[1])], args.batch, args.rounds, VIT
    device_name = (torch.cuda.get_device_name(args.device) if is_cuda(args.device)
                   else f"CPU ({torch.get_num_threads()} threads)")
    command = "python " + shlex.join(["benchmarks/gpu.py", *sys.argv[1:]])
    print(f"{device_name}, torch {torch.__version__}, random weights, TF32 off; `{command}`\n")
    print(f"images/s: the median over interleaved rounds; x floor: the median per-round ratio to the floor "
          f"(forward + backward with frozen weights); extra peak MiB: max_memory_allocated over the row's warm-up "
          f"call minus the memory allocated before. {BF16}: the forward and the floor in bfloat16, the methods "
          f"with precision=\"auto\" on a float32 copy made by the driver (counted in its memory).\n")

    precisions = [FLOAT32, BF16]
    tables = []
    for model_name, size in models:
        for batch in batches:
            for precision in precisions:
                table = measure(model_name, size, batch, precision, rounds, args.device, start + args.time_limit)
                tables.append(table)
                print(f"{time.perf_counter() - start:.0f} s: {model_name} batch {batch} {precision} timed in "
                      f"{table['rounds']} of {rounds} round(s)", file=sys.stderr, flush=True)
    print_tables(tables, precisions)

    model_name, size = compared
    comparison = device_against_cpu(model_name, size, 2, args.device)
    print_comparison(model_name, size, 2, args.device, comparison)
    elapsed = time.perf_counter() - start
    fewer = [f"{t['model']} batch {t['batch']} {t['precision']} ({t['rounds']})" for t in tables
             if t["rounds"] < rounds]
    print(f"Whole run: {elapsed:.0f} s." + (f" Timed in fewer than {rounds} rounds to end by --time-limit "
                                             f"{args.time_limit:g} s: {'; '.join(fewer)}." if fewer else ""))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"device": device_name, "torch": torch.__version__, "command": command, "seconds": elapsed,
                       "tables": tables,
                       "device_against_cpu": {"model": model_name, "image_size": size, "batch": 2,
                                              "results": comparison}}, file, indent=1)


if __name__ == "__main__":
    main()
