"""Mask generators: shapes, seeding, counts, statistics, structure, padding, keep/restore indices."""

from __future__ import annotations

import pytest
import torch

from d2v.core.errors import InvalidInput
from d2v.models.masking import (
    beit_block_mask,
    bert_mask,
    block_mask_1d,
    block_mask_2d,
    gather_kept,
    make_mask_info,
    random_mask,
    restore,
    span_mask,
    text_span_mask,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), row.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = torch.diff(padded)
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    return (ends - starts).tolist()


MAKERS = {
    "span": lambda g: span_mask((4, 200), generator=g),
    "beit": lambda g: beit_block_mask(4, generator=g),
    "block1d": lambda g: block_mask_1d(4, 100, mask_prob=0.5, mask_prob_adjust=0.05, block=5, generator=g),
    "block2d": lambda g: block_mask_2d(4, 14, 14, mask_prob=0.8, mask_prob_adjust=0.07, inverse=True, generator=g),
    "random": lambda g: random_mask(4, 64, mask_prob=0.48, generator=g),
    "text_span": lambda g: text_span_mask(torch.arange(5, 69).repeat(4, 1), mask_id=1, generator=g).mask,
    "bert": lambda g: bert_mask(torch.arange(5, 69).repeat(4, 1), mask_id=1, vocab_size=100, generator=g).selected,
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_seeded_determinism_and_dtype(name: str) -> None:
    a, b, c = MAKERS[name](gen(1)), MAKERS[name](gen(1)), MAKERS[name](gen(2))
    assert a.dtype == torch.bool and a.shape[0] == 4
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_masks_do_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for make in MAKERS.values():
        make(gen(0))
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------- v1 audio


def test_span_mask_fraction_about_49_percent() -> None:
    m = span_mask((64, 500), require_same_masks=False, generator=gen())
    assert m.shape == (64, 500)
    assert 0.47 < m.float().mean().item() < 0.51  # 1 - (1 - 10/490)^32.5 = 0.488
    eq = span_mask((8, 500), generator=gen())
    assert 0.40 < eq.float().mean().item() < 0.50  # equalised down to the batch minimum


def test_span_mask_equal_counts_and_spans() -> None:
    m = span_mask((16, 500), generator=gen(3))
    counts = m.sum(dim=1)
    assert bool((counts == counts[0]).all())
    single = span_mask((1, 500), generator=gen(4))[0]  # one row: no sub-sampling, pure unions of 10-spans
    assert all(r >= 10 for r in runs(single))


def test_span_mask_padding_never_masked() -> None:
    padding = torch.zeros(6, 300, dtype=torch.bool)
    lengths = [300, 250, 200, 120, 60, 30]
    for i, n in enumerate(lengths):
        padding[i, n:] = True
    m = span_mask((6, 300), padding, generator=gen())
    assert not (m & padding).any()
    assert bool((m.sum(1) == m.sum(1)[0]).all()) and m.sum(1)[0] > 0
    m_free = span_mask((6, 300), padding, require_same_masks=False, generator=gen())
    frac = m_free.sum(1).float() / torch.tensor(lengths)
    assert frac[:3].min() > 0.3  # each row masked in proportion to its own length


def test_span_mask_min_masks_on_short_rows() -> None:
    m = span_mask((3, 12), mask_prob=0.0, span=4, min_masks=1, require_same_masks=False, generator=gen())
    assert bool((m.sum(1) == 4).all())


# --------------------------------------------------------------------------------------- v1 vision


def test_beit_block_mask_counts() -> None:
    m = beit_block_mask(512, generator=gen())
    counts = m.sum(dim=1)
    assert m.shape == (512, 196)
    assert counts.max().item() <= 120
    assert counts.float().mean().item() > 115
    filled = beit_block_mask(64, fill="random", generator=gen())
    assert bool((filled.sum(1) == 120).all())


def test_beit_block_mask_is_blocky() -> None:
    m = beit_block_mask(32, generator=gen(5)).view(32, 14, 14).float()
    # a masked patch usually has masked 4-neighbours (random placement would give ~61%)
    neighbours = torch.nn.functional.avg_pool2d(m[:, None], 3, stride=1, padding=1)[:, 0] * 9 - m
    assert (neighbours[m.bool()] / 8).mean().item() > 0.7


# ------------------------------------------------------------------------------------------ v2


@pytest.mark.parametrize("inverse", [False, True])
def test_block_mask_2d_exact_counts(inverse: bool) -> None:
    m = block_mask_2d(32, 14, 14, mask_prob=0.8, mask_prob_adjust=0.07, block=3, inverse=inverse, generator=gen())
    expected = 196 - int(196 * 0.2) if inverse else int(196 * 0.8)
    assert m.shape == (32, 196)
    assert bool((m.sum(1) == expected).all())
    if inverse:
        assert bool(((~m).sum(1) == 39).all())


def test_block_mask_2d_inverse_keeps_blobs() -> None:
    m = block_mask_2d(64, 14, 14, mask_prob=0.8, mask_prob_adjust=0.07, block=3, inverse=True, generator=gen())
    kept = (~m).view(64, 1, 14, 14).float()
    neighbours = torch.nn.functional.avg_pool2d(kept, 3, stride=1, padding=1) * 9 - kept
    # kept patches sit in 3x3 blobs: on average several kept neighbours (uniform would give ~1.6 of 8)
    assert neighbours[kept.bool()].mean().item() > 3.0


def test_block_mask_1d_exact_count_and_spans() -> None:
    m = block_mask_1d(64, 500, mask_prob=0.5, mask_prob_adjust=0.05, block=5, generator=gen())
    assert bool((m.sum(1) == 250).all())
    lengths = [r for row in m for r in runs(row)]
    long = sum(r for r in lengths if r >= 5)
    assert long / sum(lengths) > 0.7  # mostly runs of >= 5


def test_random_mask_exact() -> None:
    m = random_mask(16, 512, mask_prob=0.48, generator=gen())
    assert bool((m.sum(1) == 512 - int(512 * 0.52)).all())


# ------------------------------------------------------------------------------------------ text


def test_text_span_mask() -> None:
    ids = torch.randint(10, 1000, (64, 128), generator=gen(9))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    padding = torch.zeros_like(special)
    padding[1, 100:] = True
    out = text_span_mask(ids, mask_id=4, special_tokens_mask=special, padding_mask=padding, generator=gen())
    assert torch.equal(out.mask, out.selected)
    assert not (out.mask & (special | padding)).any()
    assert bool((out.input_ids[out.mask] == 4).all())
    assert torch.equal(out.input_ids[~out.mask], ids[~out.mask])
    # ~11.5 spans of 4 over 126 maskable tokens: 1 - (1 - 4/126)^11.5 ~ 0.31 of them (0.30 of all 128)
    assert 0.27 < out.mask.float().mean().item() < 0.33
    assert sum(r >= 4 for row in out.mask for r in runs(row)) > 0.8 * sum(len(runs(row)) for row in out.mask)


def test_bert_mask_80_10_10() -> None:
    ids = torch.randint(10, 1000, (256, 128), generator=gen(9))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    out = bert_mask(ids, mask_id=4, vocab_size=1000, special_tokens_mask=special, min_random_id=10, generator=gen())
    sel = out.selected
    assert not (sel & special).any()
    assert abs(sel.float().sum(1).mean().item() - 0.15 * 127) < 1.0
    frac_mask = out.mask.sum() / sel.sum()
    assert 0.77 < frac_mask.item() < 0.83
    assert bool((out.input_ids[out.mask] == 4).all())
    assert torch.equal(out.input_ids[~sel], ids[~sel])
    unchanged = sel & ~out.mask & (out.input_ids == ids)
    assert 0.08 < (unchanged.sum() / sel.sum()).item() < 0.13
    assert bool((out.input_ids[sel & ~out.mask] >= 10).all())


# ------------------------------------------------------------------------------- keep / restore


def test_mask_info_gather_restore_round_trip() -> None:
    mask = random_mask(3, 10, mask_prob=0.5, generator=gen())
    info = make_mask_info(mask)
    assert info.num_keep == 5 and info.ids_keep.shape == (3, 5)
    assert bool((info.ids_keep.diff(dim=1) > 0).all())  # stable: kept tokens in order
    x = torch.randn(3, 10, 4)
    kept = gather_kept(x, info.ids_keep)
    assert torch.equal(kept, x[~mask].view(3, 5, 4))
    full = restore(kept, torch.full((3, 5, 4), -1.0), info.ids_restore)
    assert torch.equal(full[~mask], x[~mask])
    assert bool((full[mask] == -1).all())
    assert torch.equal(gather_kept(mask, info.ids_keep), torch.zeros(3, 5, dtype=torch.bool))


def test_mask_info_rejects_unequal_rows() -> None:
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(InvalidInput, match="same number of masked"):
        make_mask_info(mask)
