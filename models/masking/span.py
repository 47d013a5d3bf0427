"""data2vec v1 audio masking: wav2vec 2.0 span masks over frames (spec §2.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from d2v.core.errors import ConfigError, InvalidInput

from ._common import check_prob, choose, expand_spans


def span_mask(
    shape: tuple[int, int],
    padding_mask: Tensor | None = None,
    *,
    mask_prob: float = 0.65,
    span: int = 10,
    min_masks: int = 1,
    require_same_masks: bool = True,
    generator: torch.Generator,
) -> Tensor:
    """wav2vec 2.0 / data2vec v1 span masking (fairseq ``compute_mask_indices``, static lengths).

    Per row of real length ``n``: ``num = max(min_masks, int(mask_prob * n / span + U[0,1)))`` span starts are
    drawn without replacement from ``range(n - span)``, each is expanded to ``span`` consecutive steps and the
    union is taken (overlaps merge, so ~49% is masked for p=0.65, span=10). With ``require_same_masks`` every row
    is then randomly sub-sampled down to the smallest count in the batch (this can fragment spans), which v1
    needs for nothing but fairseq does; v2 encoders need it. Padded steps are never masked.

    Args:
        shape: ``(B, T)``.
        padding_mask: bool ``(B, T)``, True = padded (real steps first), or None.
        mask_prob: the start probability times ``span`` (fairseq ``mask_prob``).
        span: span length (fairseq ``mask_length``).
        min_masks: minimum number of spans per row.
        require_same_masks: equalise the masked count across rows (to the batch minimum).
        generator: the only source of randomness.

    Returns:
        bool ``(B, T)``, True = masked.
    """
    check_prob("mask_prob", mask_prob, inclusive_one=True)
    if span < 1:
        raise ConfigError(f"span must be >= 1, got {span}")
    B, T = shape
    device = generator.device
    steps = torch.arange(T, device=device)
    lengths = _real_lengths(B, T, padding_mask, device)
    u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
    num = (mask_prob * lengths.double() / span + u).long().clamp(min=min_masks)
    # Start range: range(n - span); fairseq widens it to num + 1 when the row is too short for num spans.
    n_starts = torch.where(lengths - span > num, lengths - span, num + 1).clamp(max=lengths)
    starts = choose(steps[None, :] < n_starts[:, None], num, generator)  # (B, T)
    mask = expand_spans(starts, span) & (steps[None, :] < lengths[:, None])  # (B, T)
    if require_same_masks and B > 1:
        mask = same_masked_count(mask, [generator] * B)
    return mask


def same_masked_count(mask: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """fairseq ``require_same_masks``: every row keeps a uniformly random subset of its masked positions, of the
    size of the smallest masked count in the batch (fairseq ``rng.choice(mask_idc, min_len, replace=False)``).

    Row ``b`` draws from ``generators[b]`` only, so with one generator per sample a row's result depends on its
    own mask, its generator and the batch minimum, not on its place in the batch (the data pipeline keys every
    sample's randomness by the sample). ``mask``: bool ``(B, T)``; returns bool ``(B, T)``.
    """
    if len(generators) != mask.shape[0]:
        raise InvalidInput(f"{len(generators)} generators for {mask.shape[0]} rows")
    target = mask.sum(dim=1).min().reshape(1)
    rows = [
        choose(row[None], target, g)[0] if row.sum() > target else row for row, g in zip(mask, generators, strict=True)
    ]
    return torch.stack(rows) if rows else mask


def _real_lengths(B: int, T: int, padding_mask: Tensor | None, device: torch.device) -> Tensor:
    """Real (unpadded) length of every row: (B,) int64."""
    if padding_mask is None:
        return torch.full((B,), T, device=device)
    if padding_mask.shape != (B, T):
        raise InvalidInput(f"padding_mask shape {tuple(padding_mask.shape)} != {(B, T)}")
    return T - padding_mask.to(device).sum(dim=1)
