"""The data2vec regression loss and collapse statistics (spec §1.4, §1.5), in fp32.

``loss = scale * sum_{masked n} sum_d l(pred[n, d] - target[n, d]) / N`` with ``l`` = squared error (``beta=0``)
or PyTorch smooth-L1 with ``beta``. fairseq returns the sum and divides the gradient by the all-reduced sample size;
``LossOutput.loss_sum`` and ``sample_size`` are given so that a distributed trainer can do the same.

| recipe | beta | scale |
|---|---|---|
| v1 audio, v2 audio/image | 0 (MSE) | ``1/sqrt(D)`` (``scale=None``) |
| v1 text | 4 | 1 |
| v2 text | 0 | 1 |
| v1 vision (D2VV, mean over elements) | 2 | ``1/D`` |

Collapse monitors (``compute_var`` in fairseq): mean over dims of the per-dim std across the masked positions,
``sqrt(var + 1e-6)`` with the unbiased variance. The training loop owns the thresholds (0.1 / 0.01 after 5k
updates) and their all-reduce.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from d2v.core.errors import InvalidInput

__all__ = ["LossOutput", "d2v_loss", "feature_std"]


class LossOutput(NamedTuple):
    """``loss``: scalar, ``loss_sum / sample_size`` (0 if nothing is masked). ``loss_sum``: scalar, scaled sum over
    positions and dims. ``sample_size``: number of positions N. ``target_std`` / ``pred_std``: detached scalars
    (:func:`feature_std`)."""

    loss: Tensor
    loss_sum: Tensor
    sample_size: int
    target_std: Tensor
    pred_std: Tensor


@torch.no_grad()
def feature_std(y: Tensor) -> Tensor:
    """fairseq ``compute_var`` on one device: ``mean_d sqrt(var_n(y[n, d]) + 1e-6)`` for (..., D) -> scalar fp32.

    NaN when fewer than 2 positions.
    """
    y = y.detach().reshape(-1, y.shape[-1]).float()  # (N, D)
    if y.shape[0] < 2:
        return torch.full((), math.nan, device=y.device)
    return torch.sqrt(y.var(dim=0) + 1e-6).mean()


def d2v_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.0,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> LossOutput:
    """data2vec regression loss over the masked positions.

    Args:
        pred: student predictions, (N, D) already at masked positions, or (B, T, D) with ``mask``.
        target: teacher targets, same shape as ``pred`` (no gradient flows into it).
        beta: 0 for squared error, > 0 for smooth-L1 with this beta.
        scale: multiplier of the per-position sum; None = ``1 / sqrt(D)``.
        mask: bool (B, T), True = position in the loss (the student's masked positions); None if ``pred`` is
            already selected.

    Returns:
        :class:`LossOutput`.
    """
    if pred.shape != target.shape:
        raise InvalidInput(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if beta < 0:
        raise InvalidInput(f"beta must be >= 0, got {beta}")
    if mask is not None:
        if mask.shape != pred.shape[:-1]:
            raise InvalidInput(f"mask shape {tuple(mask.shape)} != pred leading shape {tuple(pred.shape[:-1])}")
        pred, target = pred[mask], target[mask]  # (N, D)
    pred = pred.reshape(-1, pred.shape[-1]).float()
    target = target.detach().reshape(-1, target.shape[-1]).float()
    N, D = pred.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if beta == 0:
        elementwise = F.mse_loss(pred, target, reduction="none")
    else:
        elementwise = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    loss_sum = elementwise.sum() * scale
    loss = loss_sum / max(N, 1)
    return LossOutput(loss, loss_sum, N, feature_std(target), feature_std(pred))
