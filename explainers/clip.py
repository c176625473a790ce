"""Image-text relevance for CLIP: any method, both towers, many texts at once.

For B images and T texts the towers run forward once each (not once per
image-text pair, as the authors' notebook does by repeating the image). The
score ``logits_per_image[i, t]`` is differentiated per text for the image
tower (summing over images keeps images apart: nothing mixes them) and per
image for the text tower (summing over texts keeps texts apart), so T + B
backward passes, each only through the blocks from the start layer on.

The methods' own ``relevance`` functions do the math (docs/METHODS.md); the
text tower's query row is each text's end-of-text token, and its token
relevance is ``R_text[eot, 1:eot]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from heatmap.errors import UsageError
from heatmap.explainers import METHODS
from heatmap.explainers.aggregation import query_map, resolve_start_layer
from heatmap.explainers.probe import AttentionProbe
from heatmap.models.devices import compute_dtype, full_float32


@dataclass
class ClipExplanation:
    """What :class:`ClipExplainer` returns.

    Attributes:
        maps: raw image maps on the CPU, in the explanation's dtype, ``[B, T, gh, gw]``.
        logits: ``logits_per_image`` ``[B, T]``.
        texts: the T texts.
        word_pieces: per text, its word pieces between start and end-of-text.
        text_relevance: per image, per text, the relevance of each word piece
            (``[len(word_pieces[t])]``); it depends on the image too.
        method: the method's name.
        options: the options as used (start layers as given).
    """

    maps: torch.Tensor
    logits: torch.Tensor
    texts: list[str]
    word_pieces: list[list[str]]
    text_relevance: list[list[torch.Tensor]]
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of each image's logits over the given texts ``[B, T]``."""
        return self.logits.softmax(dim=1)


