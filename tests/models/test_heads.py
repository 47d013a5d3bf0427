"""Heads and v2 decoders: shapes, noise fill, and that they can learn (a few optimiser steps reduce the loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v.core.errors import ConfigError
from d2v.models.heads import (
    Decoder1d,
    Decoder2d,
    DecoderConfig,
    RegressionHead,
    RegressionHeadConfig,
    build_decoder,
    build_regression_head,
)
from d2v.models.loss import d2v_loss
from d2v.models.masking import block_mask_1d, block_mask_2d, gather_kept, make_mask_info, random_mask
from d2v.models.targets import build_targets


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_regression_heads() -> None:
    assert isinstance(RegressionHead(8).net, torch.nn.Linear)
    mlp = build_regression_head(RegressionHeadConfig(kind="mlp"), 8)
    assert [m.weight.shape for m in mlp.net if isinstance(m, torch.nn.Linear)] == [(16, 8), (8, 16)]
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 8)


@pytest.mark.parametrize("cfg", [DecoderConfig.audio_base(), DecoderConfig.text_base()])
def test_decoder1d_shapes(cfg: DecoderConfig) -> None:
    cfg.dim = 32
    dec = build_decoder(cfg, embed_dim=48)
    assert isinstance(dec, Decoder1d)
    mask = block_mask_1d(3, 40, mask_prob=0.5, mask_prob_adjust=0.05, block=5, generator=gen())
    info = make_mask_info(mask)
    x_kept = torch.randn(3, info.num_keep, 48)
    y = dec(x_kept, info.ids_restore, generator=gen())
    assert y.shape == (3, 40, 48) and torch.isfinite(y).all()
    assert dec(torch.randn(3, 40, 48), None).shape == (3, 40, 48)  # nothing dropped


def test_decoder2d_shapes_even_kernel() -> None:
    dec = Decoder2d(32, grid=(6, 5), decoder_dim=16, depth=2, kernel=4, groups=4)
    mask = block_mask_2d(2, 6, 5, mask_prob=0.6, block=2, generator=gen())
    info = make_mask_info(mask)
    y = dec(torch.randn(2, info.num_keep, 32), info.ids_restore, generator=gen())
    assert y.shape == (2, 30, 32)
    with pytest.raises(ConfigError):
        dec(torch.randn(2, info.num_keep, 32), info.ids_restore)  # neither noise nor generator


def test_decoder_noise_fill_is_explicit() -> None:
    dec = Decoder1d(8, decoder_dim=8, depth=1, kernel=1, groups=1, residual=False, input_dropout=0.0).eval()
    info = make_mask_info(random_mask(2, 10, mask_prob=0.5, generator=gen()))
    x = torch.randn(2, info.num_keep, 8)
    noise = torch.randn(2, 10 - info.num_keep, 8)
    a, b = dec(x, info.ids_restore, noise=noise), dec(x, info.ids_restore, noise=noise)
    torch.testing.assert_close(a, b)
    c, d = dec(x, info.ids_restore, generator=gen(3)), dec(x, info.ids_restore, generator=gen(3))
    torch.testing.assert_close(c, d)
    # kernel 1: each position only sees itself, so kept positions do not depend on the noise
    torch.testing.assert_close(a[~info.mask], c[~info.mask])
    assert not torch.allclose(a[info.mask], c[info.mask])


@pytest.mark.parametrize("two_d", [False, True])
def test_decoder_learns(two_d: bool) -> None:
    torch.manual_seed(0)  # parameter init only
    B, D = 4, 16
    if two_d:
        dec = Decoder2d(D, grid=(4, 4), decoder_dim=16, depth=2, kernel=3, groups=4, input_dropout=0.0)
        mask = block_mask_2d(B, 4, 4, mask_prob=0.5, block=2, generator=gen())
    else:
        dec = Decoder1d(D, decoder_dim=16, depth=2, kernel=3, groups=4, input_dropout=0.0)
        mask = block_mask_1d(B, 16, mask_prob=0.5, block=3, generator=gen())
    info = make_mask_info(mask)
    x = torch.randn(B, 16, D, generator=gen(1))
    target = torch.randn(B, 16, D, generator=gen(2))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        pred = dec(gather_kept(x, info.ids_keep), info.ids_restore, generator=gen(step))
        loss = F.mse_loss(pred[info.mask], target[info.mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_linear_head_on_built_targets_reduces_d2v_loss() -> None:
    torch.manual_seed(0)
    B, T, D = 4, 20, 8
    g = gen(5)
    student = torch.randn(B, T, D, generator=g)
    teacher_layers = [student @ torch.randn(D, D, generator=g) + 0.1 * torch.randn(B, T, D, generator=g)] * 3
    targets = build_targets(teacher_layers, top_k=2, layer_norm="instance", final_norm="none")
    mask = random_mask(B, T, mask_prob=0.5, generator=gen(6))
    head = RegressionHead(D)
    opt = torch.optim.Adam(head.parameters(), lr=5e-2)
    losses = []
    for _ in range(40):
        out = d2v_loss(head(student), targets, mask=mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert out.sample_size == int(mask.sum())
