"""Block masks over patch grids and sequences.

* data2vec v1 vision: BEiT block-wise masking (:func:`beit_block_mask`, spec §2.3).
* data2vec 2.0 audio / image: (inverse) block masking with an exact count (:func:`block_mask_1d`,
  :func:`block_mask_2d`, spec §2.4).
* data2vec 2.0 text: MAE random masking (:func:`random_mask`, spec §2.4), the block-free special case.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from d2v.core.errors import ConfigError

from ._common import check_prob, equalize, rank

# --------------------------------------------------------------------------------- v1 vision (BEiT)


def beit_block_mask(
    batch: int,
    grid: tuple[int, int] = (14, 14),
    *,
    num_masking_patches: int = 120,
    min_patches: int = 16,
    max_patches: int | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    fill: Literal["none", "random"] = "none",
    generator: torch.Generator,
) -> Tensor:
    """BEiT block-wise masking (``MaskingGenerator`` of data2vec_vision), one independent mask per sample.

    Rectangles of target area ``U[min_patches, remaining]`` and log-uniform aspect ratio in
    ``[min_aspect, max_aspect]`` are placed (10 attempts each) until ``num_masking_patches`` are masked; a
    rectangle that would overshoot the remaining budget is rejected, so the count never exceeds the target but
    may stop short (a few percent of rows). ``fill="random"`` tops every row up with uniformly chosen unmasked
    patches to exactly ``num_masking_patches`` (not in BEiT; use it when rows must have equal counts).

    The geometry is sequential and tiny (196 cells), so it runs in a per-sample ``random.Random`` seeded from
    ``generator`` (one draw per call): deterministic for a given generator state, and ~20x faster than drawing
    scalars from torch.

    Args:
        batch: number of masks.
        grid: ``(H, W)`` patch grid.
        num_masking_patches: target masked count per row (120 of 196 in data2vec v1).
        min_patches: minimum rectangle area (16).
        max_patches: maximum rectangle area (None = ``num_masking_patches``; data2vec passes 196).
        min_aspect: minimum aspect ratio; ``max_aspect`` defaults to ``1 / min_aspect``.
        fill: ``"none"`` (BEiT) or ``"random"`` (top up to the exact count).
        generator: the only source of randomness.

    Returns:
        bool ``(batch, H * W)``, row-major over the grid, True = masked.
    """
    H, W = grid
    if not 0 < num_masking_patches <= H * W:
        raise ConfigError(f"num_masking_patches must be in [1, {H * W}], got {num_masking_patches}")
    max_patches = num_masking_patches if max_patches is None else max_patches
    log_aspect = (math.log(min_aspect), math.log(max_aspect if max_aspect is not None else 1.0 / min_aspect))
    seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device).tolist()
    masks = np.zeros((batch, H, W), dtype=bool)
    for b, seed in enumerate(seeds):
        rng, m, count = random.Random(seed), masks[b], 0
        while count < num_masking_patches:
            delta = _beit_place_block(m, rng, min(num_masking_patches - count, max_patches), min_patches, log_aspect)
            if delta == 0:
                break
            count += delta
    mask = torch.from_numpy(masks.reshape(batch, H * W)).to(generator.device)
    if fill == "random":
        mask = equalize(mask, num_masking_patches, generator)
    return mask


def _beit_place_block(
    mask: np.ndarray, rng: random.Random, budget: int, min_patches: int, log_aspect: tuple[float, float]
) -> int:
    """One BEiT ``_mask`` call: up to 10 attempts to add a rectangle adding 1..budget new patches."""
    H, W = mask.shape
    for _ in range(10):
        area = rng.uniform(min_patches, budget)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < W and h < H:
            top, left = rng.randint(0, H - h), rng.randint(0, W - w)
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new
    return 0


# ------------------------------------------------------------------------------- data2vec 2.0 masks


def block_mask_1d(
    batch: int,
    length: int,
    *,
    mask_prob: float,
    mask_prob_adjust: float = 0.0,
    block: int = 5,
    inverse: bool = False,
    generator: torch.Generator,
) -> Tensor:
    """data2vec 2.0 1-D block masking (fairseq ``compute_block_mask_1d``, ``require_same_masks=True``).

    ``R = mask_prob`` (``1 - R`` if ``inverse``); ``int(L * (R + A) / block)`` centres are drawn with replacement,
    each expanded to ``[c - block//2, c - block//2 + block)`` clamped to the sequence, then positions are randomly
    un-masked / masked until exactly ``int(L * R)`` are set; ``inverse`` flips the result (the blocks are kept).

    Args:
        batch: number of masks (B).
        length: sequence length (L).
        mask_prob: R, the masked fraction (audio Base 0.5).
        mask_prob_adjust: A, extra centre density compensating block overlap (audio Base 0.05).
        block: block length (audio 5).
        inverse: sample the kept region instead of the masked one.
        generator: the only source of randomness.

    Returns:
        bool ``(B, L)``, True = masked; every row has the same count (``int(L*R)``, or ``L - int(L*(1-R))``
        when inverse).
    """
    return _block_mask(batch, (length,), mask_prob, mask_prob_adjust, block, inverse, generator)


def block_mask_2d(
    batch: int,
    height: int,
    width: int,
    *,
    mask_prob: float,
    mask_prob_adjust: float = 0.0,
    block: int = 3,
    inverse: bool = False,
    generator: torch.Generator,
) -> Tensor:
    """data2vec 2.0 2-D (inverse) block masking (fairseq ``compute_block_mask_2d``), on a ``height x width`` grid.

    Same as :func:`block_mask_1d` with ``int(L * (R + A) / block**2)`` centres and ``block x block`` squares
    (offset ``block//2``, clamped at the borders), ``L = height * width``. Image Base: R=0.8, A=0.07, block 3,
    inverse -> 39 of 196 patches kept in ~3x3 blobs.

    Args:
        batch: number of masks (B).
        height: grid rows.
        width: grid columns.
        mask_prob: R.
        mask_prob_adjust: A.
        block: square side.
        inverse: sample the kept region instead of the masked one.
        generator: the only source of randomness.

    Returns:
        bool ``(B, height * width)``, row-major, True = masked, equal counts per row.
    """
    return _block_mask(batch, (height, width), mask_prob, mask_prob_adjust, block, inverse, generator)


def _block_mask(
    batch: int,
    grid: tuple[int, ...],
    mask_prob: float,
    mask_prob_adjust: float,
    block: int,
    inverse: bool,
    generator: torch.Generator,
) -> Tensor:
    check_prob("mask_prob", mask_prob, inclusive_one=True)
    if block < 1:
        raise ConfigError(f"block must be >= 1, got {block}")
    device = generator.device
    L = math.prod(grid)
    R = 1.0 - mask_prob if inverse else mask_prob
    num_centres = int(L * (R + mask_prob_adjust) / block ** len(grid))
    centres = torch.randint(0, L, (batch, num_centres), generator=generator, device=device)  # with replacement
    mask = torch.zeros(batch, L, dtype=torch.bool, device=device)
    mask.scatter_(1, _block_indices(centres, grid, block), True)
    mask = equalize(mask, int(L * R), generator)
    return ~mask if inverse else mask


def _block_indices(centres: Tensor, grid: tuple[int, ...], block: int) -> Tensor:
    """Flat positions covered by the blocks around ``centres`` (B, n), clamped to the grid: (B, n * block**ndim)."""
    offsets = torch.arange(block, device=centres.device) - block // 2  # (block,)
    if len(grid) == 1:
        (L,) = grid
        return (centres[:, :, None] + offsets).clamp(0, L - 1).flatten(1)  # (B, n * block)
    H, W = grid
    rows = (centres // W)[:, :, None, None] + offsets[:, None]  # (B, n, block, 1)
    cols = (centres % W)[:, :, None, None] + offsets[None, :]  # (B, n, 1, block)
    return (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).flatten(1)  # (B, n * block * block)


def random_mask(batch: int, length: int, *, mask_prob: float, generator: torch.Generator) -> Tensor:
    """MAE random masking (data2vec 2.0 text): keep ``int(L * (1 - mask_prob))`` uniformly chosen positions.

    Args:
        batch: number of masks (B).
        length: sequence length (L).
        mask_prob: masked fraction (text Base 0.48).
        generator: the only source of randomness.

    Returns:
        bool ``(B, L)``, True = masked, exactly ``L - int(L * (1 - mask_prob))`` per row.
    """
    check_prob("mask_prob", mask_prob, inclusive_one=True)
    len_keep = int(length * (1 - mask_prob))
    noise = torch.rand(batch, length, generator=generator, device=generator.device)
    return rank(noise) >= len_keep
