"""Between the CLI and the library: pictures -> batches -> explanations -> plain records.

A :class:`Pipeline` holds one model and one method (a
:class:`~heatmap.explainers.driver.Driver`) and what to explain (classes, the
top K, or texts). It turns a batch of pictures into one :class:`MapRecord`
per picture and target: the raw map as a numpy array, the crop box the model
saw, and what the manifest says of it. Everything that reads maps (the CLI's
writers, the pytest plugin, the evaluation) reads these records, never the
driver's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from heatmap.errors import UsageError
from heatmap.outputs import target_names, text_name

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from heatmap.explainers.driver import ClipExplanation, Driver, Explanation
    from heatmap.models.protocols import Adapter, Box
    from heatmap.render.gallery import Tile


@dataclass
class MapRecord:
    """One map of one picture and target, as plain data.

    Attributes:
        heatmap: the raw map of docs/METHODS.md, float32 ``[gh, gw]``.
        target_name: the target as it appears in file names.
        box: the part of the picture the model saw ``(left, top, right, bottom)``,
            or None for a preprocessed tensor.
        target: the class index (classifier) or the text's index (CLIP).
        label: the class name (or None) or the text.
        score: the target logit (classifier) or ``logits_per_image`` (CLIP).
        fields: what the manifest says of this target besides the common
            fields (``target``, ``label``, ``score``, ``top_k``, ``rank``; for
            CLIP ``text``, ``text_index``, ``logit``, ``probability``,
            ``word_pieces``, ``token_relevance``).
        word_pieces, token_relevance: CLIP: the text's word pieces and their
            relevance (float32), for the token strip.
    """

    heatmap: np.ndarray
    target_name: str
    box: Box | None
    target: int
    label: str | None
    score: float
    fields: dict[str, Any] = field(default_factory=dict)
    word_pieces: list[str] | None = None
    token_relevance: np.ndarray | None = None


class Pipeline:
    """Explains batches of pictures with one driver, into :class:`MapRecord` lists.

    Args:
        driver: the model and the method.
        targets: classifiers: the classes to explain in every picture, by index
            or label (None or empty: the ``top_k`` highest-scoring classes).
        top_k: classifiers: how many top classes when ``targets`` is None.
        texts: CLIP: the texts to explain every picture against.

    Raises:
        UsageError: for a class the model does not have.
    """

    def __init__(self, driver: Driver, targets: Sequence[int | str] | None = None, top_k: int = 1,
                 texts: Sequence[str] | None = None) -> None:
        from heatmap.models.protocols import is_classifier

        self.driver = driver
        adapter = driver.adapter
        self.targets: list[int] | None = None
        if targets:
            if not is_classifier(adapter):
                raise UsageError(f"{adapter.name} is a CLIP model: explain its images against texts")
            # every target through class_index: an index or a label, checked against the model's classes
            self.targets = list(dict.fromkeys(adapter.class_index(str(target)) for target in targets))
        self.top_k = top_k
        self.texts = list(texts) if texts is not None else None
        self._input_size: tuple[int, int] | None = None
        self._names = ({t: text_name(text) for t, text in enumerate(self.texts)} if self.texts is not None
                       else target_names(adapter.labels))

    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model's input, as its own transform makes it."""
        from PIL import Image

        tensor, _ = self.driver.adapter.preprocess([Image.new("RGB", (64, 64))])
        return int(tensor.shape[-2]), int(tensor.shape[-1])

    def picture_notes(self, name: str, picture: Image.Image) -> list[str]:
        """What the user should know of a picture whose map says less than they may think: pages left out,
        a picture far smaller than the model's input."""
        if self._input_size is None:
            self._input_size = self.input_size()
        height, width = self._input_size
        notes = []
        if picture.info.get("frames", 1) > 1:
            notes.append(f"{name}: {picture.info['frames']} frames (pages); only the first is explained")
        if picture.width * 4 <= width or picture.height * 4 <= height:
            notes.append(f"{name}: {picture.width}x{picture.height} px, far smaller than the model's "
                         f"{width}x{height} input: it is upscaled, the map says little")
        return notes

    def forward_batch_size(self, requested: int) -> int:
        """Images per forward pass: 1 on CPU, so maps are byte-identical whatever the batch size.

        CPU kernels may sum in another order for another batch shape; one image
        per pass keeps every image's arithmetic the same (README, "Determinism").
        """
        return 1 if self.driver.adapter.device.type == "cpu" else requested

    def truncated_texts(self) -> list[str]:
        """The texts longer than the model's context: it sees only their beginning."""
        from heatmap.models.protocols import is_image_text

        adapter = self.driver.adapter
        if self.texts is None or not is_image_text(adapter):
            return []
        return [text for text, cut in zip(self.texts, adapter.truncated(self.texts), strict=True) if cut]

    def target_name(self, target: int) -> str:
        """How target ``target`` (class index, or text index) appears in file names."""
        return self._names.get(target, str(target))

    @property
    def precision(self) -> str:
        """The dtype the maps are computed in, as the manifest records it (``"float32"``)."""
        return str(self.driver.adapter.dtype).removeprefix("torch.")

    def explain(self, pictures: Sequence[Image.Image],
                targets: Sequence[Sequence[int]] | None = None) -> list[list[MapRecord]]:
        """Per picture, one record per target (or text).

        Args:
            pictures: RGB pictures; each is preprocessed with the model's own transform.
            targets: classifiers: per picture, its class indices (all of one
                length), overriding the pipeline's.
        """
        tensor, boxes = self.driver.adapter.preprocess(pictures)
        return self._records(tensor, list(boxes), targets)

    def explain_tensor(self, tensor: torch.Tensor,
                       targets: Sequence[Sequence[int]] | None = None) -> list[list[MapRecord]]:
        """As :meth:`explain`, for a preprocessed ``[B, 3, H, W]`` tensor (no crop boxes)."""
        return self._records(tensor, [None] * tensor.shape[0], targets)

    def _records(self, tensor: torch.Tensor, boxes: list[Box | None],
                 targets: Sequence[Sequence[int]] | None) -> list[list[MapRecord]]:
        if self.texts is not None:
            return clip_records(self.driver.explain_texts(tensor, self.texts), boxes, self.target_name,
                                self.truncated_texts())
        wanted = targets if targets is not None else (
            None if self.targets is None else [self.targets] * tensor.shape[0])
        explanation = self.driver.explain(tensor, wanted, top_k=self.top_k)
        return classifier_records(explanation, boxes, self.target_name, None if wanted is not None else self.top_k)


