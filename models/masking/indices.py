"""data2vec 2.0 keep / restore bookkeeping: drop masked tokens from the student, put them back for the decoder.

One definition of the kept order (:func:`visible_indices`): the unmasked positions of each row in increasing
order, found by a stable sort. The front ends (``mask_mode="remove"``) and :func:`make_mask_info` (decoder
restore indices) both use it, so the student's kept tokens and the decoder's ``ids_restore`` always agree.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from d2v.core.errors import InvalidInput


class MaskInfo(NamedTuple):
    """Indices to drop masked tokens from the student and put them back for the decoder (v2).

    ``mask``: bool (B, T), True = masked. ``ids_keep``: int64 (B, K), the kept positions in increasing order.
    ``ids_restore``: int64 (B, T), the inverse permutation: ``cat([kept, masked], 1).gather(1, ids_restore)``
    puts every token back at its position. ``num_keep``: K.
    """

    mask: Tensor
    ids_keep: Tensor
    ids_restore: Tensor
    num_keep: int


def _kept_first(mask: Tensor) -> tuple[Tensor, int]:
    """(B, T) permutation listing the kept positions first (in order), then the masked ones; and K.

    A stable sort keeps the order (fairseq ``make_maskinfo`` uses an unstable ``argsort``; the order only matters
    for reproducibility). The equal-count check is skipped while ``torch.compile`` traces (it would graph-break).

    Raises:
        InvalidInput: if rows have different masked counts (the gather would silently drop or duplicate
            tokens, spec §8.13).
    """
    if mask.ndim != 2:
        raise InvalidInput(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    B, T = mask.shape
    counts = mask.sum(dim=1)
    if not torch.compiler.is_compiling() and B > 0 and bool((counts != counts[0]).any()):
        raise InvalidInput(
            f"every row of a v2 mask must have the same number of masked positions, got counts {counts.tolist()}; "
            "use a generator with equal counts (block_mask_*, random_mask, span_mask(require_same_masks=True))"
        )
    num_keep = T - (int(counts[0]) if B > 0 else 0)
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # (B, T): kept first
    return order, num_keep


def visible_indices(mask: Tensor) -> Tensor:
    """Indices of the unmasked tokens of each row, in their original order: bool (B, T) -> int64 (B, K).

    ``mask`` (True = masked) must mask the same number of tokens in every row (data2vec 2.0's generators
    guarantee it); see :func:`_kept_first` for the error.
    """
    order, num_keep = _kept_first(mask)
    return order[:, :num_keep]


def make_mask_info(mask: Tensor) -> MaskInfo:
    """Build :class:`MaskInfo` from a bool (B, T) mask with the same masked count in every row.

    ``ids_keep`` is :func:`visible_indices` of the mask.

    Raises:
        InvalidInput: if rows have different masked counts.
    """
    order, num_keep = _kept_first(mask)
    B, T = mask.shape
    ids_restore = torch.empty_like(order)
    ids_restore.scatter_(1, order, torch.arange(T, device=mask.device).expand(B, T))
    return MaskInfo(mask.bool(), order[:, :num_keep], ids_restore, num_keep)


def _expand_index(index: Tensor, x: Tensor) -> Tensor:
    """(B, N) -> (B, N, *x.shape[2:]) for ``gather`` along dim 1."""
    return index.reshape(*index.shape, *([1] * (x.ndim - 2))).expand(*index.shape, *x.shape[2:])


def gather_kept(x: Tensor, ids_keep: Tensor) -> Tensor:
    """Keep the unmasked tokens: (B, T, ...) -> (B, K, ...). Works for padding masks (B, T) too."""
    return x.gather(1, _expand_index(ids_keep, x))


def restore(x_kept: Tensor, fill: Tensor, ids_restore: Tensor) -> Tensor:
    """Put kept tokens back at their positions and ``fill`` into the masked slots: (B, K, D) -> (B, T, D).

    Args:
        x_kept: (B, K, D) tokens in ``ids_keep`` order.
        fill: (B, T - K, D) values for the masked slots (decoder noise), or anything broadcastable to it
            (e.g. a (D,) mask embedding).
        ids_restore: (B, T) from :func:`make_mask_info`.
    """
    B, K = x_kept.shape[:2]
    T = ids_restore.shape[1]
    fill = fill.to(x_kept.dtype).expand(B, T - K, *x_kept.shape[2:])
    full = torch.cat([x_kept, fill], dim=1)  # (B, T, D) in shuffled order
    return full.gather(1, _expand_index(ids_restore, full))
