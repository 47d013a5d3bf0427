"""Modality front ends: raw inputs -> token sequences [B, T, D] for the shared Transformer.

Each front end splits into ``local_features(inputs, padding_mask)`` (the modality-local part: conv feature
extractor, patch embedding, token embedding) and ``contextualize(local, mask, mask_mode)`` (masking, positions,
CLS token, context norm); ``forward`` runs both. Both halves return ``FrontEndOutput``, so a trainer can run the
local part once and contextualize several masked copies (data2vec 2.0 multi-mask).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

MaskMode = Literal["replace", "remove"]


class FrontEndOutput(NamedTuple):
    tokens: Tensor  # [B, T, D]
    padding_mask: Tensor | None  # [B, T] bool, True = padded; None = no padding
    positions: Tensor | None = None  # [B, T] original token index when masked tokens were removed (ALiBi)
