"""pytest plugin: snapshot tests of heatmaps (the ``heatmap_snapshot`` fixture).

Installed with vit-heatmap and registered as the ``pytest11`` entry point
``heatmap``, so any test suite can write::

    def test_cat(heatmap_snapshot):
        heatmap_snapshot("demo", "cat.png", method="chefer-generic", target="heart")

The first run writes the map beside the test (``tests/test_model.py::test_cat``
-> ``tests/test_model/test_cat.npy`` and ``test_cat.json``, what made it) and
fails once so that the new files get reviewed; later runs compare against them
with :func:`heatmap.compare.metrics.compare_maps` and the same thresholds as
``heatmap compare``. ``pytest --heatmap-update`` rewrites the snapshots.

This module is imported by every pytest session of an environment that has
vit-heatmap installed, so it imports only the standard library and pytest at
import time; numpy, torch and the models load when a test calls the fixture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    import numpy as np

    from heatmap.compare.metrics import Thresholds
    from heatmap.models.protocols import Adapter
    from heatmap.pipeline import MapRecord

UPDATE_OPTION = "--heatmap-update"
# ini option -> the Thresholds field it sets; the per-call keyword has the field's name.
INI_THRESHOLDS = {"heatmap_max_diff": "max_diff", "heatmap_min_corr": "min_corr",
                  "heatmap_min_top_iou": "min_top_iou"}
ACCEPT_HINT = (f"If the new maps are right, run `pytest {UPDATE_OPTION}` to accept them, "
               "then review and commit the files.")
MAX_NAME_LENGTH = 80

_USED_SNAPSHOTS = pytest.StashKey[dict[Path, str]]()  # snapshot .npy -> node id of the test that used it
_WRITTEN = pytest.StashKey[list[str]]()  # snapshots written this session, for the summary
_ADAPTERS = pytest.StashKey[dict[tuple[str, bool], "Adapter"]]()  # models loaded by name, once per session


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--heatmap-update`` and the threshold ini options."""
    group = parser.getgroup("heatmap", "heatmap snapshots (vit-heatmap)")
    group.addoption(UPDATE_OPTION, action="store_true", default=False,
                    help="write the heatmap_snapshot files anew instead of comparing against them")
    for ini_name, field_name in INI_THRESHOLDS.items():
        # "string", not "float": pytest before 8.4 has no float ini type.
        parser.addini(ini_name,
                      f"heatmap_snapshot threshold {field_name} (default: heatmap.compare.metrics.Thresholds)",
                      default="")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_USED_SNAPSHOTS] = {}
    config.stash[_WRITTEN] = []
    config.stash[_ADAPTERS] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    """List the snapshot files this session wrote, so they are easy to review."""
    written = config.stash.get(_WRITTEN, [])
    if written:
        terminalreporter.write_sep("-", f"heatmap snapshots written: {len(written)}")
        for path in written:
            terminalreporter.write_line(f"  {path}")


@pytest.fixture
def heatmap_snapshot(request: pytest.FixtureRequest) -> HeatmapSnapshot:
    """Compare heatmaps with snapshots stored beside the test; see :class:`HeatmapSnapshot`."""
    return HeatmapSnapshot(request)


@dataclass(frozen=True)
class SnapshotFiles:
    """The two files of one snapshot: the map(s) and what made them.

    Attributes:
        npy: the maps, float32 ``[gh, gw]`` (classifier) or ``[T, gh, gw]`` (CLIP).
        json: the record: method, options, target(s) or texts, scores, shape, versions.
        shown: how messages name the ``.npy`` (relative to the rootdir where possible).
    """

    npy: Path
    json: Path
    shown: str

    def exist(self) -> bool:
        return self.npy.is_file() and self.json.is_file()


@dataclass
class Computed:
    """The maps of one fixture call and their record.

    Attributes:
        maps: float32 ``[K, gh, gw]``: K = 1 for a classifier, one per text for CLIP.
        names: per map, how messages name it (``target 5 (heart)``, ``text 'a cat'``).
        scores: per map, the target score or the CLIP logit.
        record: what the ``.json`` holds.
        clip: whether the maps are a CLIP's (stored ``[T, gh, gw]``).
    """

    maps: np.ndarray
    names: list[str]
    scores: list[float]
    record: dict[str, Any]
    clip: bool

    @property
    def stored(self) -> np.ndarray:
        """The array as the ``.npy`` holds it."""
        return self.maps if self.clip else self.maps[0]


