"""The text tower's pooled token: the one rule, used by the adapter and the LRP view alike."""

from __future__ import annotations

import torch


def end_of_text(tokens: torch.Tensor) -> torch.Tensor:
    """``[T]``: the position each text pools at, its end-of-text token.

    CLIP's tokenizer gives end-of-text the largest id of the vocabulary, and
    CLIP pools at the argmax of the ids (docs/METHODS.md, "Notation").
    """
    return tokens.argmax(dim=-1)
