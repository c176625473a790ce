"""Explaining at scale on Ray Data: a callable class for ``Dataset.map_batches``, and the CLI's ``--ray`` runs.

:class:`HeatmapExplainer` holds one model and one method per actor (loaded
once, in its constructor) and turns a batch of images into one row per map::

    import ray
    from heatmap.distributed.ray import HeatmapExplainer

    maps = ray.data.read_images("s3://bucket/val/", include_paths=True).map_batches(
        HeatmapExplainer, fn_constructor_kwargs={"method": "chefer-generic", "model": "vit_base_patch16_224"},
        compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1, batch_size=64)

The maps are computed by the same :class:`~heatmap.pipeline.Pipeline` as a
plain run, one image per forward pass on a CPU (so each map is byte-identical
to a plain run's) and a batch per pass on a GPU. :func:`explained_on_ray` is
what ``heatmap METHOD IMAGES --ray ADDRESS`` runs: the inputs travel as paths
(every node must read them, and write the output folder, at the same paths,
as the tasks of a Slurm array do); each actor writes its inputs' files with
the CLI's own writers, and the manifest lines come back in input order for
the CLI to append, so the folder is the one a plain run writes.

Kept in ``heatmap.distributed`` rather than at ``heatmap.ray``: the
repository's root is the package, so a ``ray.py`` there would be imported in
place of Ray itself by any Python started in a checkout.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heatmap.errors import HeatmapError, UsageError

# The columns of every output row, one row per map (an input that fails has one row: its error, no map).
COLUMNS = ("id", "path", "error", "target", "score", "map", "record", "entry", "notes", "device")
NO_MAP = np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class FileSettings:
    """Where and how an actor writes each map's files, as a plain run does (``heatmap.outputs``).

    Attributes:
        out: the output folder (every node must write it at this path).
        model: the model's name, as the manifest records it.
        tag: the run's ``configuration_tag``, the last part of every file name.
        common: what every manifest line of the run says (weights, precision, options, overlay).
        colormap, alpha, overlay_size, panel, panel_top_k: how the pictures are drawn (``run_writers``).
    """

    out: str
    model: str
    tag: str
    common: dict[str, Any]
    colormap: str = "jet"
    alpha: float = 0.5
    overlay_size: int = 2048
    panel: bool = False
    panel_top_k: int = 1


class HeatmapExplainer:
    """Explains batches of images on a Ray Data actor: ``Dataset.map_batches(HeatmapExplainer, ...)``.

    Args:
        method: the method's registered name (``heatmap --help`` lists them).
        model: as ``heatmap.load`` (a classifier) or, with ``texts``, ``heatmap.load_clip`` takes it.
        checkpoint: a classifier's local weights file.
        pretrained: a CLIP's pretrained tag or local checkpoint.
        texts: explain every image against these texts (a CLIP).
        targets: a classifier's classes, by index or label (None: the ``top_k`` highest).
        top_k: how many top classes when ``targets`` is None.
        device: ``auto`` (the actor's GPU when Ray gave it one), ``cpu``, ``cuda`` or ``mps``.
        precision: ``auto``, ``float32`` or ``float64`` (docs/METHODS.md, "Precision").
        options: the method's own options (``{"discard_ratio": 0.9}``).
        files: also write each map's files (the ``.npy``, the overlay, ...) where these say; each row's
            ``entry`` is then its manifest line, for the caller to append (``heatmap.outputs.append_manifest_line``).

    A batch holds ``image`` (decoded ``[H, W, 3]`` arrays, as ``read_images``
    gives), ``bytes`` (encoded files, as ``read_binary_files`` gives) or
    ``path`` (files this node can read), and optionally ``id`` (else the path,
    else the row's place in the batch), ``name`` (what errors and the manifest
    call the input; else the path) and ``stem`` (its files' first name; else
    the path's). Each output row has the columns of :data:`COLUMNS`: the
    input's ``id`` and ``path``, ``error`` (empty, or why this input failed: it
    fails alone), the ``target`` (class index, or the text's index) and its
    ``score``, the raw ``map`` (float32 ``[gh, gw]``), ``record`` (what the
    manifest says of the target, as JSON: label, probability, rank, text,
    token relevance...), ``entry`` (the manifest line as JSON, when writing
    files; else empty) and ``notes`` (a JSON list of what the user should know
    of the picture), and the ``device`` that explained it.

    Raises:
        UsageError, UnsupportedModelError: in the constructor, for a bad
            method, option, class or model (the actor fails to start).
    """

    def __init__(self, method: str, model: str | None = None, *, checkpoint: str | Path | None = None,
                 pretrained: str | None = None, texts: Sequence[str] | None = None,
                 targets: Sequence[int | str] | None = None, top_k: int = 1, device: str = "auto",
                 precision: str = "auto", options: dict[str, Any] | None = None,
                 files: FileSettings | None = None) -> None:
        from heatmap.explainers.driver import Driver
        from heatmap.models import load, load_clip
        from heatmap.outputs import ResultWriter, run_writers
        from heatmap.pipeline import Pipeline

        adapter = (load_clip(model, pretrained, device) if texts is not None
                   else load(model, checkpoint, device))
        driver = Driver(adapter, method, precision=precision, **(options or {}))
        self.pipeline = Pipeline(driver, targets=targets, top_k=top_k, texts=texts)
        self.method = driver.method.name
        self.device = str(driver.adapter.device)
        self.files = files
        self.writer = None if files is None else ResultWriter(
            Path(files.out), files.model, run_writers(self.method, files.model, files.colormap, files.alpha,
                                                      files.overlay_size, None, files.panel, files.panel_top_k),
            files.tag)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = _batch_inputs(batch)
        pictures: list[tuple[int, Image.Image]] = []
        failed: dict[int, str] = {}
        for index, row in enumerate(inputs):
            try:
                pictures.append((index, _picture(row.source, row.name)))
            except HeatmapError as error:
                failed[index] = str(error)
        explained: dict[int, list[Any]] = {}
        step = self.pipeline.forward_batch_size(len(pictures) or 1)
        for start in range(0, len(pictures), step):
            chunk = pictures[start:start + step]
            try:
                records = self.pipeline.explain([picture for _, picture in chunk])
            except HeatmapError as error:  # a picture the model refuses: these inputs fail
                failed.update((index, str(error)) for index, _ in chunk)
                continue
            explained.update((index, row) for (index, _), row in zip(chunk, records, strict=True))
        rows: list[dict[str, Any]] = []
        for index, picture in pictures:
            if index not in failed:
                try:
                    rows.extend(self._rows(inputs[index], picture, explained[index]))
                except HeatmapError as error:  # its files cannot be written (a full disk, say): it fails alone
                    failed[index] = str(error)
        rows.extend({"id": inputs[index].id, "path": inputs[index].path, "error": message, "target": -1,
                     "score": np.nan, "map": NO_MAP, "record": "{}", "entry": "", "notes": "[]", "device": self.device}
                    for index, message in failed.items())
        order = {row.id: index for index, row in enumerate(inputs)}
        rows.sort(key=lambda row: order[row["id"]])  # stable: each input's maps stay in target order
        return _columns(rows)

    def _rows(self, row: BatchRow, picture: Image.Image, records: list[Any]) -> list[dict[str, Any]]:
        """One output row per map of an input; its files written first when asked to."""
        notes = json.dumps(self.pipeline.picture_notes(row.name, picture))
        rows = []
        for record in records:
            entry = ""
            if self.writer is not None and self.files is not None:
                entry = json.dumps(self.writer.write_files(
                    Path(row.name), row.stem, picture, record, method=self.method,
                    target_name=record.target_name, common=self.files.common))
            rows.append({"id": row.id, "path": row.path, "error": "", "target": record.target,
                         "score": record.score, "map": record.heatmap, "record": json.dumps(_record_fields(record)),
                         "entry": entry, "notes": notes, "device": self.device})
        return rows


@dataclass(frozen=True)
class BatchRow:
    """One input of a batch: its id, path ("" when none), name, file stem, and what to read the picture from."""

    id: str
    path: str
    name: str
    stem: str
    source: Any


def _batch_inputs(batch: dict[str, np.ndarray]) -> list[BatchRow]:
    for column in ("image", "bytes", "path"):
        if column in batch:
            sources = list(batch[column])
            break
    else:
        raise UsageError(f"a batch needs an 'image', 'bytes' or 'path' column; it has {', '.join(batch) or 'none'}")
    count = len(sources)
    paths = [str(path) for path in batch["path"]] if "path" in batch else [""] * count
    ids = [str(value) for value in batch["id"]] if "id" in batch else [
        path or str(index) for index, path in enumerate(paths)]
    names = [str(value) for value in batch["name"]] if "name" in batch else paths
    stems = [str(value) for value in batch["stem"]] if "stem" in batch else [
        Path(name).stem or identity for name, identity in zip(names, ids, strict=True)]
    return [BatchRow(*fields) for fields in zip(ids, paths, names, stems, sources, strict=True)]


def _picture(source: Any, name: str) -> Image.Image:
    """An RGB picture from a decoded array, encoded bytes or a path, read as a plain run reads a file."""
    from heatmap.inputs import decode_image, load_image

    if isinstance(source, np.ndarray) and source.ndim in (2, 3):
        return Image.fromarray(source.astype(np.uint8)).convert("RGB")
    if isinstance(source, bytes | bytearray | np.bytes_):
        return decode_image(io.BytesIO(bytes(source)), name or "<bytes>")
    return load_image(Path(str(source)), name=name or None)


def _record_fields(record: Any) -> dict[str, Any]:
    """What the manifest says of a map's target besides the map, as JSON (floats round-trip exactly)."""
    return {"target_name": record.target_name, "box": None if record.box is None else list(record.box),
            "label": record.label, **record.fields}


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> the batch's columns; maps of one shape stack, a failed input's empty map makes them ragged."""
    columns: dict[str, np.ndarray] = {}
    for name in COLUMNS:
        values = [row[name] for row in rows]
        if name == "map":
            shapes = {value.shape for value in values}
            columns[name] = np.stack(values) if len(shapes) == 1 and values else _objects(values)
        else:
            columns[name] = np.asarray(values)
    return columns


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


class Cluster:
    """The Ray cluster a run joins, joined in the background while the run loads its own model."""

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError:
            raise HeatmapError("--ray needs Ray Data: pip install 'vit-heatmap[ray]'") from None
        self.address = address
        self._ray = ray
        # Kept until the cluster is left: a local cluster's processes die with the thread that started them.
        self._thread = ThreadPoolExecutor(1)
        self._joining = self._thread.submit(
            ray.init, address=None if address == "local" else address, include_dashboard=False,
            log_to_driver=False, logging_level=logging.ERROR)

    def wait(self) -> None:
        """Block until joined.

        Raises:
            HeatmapError: the cluster cannot be reached.
        """
        try:
            self._joining.result()
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise HeatmapError(f"--ray {self.address}: cannot join the Ray cluster ({_one_line(error)}); start "
                               "one with 'ray start --head', or use --ray local") from None

    def leave(self) -> None:
        """Disconnect (a ``local`` cluster stops)."""
        try:
            self._joining.result()
        except Exception:  # never joined: nothing to leave
            pass
        else:
            self._ray.shutdown()
        self._thread.shutdown()


@contextmanager
def joined(address: str) -> Iterator[Cluster]:
    """Within: joining the Ray cluster at ``address`` (``local``: one started on this machine, stopped after);
    :meth:`Cluster.wait` before using it.

    Raises:
        HeatmapError: Ray is not installed.
    """
    cluster = Cluster(address)
    try:
        yield cluster
    finally:
        cluster.leave()


def _cause(error: BaseException) -> str:
    """The last ``SomeError: message`` line of a Ray error's remote traceback (what the actor raised), or its
    first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (raised[-1] if raised else _one_line(error))[:300]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


@dataclass
class Explained:
    """One input of a ``--ray`` run: its index, its manifest entries (its files are written) or why it failed,
    what the user should know of it, and the device that explained it."""

    index: int
    entries: list[dict[str, Any]]
    error: str
    notes: list[str]
    device: str


def explained_on_ray(inputs: Sequence[tuple[Path, str]], explainer: dict[str, Any], workers: int | None,
                     batch_size: int) -> Generator[Explained, None, None]:
    """Explain and write ``inputs`` (path, file stem) on the Ray cluster joined by :class:`Cluster`, in their order.

    Args:
        inputs: every node must read the paths, and write ``explainer["files"].out``.
        explainer: :class:`HeatmapExplainer`'s keyword arguments, ``files`` among them.
        workers: actors (None: one per GPU of the cluster, or one per node when it has none).
        batch_size: images per batch handed to an actor.
    """
    import ray
    import ray.data

    for name in ("ray", "ray.data"):  # Ray's info lines would bury the run's own (set once ray.data is imported)
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # the manifest in input order, as a plain run writes it
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpus = gpus > 0 and explainer.get("device", "auto") in ("auto", "cuda")
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    size = workers or (gpus if use_gpus else max(1, len(nodes)))
    # On CPUs each actor gets an equal share of the cores, no more than one node has (Ray sets its threads to
    # them); on GPUs, one GPU and one core.
    node_cpus = min((int(node.get("CPU", 1)) for node in nodes), default=1)
    cpus = 1 if use_gpus else max(1, min(node_cpus, int(resources.get("CPU", 1)) // size))
    items = [{"id": str(index), "path": str(path.resolve()), "name": str(path), "stem": stem}
             for index, (path, stem) in enumerate(inputs)]
    dataset = ray.data.from_items(items).map_batches(
        HeatmapExplainer, fn_constructor_kwargs=explainer, compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=batch_size, num_gpus=1 if use_gpus else 0, num_cpus=cpus)
    try:
        for index, group in itertools.groupby(dataset.iter_rows(), key=lambda row: int(row["id"])):
            rows = list(group)
            first = rows[0]
            yield Explained(index, [] if first["error"] else [json.loads(row["entry"]) for row in rows],
                            str(first["error"]), json.loads(first["notes"]), str(first["device"]))
    except ray.exceptions.RayError as error:  # an actor could not start (a model missing on a node, say)
        raise HeatmapError(f"the Ray cluster failed: {_cause(error)}; every input not yet in the manifest is "
                           "left to a rerun with --skip-existing") from None