class HeatmapSnapshot:
    """The callable behind the ``heatmap_snapshot`` fixture, one per test.

    Args:
        request: the test's fixture request (for its name, path and options).
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.config = request.config
        self.files_used: set[Path] = set()

    def __call__(self, model: Any, image: Any, method: str = "chefer-generic", target: int | str | None = None,
                 texts: Sequence[str] | None = None, name: str | None = None, max_diff: float | None = None,
                 min_corr: float | None = None, min_top_iou: float | None = None,
                 **options: Any) -> np.ndarray:
        """Explain one image and compare the map(s) with the test's snapshot.

        Args:
            model: what :func:`heatmap.explain` takes: a timm ViT, open_clip
                CLIP or transformers model object (run on the device it is on;
                a transformers object finds its processor by its ``name_or_path``),
                an adapter, or a name (``"demo"``, a Hugging Face repo id...,
                loaded on the CPU so that snapshots are deterministic).
            image: a path, a PIL image, or a preprocessed float tensor
                ``[3, H, W]`` or ``[1, 3, H, W]``.
            method: ``rollout``, ``grad-rollout``, ``chefer-generic`` or
                ``transformer-attribution``.
            target: classifiers: the class, by index or label; None = the top-1 class.
            texts: CLIP: the texts, one map each.
            name: tells several snapshots of one test apart (``test_cat-second``).
            max_diff, min_corr, min_top_iou: this call's thresholds; unset ones
                come from the ini options ``heatmap_max_diff`` ... or
                :class:`~heatmap.compare.metrics.Thresholds`.
            **options: the method's options (``start_layer``, ``head_fusion``, ...).

        Returns:
            the computed maps, float32: ``[gh, gw]``, or ``[T, gh, gw]`` for CLIP.
        """
        thresholds = self.thresholds(max_diff=max_diff, min_corr=min_corr, min_top_iou=min_top_iou)
        files = self.claim(name)
        computed = compute(model, image, method, target, texts, options, self.config.stash[_ADAPTERS])
        if self.config.getoption(UPDATE_OPTION):
            self.write(files, computed)
        elif not files.exist():
            self.write(files, computed)
            fail(f"heatmap snapshot written: {files.shown} and {files.json.name} beside it "
                 f"({computed.record['method']}, {', '.join(computed.names)}). There was no snapshot to compare "
                 "with, so this test fails once: review the new map, commit both files and rerun the test; "
                 "later runs compare against them.")
        else:
            check_snapshot(files, computed, thresholds)
        return computed.stored

    # -- where -------------------------------------------------------------------

    def claim(self, name: str | None) -> SnapshotFiles:
        """The files of this call's snapshot; fails when another call of the session uses them.

        A test that calls the fixture twice without ``name=``, or two names
        that slug alike (``test[a b]``, ``test[a_b]``), would compare two
        different maps against one file.
        """
        if name is not None and (not isinstance(name, str) or not name.strip()):
            fail(f"heatmap_snapshot: name= must be a non-empty string, got {name!r}")
        node = self.request.node
        module = Path(self.request.path)
        folder = module.parent / module.stem  # the folder named after the test module
        npy = folder / f"{snapshot_stem(node, name)}.npy"
        if npy in self.files_used:
            fail(f"heatmap_snapshot: two calls in {node.nodeid} share the snapshot {self.shown(npy)}; "
                 "give each call its own name=")
        self.files_used.add(npy)
        # Across tests, by node id: a test run again in one session (a rerun plugin) keeps its files.
        owner = self.config.stash[_USED_SNAPSHOTS].setdefault(npy, node.nodeid)
        if owner != node.nodeid:
            fail(f"heatmap_snapshot: {owner} and {node.nodeid} both map to the snapshot {self.shown(npy)}; "
                 "give one of them a name=")
        return SnapshotFiles(npy, npy.with_suffix(".json"), self.shown(npy))

    def shown(self, path: Path) -> str:
        """``path`` relative to the rootdir when it is below it."""
        try:
            return path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            return str(path)

    # -- thresholds --------------------------------------------------------------

    def thresholds(self, **per_call: float | None) -> Thresholds:
        """The defaults, updated by the ini options, updated by this call's keywords."""
        from heatmap.compare.metrics import Thresholds

        values = {}
        for ini_name, field_name in INI_THRESHOLDS.items():
            text = str(self.config.getini(ini_name)).strip()
            if text:
                values[field_name] = as_threshold(text, f"ini option {ini_name}")
        for field_name, value in per_call.items():
            if value is not None:
                values[field_name] = as_threshold(value, f"heatmap_snapshot({field_name}=...)")
        return dataclasses.replace(Thresholds(), **values)

    # -- writing -----------------------------------------------------------------

    def write(self, files: SnapshotFiles, computed: Computed) -> None:
        """Write the ``.npy``, then the ``.json``: a snapshot missing either counts as missing."""
        import numpy as np

        from heatmap.outputs import npy_bytes, write_atomically

        text = json.dumps(computed.record, indent=2, sort_keys=True) + "\n"
        try:
            files.npy.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(files.npy, npy_bytes(np.ascontiguousarray(computed.stored, dtype=np.float32)))
            write_atomically(files.json, text.encode("utf-8"))
        except OSError as error:  # a snapshot name that is a symbolic link is refused, never written through
            fail(f"heatmap snapshot: cannot write {files.shown}: {error.strerror or error}")
        self.config.stash[_WRITTEN].append(files.shown)


