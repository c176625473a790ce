"""The text tower's pooled token: the one rule, used by the adapter and the LRP view alike."""

from __future__ import annotations

import codecs

import torch


def end_of_text(tokens: torch.Tensor) -> torch.Tensor:
    """``[T]``: the position each text pools at, its end-of-text token.

    CLIP's tokenizer gives end-of-text the largest id of the vocabulary, and
    CLIP pools at the argmax of the ids (docs/METHODS.md, "Notation").
    """
    return tokens.argmax(dim=-1)


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