def classifier_records(explanation: Explanation, boxes: Sequence[Box | None], target_name: Callable[[int], str],
                       top_k: int | None) -> list[list[MapRecord]]:
    """Per image, one record per target of a classifier explanation (``maps`` ``[B, K, ...]``).

    ``top_k``: the K of a top-k run (its records say ``top_k`` and ``rank``), None for classes asked by name.
    """
    maps = explanation.maps.float().numpy()
    records = []
    for i, box in enumerate(boxes):
        row = []
        for k, target in enumerate(explanation.targets[i].tolist()):
            chosen = {} if top_k is None else {"top_k": top_k, "rank": k}
            label, score = explanation.labels[i][k], float(explanation.scores[i, k])
            fields = {"target": target, "label": label, "score": score, **chosen}
            if explanation.probabilities is not None and explanation.class_ranks is not None:
                fields.update(probability=float(explanation.probabilities[i, k]),
                              class_rank=int(explanation.class_ranks[i, k]), classes=explanation.classes)
            row.append(MapRecord(maps[i, k], target_name(target), box, target, label, score, fields=fields))
        records.append(row)
    return records


def clip_records(explanation: ClipExplanation, boxes: Sequence[Box | None], target_name: Callable[[int], str],
                 truncated: Sequence[str] = ()) -> list[list[MapRecord]]:
    """Per image, one record per text of a CLIP explanation."""
    maps = explanation.maps.float().numpy()
    probabilities = explanation.probabilities
    records = []
    for i, box in enumerate(boxes):
        row = []
        for t, text in enumerate(explanation.texts):
            logit = float(explanation.logits[i, t])
            pieces = explanation.word_pieces[t]
            relevance = (None if explanation.text_relevance is None
                         else explanation.text_relevance[i][t].float().numpy())
            fields = {"text": text, "text_index": t, "logit": logit,
                      "probability": float(probabilities[i, t]), "word_pieces": pieces,
                      "token_relevance": None if relevance is None else relevance.tolist(),
                      "truncated": text in truncated}
            if relevance is None:
                fields["token_relevance_left_out"] = (
                    f"{explanation.method} explains the image tower only; it defines no text-token relevance")
            row.append(MapRecord(maps[i, t], target_name(t), box, t, text, logit, fields=fields,
                                 word_pieces=pieces, token_relevance=relevance))
        records.append(row)
    return records


@dataclass
class GalleryRow:
    """Every method's map of one picture and target (``heatmap gallery``).

    Attributes:
        record: the target's record from the first method that explains it
            (what the caption says: class or text, score, probability).
        tiles: per method, in the order asked, its map or its refusal.
    """

    record: MapRecord
    tiles: list[Tile]


def explain_every_method(adapter: Adapter, picture: Image.Image, methods: Sequence[str], *,
                         targets: Sequence[int | str] | None = None, top_k: int = 1,
                         texts: Sequence[str] | None = None, precision: str = "auto") -> list[GalleryRow]:
    """One picture explained by each of ``methods`` for the same targets: one row per target.

    A method that refuses the model (or this input) gets its reason instead of a map. The
    top-k classes are chosen once, by the first method that runs, and asked of every other,
    so every tile of a row explains the same class.

    Raises:
        UnsupportedModelError: no method can explain the model (the message lists each reason).
    """
    from heatmap.errors import UnsupportedModelError
    from heatmap.explainers.driver import Driver
    from heatmap.explainers.registry import method as find_method
    from heatmap.render.gallery import Tile

    rows: dict[str, list[MapRecord]] = {}
    refusals: dict[str, str] = {}
    chosen: list[list[int]] | None = None
    for name in methods:
        try:
            pipeline = Pipeline(Driver(adapter, find_method(name), precision=precision), targets=targets,
                                top_k=top_k, texts=texts)
            rows[name] = pipeline.explain([picture], targets=chosen)[0]
        except (UnsupportedModelError, UsageError) as refusal:
            refusals[name] = str(refusal)
            continue
        if texts is None and chosen is None:
            chosen = [[record.target for record in rows[name]]]
    if not rows:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in refusals.items())
        raise UnsupportedModelError(f"no method can explain {adapter.name}: {reasons}")
    first = next(iter(rows.values()))
    return [GalleryRow(record, [Tile(name, rows[name][k].heatmap) if name in rows
                                else Tile(name, refusal=refusals[name]) for name in methods])
            for k, record in enumerate(first)]