def fail(message: str) -> NoReturn:
    """Fail the test with ``message`` alone: the traceback would only show the plugin."""
    pytest.fail(message, pytrace=False)


def as_threshold(value: Any, source: str) -> float:
    """``value`` as a finite float; fails naming ``source`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        fail(f"{source} must be a number, got {value!r}")
    return number


# -- snapshot names ------------------------------------------------------------


def snapshot_stem(node: pytest.Item, name: str | None) -> str:
    """The file stem of a test's snapshot: ``test_cat``, ``TestZoo.test_cat-demo-0``, ``test_cat-second``.

    Class names and the test function's name are kept as they are (they are
    identifiers); the parametrize id and ``name`` are made file-name-safe.
    """
    classes = [item.name for item in node.listchain() if isinstance(item, pytest.Class)]
    parts = [".".join([*classes, getattr(node, "originalname", node.name)])]
    callspec = getattr(node, "callspec", None)
    if callspec is not None and callspec.id:
        parts.append(safe_name(callspec.id))
    if name is not None:
        parts.append(safe_name(name))
    return "-".join(parts)


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text``: ``"demo-0"`` stays, ``"a red/cat"`` -> ``"a_red_cat"``.

    Long names are cut and get a hash of the whole, so they stay distinct.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")  # no leading dot: no hidden files
    if safe and len(safe) <= MAX_NAME_LENGTH:
        return safe
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:MAX_NAME_LENGTH - 9]}_{digest}" if safe else digest


# -- computing -----------------------------------------------------------------


def compute(model: Any, image: Any, method: str, target: int | str | None, texts: Sequence[str] | None,
            options: dict[str, Any], adapters: dict[tuple[str, bool], Adapter]) -> Computed:
    """Explain ``image`` with ``model`` and return the maps with their record.

    Args:
        model, image, method, target, texts, options: as the fixture takes them.
        adapters: the session's models loaded by name (so each loads once).
    """
    from heatmap.errors import HeatmapError
    from heatmap.explainers.driver import Driver
    from heatmap.inputs import load_image
    from heatmap.pipeline import Pipeline

    if texts is not None and (isinstance(texts, str) or not texts):
        fail(f"heatmap_snapshot: texts= must be a non-empty list of strings, got {texts!r}")
    if texts is not None and target is not None:
        fail("heatmap_snapshot: target= is for classifiers; a CLIP model gets one map per text in texts=")
    try:
        adapter = as_adapter(model, clip=texts is not None, adapters=adapters)
        batch, described = as_batch(image)
        driver = Driver(adapter, method, **options)
        if driver.clip and texts is None:
            fail("heatmap_snapshot: a CLIP model explains images against texts: pass texts=[...]")
        pipeline = Pipeline(driver, targets=None if target is None else [target],
                            texts=list(texts) if texts is not None else None)
        if isinstance(batch, list):
            pictures = [item if hasattr(item, "convert") else load_image(item) for item in batch]
            records = pipeline.explain([picture.convert("RGB") for picture in pictures])[0]
        else:
            records = pipeline.explain_tensor(batch)[0]
    except HeatmapError as error:
        fail(f"heatmap_snapshot: {error}")
    if texts is not None:
        return clip_maps(records, adapter, described, method, driver.options)
    return classifier_maps(records[0], adapter, described, target, method, driver.options)


def as_adapter(model: Any, clip: bool, adapters: dict[tuple[str, bool], Adapter]) -> Adapter:
    """``model`` as an adapter (:func:`heatmap.models.resolve_adapter`): a name is loaded once per session, on
    the CPU."""
    from heatmap.models import resolve_adapter

    if not isinstance(model, str):
        return resolve_adapter(model, clip)
    key = (model, clip)
    if key not in adapters:
        adapters[key] = resolve_adapter(model, clip, device="cpu")
    return adapters[key]


def as_batch(image: Any) -> tuple[Any, str]:
    """``image`` as what :func:`heatmap.explain` takes for one image, and how the record names it."""
    import torch

    if isinstance(image, torch.Tensor):
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            fail(f"heatmap_snapshot: a tensor image must be [3, H, W] or [1, 3, H, W], got {list(image.shape)}")
        return image, f"tensor {list(image.shape)}"
    if isinstance(image, (str, os.PathLike)):
        return [Path(image)], Path(image).as_posix()
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return [image], f"PIL image {image.size[0]}x{image.size[1]} {image.mode}"
    fail(f"heatmap_snapshot: image must be a path, a PIL image or a [3, H, W] tensor, got {type(image).__name__}")


def base_record(adapter: Adapter, described: str, method: str, options: dict[str, Any], shape: Sequence[int]
                ) -> dict[str, Any]:
    """What every snapshot records, classifier or CLIP."""
    import torch

    import heatmap

    return {"vit_heatmap": heatmap.__version__, "torch": torch.__version__, "model": adapter.name,
            "image": described, "method": method, "options": json_round_trip(options), "map_shape": list(shape)}


def classifier_maps(record: MapRecord, adapter: Adapter, described: str, requested: int | str | None,
                    method: str, options: dict[str, Any]) -> Computed:
    """The :class:`Computed` of a classifier's explanation of one image."""
    import numpy as np

    maps = np.asarray(record.heatmap, dtype=np.float32)[None]  # [1, gh, gw]: one image, one target
    record_json = base_record(adapter, described, method, options, maps.shape[1:])
    record_json.update(target=record.target, label=record.label, requested_target=json_round_trip(requested),
                       score=record.score)
    return Computed(maps, [target_name(record.target, record.label)], [record.score], record_json, clip=False)


