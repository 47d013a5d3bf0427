"""data2vec v1 text masking on token ids: span masking as released and BERT 80/10/10 (spec §2.2, §8.2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from d2v.core.errors import ConfigError, InvalidInput

from ._common import check_prob, choose, expand_spans


class MaskedText(NamedTuple):
    """Output of the text maskers.

    ``input_ids``: the student input (B, T). ``mask``: bool (B, T), the positions that hold ``<mask>`` — the
    **loss mask** (data2vec regresses only ``<mask>`` positions, spec §8.2). ``selected``: bool (B, T), all
    positions picked by the masker (equal to ``mask`` for the span variant; with BERT 80/10/10 it also holds the
    random-token and unchanged positions, which are *not* in the loss).
    """

    input_ids: Tensor
    mask: Tensor
    selected: Tensor


def _maskable(input_ids: Tensor, special_tokens_mask: Tensor | None, padding_mask: Tensor | None) -> Tensor:
    allowed = torch.ones_like(input_ids, dtype=torch.bool)
    for name, m in (("special_tokens_mask", special_tokens_mask), ("padding_mask", padding_mask)):
        if m is not None:
            if m.shape != input_ids.shape:
                raise InvalidInput(f"{name} shape {tuple(m.shape)} != input_ids shape {tuple(input_ids.shape)}")
            allowed &= ~m.bool()
    return allowed


def text_span_mask(
    input_ids: Tensor,
    *,
    mask_id: int,
    special_tokens_mask: Tensor | None = None,
    padding_mask: Tensor | None = None,
    mask_prob: float = 0.35,
    span: int = 4,
    generator: torch.Generator,
) -> MaskedText:
    """data2vec v1 text masking as released (fairseq ``MaskTokensDataset`` with ``mask_multiple_length=4``).

    Per row with ``n`` maskable tokens: ``int(mask_prob * n / span + U[0,1))`` starts drawn without replacement
    among maskable tokens, each extended to ``span`` tokens (overlaps merge, truncated at the sequence end);
    tokens flagged in ``special_tokens_mask`` / ``padding_mask`` are never masked. Every selected token becomes
    ``<mask>`` (no random/unchanged). fairseq masks a block before padding it and flags nothing else: starts range
    over every token of the block, ``<s>`` and ``</s>`` included; pass only ``padding_mask`` for that.

    Args:
        input_ids: int64 ``(B, T)``.
        mask_id: id of ``<mask>``.
        special_tokens_mask: bool ``(B, T)``, True = special token (BOS/EOS/CLS/SEP), never masked.
        padding_mask: bool ``(B, T)``, True = padding, never masked.
        mask_prob: start probability times ``span`` (0.35).
        span: span length in tokens (4).
        generator: the only source of randomness (on the device of ``input_ids``).

    Returns:
        :class:`MaskedText` with ``mask == selected``.
    """
    check_prob("mask_prob", mask_prob, inclusive_one=True)
    allowed = _maskable(input_ids, special_tokens_mask, padding_mask)
    n = allowed.sum(dim=1)
    u = torch.rand(n.shape, generator=generator, device=input_ids.device, dtype=torch.float64)
    num = (mask_prob * n.double() / span + u).long()
    starts = choose(allowed, num, generator)
    mask = expand_spans(starts, span) & allowed
    return MaskedText(input_ids.masked_fill(mask, mask_id), mask, mask)


def bert_mask(
    input_ids: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_tokens_mask: Tensor | None = None,
    padding_mask: Tensor | None = None,
    mask_prob: float = 0.15,
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
    min_random_id: int = 0,
    generator: torch.Generator,
) -> MaskedText:
    """BERT masking (paper's main v1 text setting): ``int(mask_prob * n + U[0,1))`` tokens per row, uniformly
    without replacement among maskable tokens; each becomes ``<mask>`` / a random token / itself with
    ``replace_probs``.

    The loss mask (``MaskedText.mask``) holds only the ``<mask>`` positions, as in fairseq data2vec
    (``src_tokens.eq(mask_idx)``): the random and unchanged 20% are *not* regressed (spec §8.2, fairseq#4229).
    Use ``selected`` instead if you want them in the loss.

    Args:
        input_ids: int64 ``(B, T)``.
        mask_id: id of ``<mask>``.
        vocab_size: random replacement ids are drawn from ``[min_random_id, vocab_size)``.
        special_tokens_mask: bool ``(B, T)``, True = special token, never selected.
        padding_mask: bool ``(B, T)``, True = padding, never selected.
        mask_prob: selected fraction (0.15).
        replace_probs: probabilities of (``<mask>``, random token, unchanged); must sum to 1.
        min_random_id: first id eligible as a random replacement (e.g. skip the special tokens).
        generator: the only source of randomness (on the device of ``input_ids``).

    Returns:
        :class:`MaskedText`.
    """
    check_prob("mask_prob", mask_prob, inclusive_one=True)
    if abs(sum(replace_probs) - 1.0) > 1e-6 or min(replace_probs) < 0:
        raise ConfigError(f"replace_probs must be non-negative and sum to 1, got {replace_probs}")
    if not 0 <= min_random_id < vocab_size:
        raise ConfigError(f"min_random_id must be in [0, vocab_size={vocab_size}), got {min_random_id}")
    allowed = _maskable(input_ids, special_tokens_mask, padding_mask)
    device = input_ids.device
    n = allowed.sum(dim=1)
    u = torch.rand(n.shape, generator=generator, device=device, dtype=torch.float64)
    selected = choose(allowed, (mask_prob * n.double() + u).long(), generator)
    r = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (r < replace_probs[0])
    to_random = selected & (r >= replace_probs[0]) & (r < replace_probs[0] + replace_probs[1])
    random_ids = torch.randint(min_random_id, vocab_size, input_ids.shape, generator=generator, device=device)
    out = torch.where(to_random, random_ids, input_ids).masked_fill(to_mask, mask_id)
    return MaskedText(out, to_mask, selected)
