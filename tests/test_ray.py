"""Ray Data: ``HeatmapExplainer`` on a local 2-CPU cluster, and ``--ray local`` runs that write what a plain run writes.

The ``--ray`` runs are real processes (a Ray cluster is started and stopped by
each); the plain runs they are compared with run in this process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.console import console_script
from helpers.demo_runs import scene_folder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TEXTS = ["a star", "a red heart"]


def ray_run(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``heatmap ARGS... --ray local`` in a new process."""
    return subprocess.run([sys.executable, "-m", "heatmap.cli", *map(str, args), "--ray", "local"], capture_output=True,
                          text=True, timeout=timeout)


def folder_with_a_bad_image(tmp_path: Path, count: int) -> Path:
    """``count`` demo scenes and ``broken.png``, which is no image."""
    images = tmp_path / "images"
    images.mkdir()
    scene_folder(images, count)
    (images / "broken.png").write_bytes(b"not an image at all")
    return images


def assert_same_folder(plain: Path, on_ray: Path) -> None:
    """Every file byte-identical (maps, overlays, token strips) and the same manifest, line for line."""
    names = sorted(path.name for path in plain.iterdir() if path.name != "runs.jsonl")
    assert names == sorted(path.name for path in on_ray.iterdir() if path.name != "runs.jsonl")
    assert any(name.endswith(".npy") for name in names)
    for name in names:
        assert (plain / name).read_bytes() == (on_ray / name).read_bytes(), name


def test_a_classifier_run_on_ray_writes_what_a_plain_run_writes_and_a_bad_image_fails_alone(tmp_path):
    images = folder_with_a_bad_image(tmp_path, 6)
    plain = console_script("chefer-generic", images, "--model", "demo", "--top-k", "2", "-o", tmp_path / "plain", "-q")
    on_ray = ray_run("chefer-generic", images, "--model", "demo", "--top-k", "2", "-o", tmp_path / "ray", "-q")
    assert plain.returncode == on_ray.returncode == 1, on_ray.stderr  # 1: an input failed, the others written
    assert "broken.png: not an image PIL can read" in on_ray.stderr
    assert_same_folder(tmp_path / "plain", tmp_path / "ray")
    record = json.loads((tmp_path / "ray" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["device"] == "ray local: cpu" and record["explained"] == 6 and len(record["failures"]) == 1


def test_a_clip_run_on_ray_writes_what_a_plain_run_writes(tmp_path):
    images = scene_folder(tmp_path, 4)
    args = ["clip", images, "--model", "demo", "--method", "transformer-attribution", "--panel", "-q"]
    for text in TEXTS:
        args += ["--text", text]
    assert console_script(*args, "-o", tmp_path / "plain").returncode == 0
    on_ray = ray_run(*args, "-o", tmp_path / "ray")
    assert on_ray.returncode == 0, on_ray.stderr
    assert_same_folder(tmp_path / "plain", tmp_path / "ray")


def test_a_stopped_ray_run_resumes_with_skip_existing(tmp_path):
    images = scene_folder(tmp_path, 200)
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "heatmap.cli", "rollout", images, "--model", "demo", "-o", out, "-q",
               "--ray", "local"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # what a scheduler sends first
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "rerun with --skip-existing" in stderr
    done = manifest.read_text().count("\n")
    assert 1 <= done < 200

    resumed = ray_run("rollout", images, "--model", "demo", "-o", out, "--skip-existing", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] == done and summary["explained"] == 200 - done
    assert console_script("rollout", images, "--model", "demo", "-o", tmp_path / "plain", "-q").returncode == 0
    assert_same_folder(tmp_path / "plain", out)


def test_the_explainer_on_ray_data_gives_a_plain_runs_maps(tmp_path):
    """``map_batches(HeatmapExplainer)`` over decoded images and over encoded bytes: the plain pipeline's maps."""
    import ray.data

    from heatmap.distributed.ray import HeatmapExplainer, explained_on_ray
    from heatmap.errors import HeatmapError
    from heatmap.explainers.driver import Driver
    from heatmap.inputs import load_image
    from heatmap.models import load
    from heatmap.pipeline import Pipeline

    images = folder_with_a_bad_image(tmp_path, 3)
    good = sorted(path for path in images.iterdir() if path.name != "broken.png")
    pipeline = Pipeline(Driver(load("demo", device="cpu"), "grad-rollout"), top_k=2)
    # CPU maps are byte-identical for one thread count (a backward pass sums in another order with another):
    # here one thread, as the actor's one CPU gives it (the other CPU reads the images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {str(path): [record.heatmap for record in pipeline.explain([load_image(path)])[0]]
                    for path in good}
    finally:
        torch.set_num_threads(threads)
    constructor = {"method": "grad-rollout", "model": "demo", "top_k": 2, "device": "cpu"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        decoded = ray.data.read_images([str(path) for path in good], include_paths=True, mode="RGB")
        encoded = ray.data.read_binary_files(str(images), include_paths=True)
        for dataset in (decoded, encoded):
            rows = dataset.map_batches(HeatmapExplainer, fn_constructor_kwargs=constructor,
                                       compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                                       batch_size=2).take_all()
            maps: dict[str, list[np.ndarray]] = {}
            for row in rows:
                if Path(row["path"]).name == "broken.png":
                    assert "not an image PIL can read" in row["error"] and row["map"].size == 0
                    continue
                assert row["error"] == "" and json.loads(row["record"])["rank"] in (0, 1)
                maps.setdefault(str(Path(row["path"]).resolve()), []).append(row["map"])
            assert sorted(maps) == sorted(str(path.resolve()) for path in good)
            for path in good:
                for got, want in zip(maps[str(path.resolve())], expected[str(path)], strict=True):
                    np.testing.assert_array_equal(got, want)
        # an actor that cannot start fails the run in one line, with what it raised
        with pytest.raises(HeatmapError, match="the Ray cluster failed: .*unknown model 'no-such-model'"):
            list(explained_on_ray([(good[0], "scene")], {"method": "rollout", "model": "no-such-model"}, 1, 1))
    finally:
        ray.shutdown()


def test_the_explainer_called_directly_reads_paths_and_fails_a_bad_input_alone(tmp_path):
    from heatmap.distributed.ray import COLUMNS, HeatmapExplainer

    images = folder_with_a_bad_image(tmp_path, 2)
    paths = sorted(str(path) for path in images.iterdir())
    explainer = HeatmapExplainer("rollout", "demo", device="cpu", top_k=3)
    batch = explainer({"path": np.array(paths), "id": np.array(["a", "b", "c"])})
    assert set(batch) == set(COLUMNS)
    assert list(batch["id"]) == ["a", "b", "b", "b", "c", "c", "c"]  # input order; 3 maps per good input
    assert "broken.png" in batch["error"][0] and all(error == "" for error in batch["error"][1:])
    assert list(batch["target"][1:4]) != [-1] * 3 and batch["map"][1].shape == batch["map"][4].shape


def test_without_ray_the_option_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray now fails
    images = scene_folder(tmp_path, 1)
    result = console_script("rollout", images, "--model", "demo", "-o", tmp_path / "out", "--ray", "local")
    assert result.returncode == 1
    assert "pip install 'vit-heatmap[ray]'" in result.stderr


def test_scale_batch_is_refused_with_ray_before_anything_loads(tmp_path):
    images = scene_folder(tmp_path, 1)
    result = console_script("rollout", images, "--model", "demo", "-o", tmp_path / "out", "--ray", "local",
                            "--scale", "batch")
    assert result.returncode == 2 and "--ray" in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