def clip_maps(records: Sequence[MapRecord], adapter: Adapter, described: str, method: str,
              options: dict[str, Any]) -> Computed:
    """The :class:`Computed` of a CLIP's explanation of one image against its texts."""
    import numpy as np

    maps = np.stack([np.asarray(record.heatmap, dtype=np.float32) for record in records])  # [T, gh, gw]
    logits = [record.score for record in records]
    texts = [record.label for record in records]
    record_json = base_record(adapter, described, method, options, maps.shape)
    record_json.update(texts=texts, logits=logits)
    return Computed(maps, [f"text {text!r}" for text in texts], logits, record_json, clip=True)


def target_name(index: object, label: object) -> str:
    """``target 5 (heart)``; the index and label as a record holds them (a snapshot's may be anything)."""
    return f"target {index} ({label})" if label else f"target {index}"


def json_round_trip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so records compare equal.

    numpy and torch scalars (``discard_ratio=np.float32(0.9)``, ``target=np.int64(3)``)
    become Python numbers.
    """
    return json.loads(json.dumps(value, default=lambda item: item.item() if hasattr(item, "item") else str(item)))


# -- comparing -----------------------------------------------------------------


def check_snapshot(files: SnapshotFiles, computed: Computed, thresholds: Thresholds) -> None:
    """Fail the test unless ``computed`` matches the snapshot in ``files``."""
    stored, maps = read_snapshot(files)
    differences = record_differences(stored, computed.record)
    if list(maps.shape) != list(computed.stored.shape) and not differences:
        differences.append(f"map shape: snapshot {list(maps.shape)}, now {list(computed.stored.shape)}")
    if differences:
        fail(f"heatmap snapshot {files.shown} was made differently from what the test now computes: "
             f"{'; '.join(differences)}. If the change is intended, run "
             f"`pytest {UPDATE_OPTION}` to rewrite the snapshot, then review and commit it.")
    baseline = maps if computed.clip else maps[None]
    lines, failed = compare_each(baseline, computed, stored, thresholds)
    if failed:
        fail(f"heatmap snapshot {files.shown}: the maps differ ({computed.record['method']}, "
             f"options {json.dumps(computed.record['options'], sort_keys=True)}):\n" + "\n".join(lines) +
             f"\nthresholds: max-diff <= {thresholds.max_diff:g}, corr >= {thresholds.min_corr:g}, "
             f"top-iou >= {thresholds.min_top_iou:g}.\n{ACCEPT_HINT}")


def read_snapshot(files: SnapshotFiles) -> tuple[dict[str, Any], np.ndarray]:
    """The record and maps of a snapshot; fails with the file's name when either is unreadable."""
    import numpy as np

    problem = None
    try:
        record = json.loads(files.json.read_text(encoding="utf-8"))
        maps = np.load(files.npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # JSONDecodeError is a ValueError; an empty .npy, EOFError
        problem = str(error) or type(error).__name__
    if problem is not None:  # failed outside the handler: the message alone, without the reader's traceback
        fail(f"heatmap snapshot {files.shown} is unreadable ({problem}); "
             f"run `pytest {UPDATE_OPTION}` to write it anew")
    if not isinstance(record, dict):
        fail(f"heatmap snapshot {files.shown}: its .json is not a JSON object; "
             f"run `pytest {UPDATE_OPTION}` to write it anew")
    return record, maps


def record_differences(stored: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What made the snapshot and what the test computes, where they differ (maps aside)."""
    differences: list[str] = []
    for key in ("method", "options", "texts", "map_shape"):
        was: Any = stored.get(key)
        now: Any = record.get(key)
        if was == now:
            continue
        if key == "options" and isinstance(was, dict):  # name the options that changed, not all of them
            differences.extend(f"option {option}: snapshot {show(was.get(option, '(unset)'))}, "
                               f"now {show(now.get(option, '(unset)'))}"
                               for option in sorted({*was, *now}) if was.get(option) != now.get(option))
        else:
            differences.append(f"{key.replace('_', ' ')}: snapshot {show(was)}, now {show(now)}")
    if "target" in record and stored.get("target") != record["target"]:
        was_target = target_name(stored.get("target"), stored.get("label"))
        now_target = target_name(record["target"], record["label"])
        if record["requested_target"] is None:  # the top-1 class moved: the maps explain different classes
            differences.append(f"the model's top-1 class changed from {was_target} to {now_target} "
                               "(the weights or the model changed, or the test's arguments did)")
        else:
            differences.append(f"target: snapshot {was_target}, now {now_target}")
    return differences


def show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def compare_each(baseline: np.ndarray, computed: Computed, stored: dict[str, Any], thresholds: Thresholds
                 ) -> tuple[list[str], bool]:
    """One message line per map (target or text), and whether any map failed."""
    from heatmap.compare.metrics import compare_maps

    stored_scores = stored.get("logits") if computed.clip else [stored.get("score")]
    score_word = "logit" if computed.clip else "score"
    lines, any_failed = [], False
    for k, name in enumerate(computed.names):
        metrics = compare_maps(baseline[k], computed.maps[k])
        failures = metrics.failures(thresholds)
        any_failed = any_failed or bool(failures)
        # The metrics that passed too: how far inside its threshold each was tells a drift from a break.
        measured = {"max-diff": f"{metrics.max_diff:.4g}", "corr": f"{metrics.corr:.6g}",
                    "top-iou": f"{metrics.top_iou:.3g}"}
        passed = [f"{metric} {value}" for metric, value in measured.items()
                  if not any(failure.startswith(f"{metric} ") for failure in failures)]
        if not failures:
            verdict = f"within thresholds ({', '.join(passed)})"
        else:
            verdict = "; ".join(failures) + (f" ({', '.join(passed)} within thresholds)" if passed else "")
        lines.append(f"  {name}: {verdict}; "
                     f"{score_change(score_word, stored_scores, k, computed.scores[k])}")
    return lines, any_failed


def score_change(word: str, stored_scores: Any, k: int, now: float) -> str:
    """``score 3.792 -> 3.51 (-0.282)``, or just the new score when the snapshot has none."""
    try:
        was = float(stored_scores[k])
    except (TypeError, ValueError, IndexError, KeyError):
        return f"{word} now {now:.4g}"
    return f"{word} {was:.4g} -> {now:.4g} ({now - was:+.3g})"
