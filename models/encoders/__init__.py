"""Modality front ends: raw inputs -> token sequences [B, T, D] for the shared Transformer.

Each front end splits into ``local_features(inputs, padding_mask)`` (the modality-local part: conv feature
extractor, patch embedding, token embedding) and ``contextualize(local, mask, mask_mode)`` (masking, positions,
CLS token, context norm); ``forward`` runs both. Both halves return ``FrontEndOutput``, so a trainer can run the
local part once and contextualize several masked copies (data2vec 2.0 multi-mask).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from d2v.models.masking import gather_kept

MaskMode = Literal["replace", "remove"]


class FrontEndOutput(NamedTuple):
    tokens: Tensor  # [B, T, D]
    padding_mask: Tensor | None  # [B, T] bool, True = padded; None = no padding
    positions: Tensor | None = None  # [B, T] original token index when masked tokens were removed (ALiBi)


def visible_indices(mask: Tensor) -> Tensor:
    """Indices of the unmasked tokens of each row, in their original order: [B, T_keep] int64.

    ``mask`` [B, T] bool (True = masked) must mask the same number of tokens in every row (data2vec 2.0's
    generators guarantee it); a stable sort keeps the visible tokens in sequence order.
    """
    num_masked = mask.sum(dim=1)
    if not torch.compiler.is_compiling() and bool((num_masked != num_masked[0]).any()):
        raise ValueError("mask_mode='remove' needs the same number of masked tokens in every row")
    keep = int(mask.shape[1] - num_masked[0])
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
    return order[:, :keep]


def gather_tokens(x: Tensor, indices: Tensor) -> Tensor:
    """x [B, T, ...] -> x[b, indices[b]] [B, K, ...] (``d2v.models.masking.gather_kept``)."""
    return gather_kept(x, indices)