class ClipExplainer:
    """Runs one method on a :class:`~heatmap.models.clip_adapter.ClipAdapter`.

    Args:
        adapter: the CLIP adapter.
        method: a name of ``METHODS``.
        batched_backward: take the T + B gradients in two vectorised
            backward passes (``is_grads_batched``) instead of T + B passes
            through a retained graph; same numbers (benchmarks/clip_texts.py
            measures both).
        precision: ``auto``, ``float32`` or ``float64``, as for
            :class:`~heatmap.explainers.base.Explainer`.
        **options: the method's options; ``start_layer`` applies to both
            towers unless ``text_start_layer`` sets the text tower's.
    """

    def __init__(self, adapter, method: str, batched_backward: bool = False, precision: str = "auto",
                 **options: Any) -> None:
        self.batched_backward = batched_backward
        self.spec = METHODS[method]
        self.options = self.resolve_options(method, options)
        self.adapter = adapter = adapter.converted(compute_dtype(adapter.dtype, precision))
        image_options = {k: v for k, v in self.options.items() if k != "text_start_layer"}
        method_class = self.spec.explainer_class()
        self.image_method = method_class(adapter.vision, precision=None, **image_options)
        self.text_method = method_class(adapter.text, precision=None,
                                        **{**image_options, "start_layer": self.options["text_start_layer"]})

    @staticmethod
    def resolve_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
        """The method's CLIP defaults updated with ``options``, checked; no model needed."""
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        spec = METHODS[method]
        options = dict(options)
        text_start = options.pop("text_start_layer", None)
        resolved = spec.explainer_class().resolve_options({**spec.clip_defaults, **options})
        return {**resolved, "text_start_layer": resolved["start_layer"] if text_start is None else text_start}

    def explain(self, images: torch.Tensor, texts: Sequence[str]) -> ClipExplanation:
        """Explain every image against every text.

        Args:
            images: preprocessed ``[B, 3, H, W]``; moved to the model's device and dtype.
            texts: T texts.
        """
        if not texts:
            raise UsageError("give at least one text to explain the images against")
        adapter, needs_gradients = self.adapter, self.spec.needs_gradients
        images = images.to(device=adapter.device, dtype=adapter.dtype)
        tokens = adapter.tokenize(texts)
        image_start = resolve_start_layer(self.image_method.options["start_layer"], adapter.vision.num_blocks)
        text_start = resolve_start_layer(self.text_method.options["start_layer"], adapter.text.num_blocks)
        with full_float32(), \
             AttentionProbe(adapter.model, adapter.vision.attention_modules, adapter.name,
                            image_start if needs_gradients else None) as image_probe, \
             AttentionProbe(adapter.model, adapter.text.attention_modules, adapter.name,
                            text_start if needs_gradients else None) as text_probe, \
             self.image_method.recording(image_start) as image_recorded, \
             self.text_method.recording(text_start) as text_recorded:
            with torch.set_grad_enabled(needs_gradients):
                image_embedding, text_embedding = adapter.embeddings(images, tokens)
                logits = adapter.score(image_embedding, text_embedding)
                per_text = logits.sum(dim=0)  # [T]: image tower gradients, per text
                per_image = logits.sum(dim=1)  # [B]: text tower gradients, per image
            image_probs = [p.detach() for p in image_probe.attention_probs]
            text_probs = [p.detach() for p in text_probe.attention_probs]
            if needs_gradients:
                image_grads, text_grads = self._gradients(image_probe, text_probe, per_text, per_image)
                # What an LRP pass starts from: the score's gradient with respect to
                # the tower's unit embedding, s times the other tower's (docs/METHODS.md).
                scale = adapter.logit_scale.detach()
                toward_text = scale * text_embedding.detach()  # [T, E]
                toward_image = scale * image_embedding.detach()  # [B, E]
                image_relevance = [
                    self.image_method.target_relevance(image_probs, grads, image_start, image_recorded,
                                                       toward_text[t].expand(len(images), -1))
                    for t, grads in enumerate(image_grads)]
                text_relevance = [
                    self.text_method.target_relevance(text_probs, grads, text_start, text_recorded,
                                                      toward_image[b].expand(len(texts), -1))
                    for b, grads in enumerate(text_grads)]
            else:  # class-agnostic: one matrix per tower serves every pair
                image_relevance = [self.image_method.relevance(image_probs, None, image_start)] * len(texts)
                text_relevance = [self.text_method.relevance(text_probs, None, text_start)] * images.shape[0]
        query = adapter.query_weights(image_probs[0].shape[-1])
        grid = adapter.grid(images)
        maps = torch.stack([query_map(r, query, adapter.vision.num_prefix_tokens, grid)
                            for r in image_relevance], dim=1)
        end_of_text = tokens.argmax(dim=-1).tolist()  # CLIP pools at the largest token id
        token_relevance = [[relevance[t, end, 1:end].cpu() for t, end in enumerate(end_of_text)]
                           for relevance in text_relevance]
        return ClipExplanation(
            maps=maps.cpu(), logits=logits.detach().cpu(), texts=list(texts),
            word_pieces=adapter.word_pieces(tokens.cpu()), text_relevance=token_relevance,
            method=self.spec.name, options=dict(self.options))

    def _gradients(self, image_probe, text_probe, per_text: torch.Tensor, per_image: torch.Tensor):
        """Per text, the image tower's gradients; per image, the text tower's (lists per block)."""
        with torch.enable_grad():  # indexing the scores must stay in the graph, even under no_grad
            return self._gradients_with_grad(image_probe, text_probe, per_text, per_image)

    def _gradients_with_grad(self, image_probe, text_probe, per_text, per_image):
        if self.batched_backward:
            image = image_probe.attention_grads_batched(per_text, retain_graph=True)
            text = text_probe.attention_grads_batched(per_image)
            return ([[g[t] for g in image] for t in range(len(per_text))],
                    [[g[b] for g in text] for b in range(len(per_image))])
        image = [image_probe.attention_grads(score, retain_graph=True) for score in per_text]
        text = [text_probe.attention_grads(score, retain_graph=b + 1 < len(per_image))
                for b, score in enumerate(per_image)]
        return image, text
