"""The text tower's pooled token and word pieces: the one rule, used by the adapter and the LRP view alike.

docs/METHODS.md ("Modern ViT parts", "Text pooling"): the query row is the
position the model pools, and token relevance is read over the word pieces,
from after the start token (if the tokenizer adds one) to before the first
end-of-text or padding token. Two tokenizers are read: CLIP's byte-pair one
(open_clip's ``SimpleTokenizer``) and open_clip's ``HFTokenizer`` (a
transformers tokenizer: SigLIP, MetaCLIP 2, ...).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heatmap.errors import UnsupportedModelError

POOLED_POSITIONS = ("argmax", "eos", "first", "last")


@dataclass(frozen=True)
class TextPooling:
    """Where an open_clip text tower pools each text (open_clip's ``text_global_pool``).

    Attributes:
        kind: ``argmax`` (the largest token id: CLIP's end-of-text), ``eos``
            (the first ``eos_id``), ``first`` or ``last`` (a fixed position).
        eos_id: the token ``eos`` pools at.
    """

    kind: str
    eos_id: int | None = None

    def positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T]``: the pooled position of each text of ``tokens [T, L]``."""
        count, length = tokens.shape
        if self.kind == "argmax":
            return tokens.argmax(dim=-1)
        if self.kind == "eos" and self.eos_id is not None:
            # as open_clip: a text without the token pools at position 0
            return torch.eq(tokens, self.eos_id).int().argmax(dim=-1)
        return torch.full((count,), 0 if self.kind == "first" else length - 1, dtype=torch.long,
                          device=tokens.device)


def pooling_problem(holder: Any) -> str | None:
    """Why the pooled position of the text tower in ``holder`` is not one :class:`TextPooling` reads, or None.

    Args:
        holder: the module that holds the text tower: the ``CLIP`` itself or
            a ``CustomTextCLIP``'s ``TextTransformer``.
    """
    if getattr(holder, "cls_emb", None) is not None:
        return "the appended text class token (CoCa)"
    kind, eos_id = _pool_settings(holder)
    if kind == "eos" and eos_id is None:
        return "text pooling 'eos' without an eos_id"
    if kind == "none":
        return "text pooling 'none' (the text tower returns every token, not one embedding)"
    if kind not in POOLED_POSITIONS:
        return f"text pooling {kind!r}"
    return None


def text_pooling(holder: Any) -> TextPooling:
    """The pooling of the text tower in ``holder`` (see :func:`pooling_problem`, which it raises)."""
    problem = pooling_problem(holder)
    if problem:
        raise UnsupportedModelError(f"not supported: {problem}")
    kind, eos_id = _pool_settings(holder)
    return TextPooling(kind, eos_id)


def _pool_settings(holder: Any) -> tuple[str, int | None]:
    # CLIP keeps them as text_pool_type / text_eos_id, TextTransformer as pool_type / eos_id; open_clip
    # releases before either pooled at the argmax
    if hasattr(holder, "text_pool_type"):
        kind, eos_id = holder.text_pool_type, getattr(holder, "text_eos_id", None)
    else:
        kind, eos_id = getattr(holder, "pool_type", "argmax"), getattr(holder, "eos_id", None)
    return str(kind), None if eos_id is None else int(eos_id)


# -- the tokenizer's side: word pieces and their spans ---------------------------------------


def hf_tokenizer(tokenizer: object) -> Any:
    """The transformers tokenizer open_clip's ``HFTokenizer`` wraps, or None for any other tokenizer."""
    wrapped = getattr(tokenizer, "tokenizer", None)
    return wrapped if hasattr(wrapped, "convert_ids_to_tokens") else None


def tokenizer_problem(tokenizer: object) -> str | None:
    """Why the word pieces of ``tokenizer`` cannot be read, or None (CLIP's byte-pair one, ``HFTokenizer``)."""
    if hasattr(tokenizer, "decoder") or hf_tokenizer(tokenizer) is not None:
        return None
    return (f"its tokenizer ({type(tokenizer).__name__}) is neither CLIP's byte-pair tokenizer nor open_clip's "
            "HFTokenizer")


def word_spans(tokenizer: object, tokens: torch.Tensor) -> list[tuple[int, int]]:
    """Per text of ``tokens [T, L]``, its word pieces ``[start, stop)``: after the start token (if the text
    begins with one) up to the first end-of-text or padding token."""
    starts, ends = _boundary_ids(tokenizer)
    spans = []
    for row in tokens.tolist():
        start = 1 if row and row[0] in starts else 0
        stop = next((index for index in range(start, len(row)) if row[index] in ends), len(row))
        spans.append((start, stop))
    return spans


def _boundary_ids(tokenizer: object) -> tuple[set[int], set[int]]:
    """The ids that start a text and those that end its word pieces."""
    wrapped = hf_tokenizer(tokenizer)
    if wrapped is not None:
        starts = {wrapped.bos_token_id, wrapped.cls_token_id}
        ends = {wrapped.eos_token_id, wrapped.sep_token_id, wrapped.pad_token_id}
        return {int(i) for i in starts - ends if i is not None}, {int(i) for i in ends if i is not None}
    # CLIP pads with 0, which is also the byte-pair piece "!": only end-of-text ends the pieces
    encoder = getattr(tokenizer, "encoder", {})
    start = getattr(tokenizer, "sot_token_id", encoder.get("<start_of_text>", 49406))
    end = getattr(tokenizer, "eot_token_id", encoder.get("<end_of_text>", 49407))
    return {int(start)}, {int(end)}


def word_pieces(tokenizer: object, ids: list[int]) -> list[str]:
    """Each token of ``ids`` as readable text, one string per token (so relevance stays aligned)."""
    wrapped = hf_tokenizer(tokenizer)
    if wrapped is None:
        return decoded_pieces(tokenizer, ids)
    # SentencePiece marks a word's start with "▁"
    return [str(piece).replace("▁", " ").strip() for piece in wrapped.convert_ids_to_tokens(ids)]


def truncated(tokenizer: object, texts: Sequence[str]) -> list[bool]:
    """Per text, whether ``tokenizer`` cuts it to its context length."""
    context = getattr(tokenizer, "context_length", None)
    wrapped = hf_tokenizer(tokenizer)
    if context is None:
        return [False] * len(texts)
    if wrapped is not None:
        return [_hf_length(tokenizer, wrapped, text) > context for text in texts]
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return [False] * len(texts)
    return [len(encode(text)) + 2 > context for text in texts]  # + start and end-of-text


def _hf_length(tokenizer: Any, wrapped: Any, text: str) -> int:
    """The length of ``text`` as ``HFTokenizer`` would tokenize it before cutting it."""
    clean = getattr(tokenizer, "clean_fn", lambda given: given)(text)
    if getattr(tokenizer, "tokenizer_mode", "") == "clips":
        # its own start and end-of-text, and a class token appended after the padding
        return len(wrapped(clean, add_special_tokens=False)["input_ids"]) + 3
    return len(wrapped(clean)["input_ids"])


def decoded_pieces(tokenizer: object, ids: list[int]) -> list[str]:
    """Each token of ``ids`` as the text it adds, one string per token (so relevance stays aligned).

    CLIP's byte-pair pieces are bytes in a printable disguise (``"Ðº"`` is
    ``"к"``); a character split over two pieces shows on the piece that
    completes it, and the piece before it is empty.
    """
    decoder = getattr(tokenizer, "decoder", None)
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    if decoder is None:
        return [str(i) for i in ids]
    if byte_decoder is None:
        return [decoder[i].replace("</w>", "") for i in ids]
    incremental = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for i in ids:
        piece = decoder[i]
        word_end = piece.endswith("</w>")
        raw = bytes(byte_decoder[character] for character in piece.removesuffix("</w>"))
        pieces.append(incremental.decode(raw, final=word_end))
    return pieces
