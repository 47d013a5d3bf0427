"""Target construction: hand-computed cases, padding exclusion, top-K selection, fairseq equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d2v.core.errors import ConfigError
from d2v.models.targets import build_targets

# Two layers, B=1, T=3, D=2.
L0 = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]]])
L1 = torch.tensor([[[0.0, 1.0], [0.0, 3.0], [3.0, 2.0]]])


def manual_instance(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_instance_norm_hand_computed() -> None:
    # layer 0, channel 0: [1, 3, 5] -> mean 3, var 8/3 -> [-1, 0, 1] * sqrt(3/8); channel 1 is 2x channel 0.
    s = (8 / 3 + 1e-5) ** -0.5
    s1 = (32 / 3 + 1e-5) ** -0.5
    n0 = torch.tensor([[[-2 * s, -4 * s1], [0.0, 0.0], [2 * s, 4 * s1]]])
    # layer 1, channel 0: [0, 0, 3] -> mean 1, var 2; channel 1: [1, 3, 2] -> mean 2, var 2/3.
    a, b = (2 + 1e-5) ** -0.5, (2 / 3 + 1e-5) ** -0.5
    n1 = torch.tensor([[[-1 * a, -1 * b], [-1 * a, 1 * b], [2 * a, 0.0]]])
    y = build_targets([L0, L1], top_k=2, layer_norm="instance", final_norm="none")
    torch.testing.assert_close(y, (n0 + n1) / 2)
    assert y.dtype == torch.float32


def test_layer_norm_hand_computed() -> None:
    # per step over 2 channels: (a, b) -> (+-|a-b|/2) / sqrt((a-b)^2/4 + eps)
    def ln2(a: float, b: float) -> list[float]:
        d = (a - b) / 2
        r = (d * d + 1e-5) ** -0.5
        return [d * r, -d * r]

    expected = torch.tensor([[[(x + y) / 2 for x, y in zip(ln2(*p), ln2(*q), strict=True)] for p, q in
                              zip(L0[0].tolist(), L1[0].tolist(), strict=True)]])  # fmt: skip
    y = build_targets([L0, L1], top_k=2, layer_norm="layer", final_norm="none")
    torch.testing.assert_close(y, expected)
    # the L1 step [0, 3] is (-1, 1) after LN, L0 steps are all (-1, 1): average row 1 is (-1, 1)
    torch.testing.assert_close(y[0, 1], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)


def test_matches_fairseq_formulation() -> None:
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 7, 5, generator=g) * (i + 1) for i in range(4)]
    y = build_targets(layers, top_k=3, layer_norm="instance", final_norm="layer")
    # fairseq data2vec2.make_targets: F.instance_norm on B x C x T, sum / K, then F.layer_norm
    ref = [F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in layers[-3:]]
    ref = F.layer_norm(sum(ref) / 3, (5,))
    torch.testing.assert_close(y, ref)
    y2 = build_targets(layers, top_k=2, layer_norm="layer", final_norm="instance")
    ref2 = manual_instance(sum(F.layer_norm(t, (5,)) for t in layers[-2:]) / 2)
    torch.testing.assert_close(y2, ref2)


def test_top_k_picks_the_last_layers() -> None:
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(1, 4, 3, generator=g) for _ in range(5)]
    y = build_targets(layers, top_k=2, layer_norm="none", final_norm="none")
    torch.testing.assert_close(y, (layers[3] + layers[4]) / 2)
    layers[0] = layers[0] * 100  # untouched by top-2
    torch.testing.assert_close(build_targets(layers, 2, "none", "none"), y)
    with pytest.raises(ConfigError):
        build_targets(layers, 6, "none", "none")


@pytest.mark.parametrize("final_norm", ["none", "layer", "instance"])
def test_padding_excluded_from_instance_stats(final_norm: str) -> None:
    g = torch.Generator().manual_seed(2)
    layers = [torch.randn(2, 6, 4, generator=g) for _ in range(3)]
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    y = build_targets(layers, 3, "instance", final_norm, padding_mask=padding)  # type: ignore[arg-type]
    changed = [t.clone() for t in layers]
    for t in changed:
        t[1, 4:] = 1e3
    y2 = build_targets(changed, 3, "instance", final_norm, padding_mask=padding)  # type: ignore[arg-type]
    torch.testing.assert_close(y, y2)
    assert bool((y[1, 4:] == 0).all())
    # real positions equal the unpadded computation on the truncated row
    y_short = build_targets([t[1:, :4] for t in layers], 3, "instance", final_norm)  # type: ignore[arg-type]
    torch.testing.assert_close(y[1:, :4], y_short)
    # no padding in row 0: identical to the unpadded computation
    torch.testing.assert_close(y[:1], build_targets([t[:1] for t in layers], 3, "instance", final_norm))  # type: ignore[arg-type]


def test_low_precision_inputs_give_fp32() -> None:
    layers = [torch.randn(2, 5, 4).to(torch.bfloat16) for _ in range(2)]
    assert build_targets(layers, 2, "instance", "none").dtype == torch.float32
