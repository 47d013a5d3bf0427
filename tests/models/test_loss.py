"""d2v_loss: zero at equality, MSE and smooth-L1 branches vs manual formulas, masking, std statistics."""

from __future__ import annotations

import math

import pytest
import torch

from d2v.core.errors import InvalidInput
from d2v.models.loss import d2v_loss, feature_std


def test_zero_when_equal() -> None:
    x = torch.randn(10, 8)
    out = d2v_loss(x, x.clone())
    assert out.loss.item() == 0.0 and out.sample_size == 10


def test_mse_branch_manual() -> None:
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    # per position sums of squares: 5, 2, 4 -> mean 11/3, scale 1/sqrt(2)
    out = d2v_loss(pred, target)
    assert out.loss.item() == pytest.approx(11 / 3 / math.sqrt(2))
    assert out.loss_sum.item() == pytest.approx(11 / math.sqrt(2))
    assert d2v_loss(pred, target, scale=1.0).loss.item() == pytest.approx(11 / 3)


def test_smooth_l1_branch_manual() -> None:
    pred = torch.tensor([[1.0, 6.0], [0.0, -0.5]])
    target = torch.zeros(2, 2)
    beta = 4.0

    def sl1(d: float) -> float:
        return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta

    expected = (sl1(1.0) + sl1(6.0) + sl1(0.0) + sl1(-0.5)) / 2
    assert d2v_loss(pred, target, beta=beta, scale=1.0).loss.item() == pytest.approx(expected)


def test_mask_selects_positions_and_gradient_only_there() -> None:
    pred = torch.randn(2, 5, 4, requires_grad=True)
    target = torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = mask[1, 4] = True
    out = d2v_loss(pred, target, mask=mask)
    ref = d2v_loss(pred[mask], target[mask])
    assert out.sample_size == 3
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert pred.grad is not None
    assert bool((pred.grad[~mask] == 0).all()) and bool((pred.grad[mask] != 0).any())


def test_fp32_and_empty() -> None:
    pred = torch.randn(6, 4).to(torch.bfloat16)
    out = d2v_loss(pred, pred.float() + 1)
    assert out.loss.dtype == torch.float32
    empty = d2v_loss(torch.zeros(0, 4), torch.zeros(0, 4))
    assert empty.loss.item() == 0.0 and empty.sample_size == 0 and math.isnan(empty.target_std.item())
    with pytest.raises(InvalidInput):
        d2v_loss(torch.zeros(3, 4), torch.zeros(3, 5))


def test_std_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 3.0])
    assert feature_std(y).item() == pytest.approx(2.0, rel=0.03)
    ref = torch.sqrt(y.var(dim=0) + 1e-6).mean()  # fairseq compute_var
    torch.testing.assert_close(feature_std(y), ref)
    out = d2v_loss(torch.zeros(4000, 3), y)
    assert out.pred_std.item() == pytest.approx(1e-3)  # collapsed predictions: sqrt(0 + 1e-6)
    torch.testing.assert_close(out.target_std, ref)
