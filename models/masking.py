"""Mask generators for data2vec v1 and data2vec 2.0, plus the v2 keep/restore bookkeeping.

Every generator is a pure function of its arguments and an explicit ``torch.Generator`` (no global RNG,
no module state). Masks are ``bool`` tensors, ``True`` = masked, created on ``generator.device``; a
``padding_mask`` (``True`` = padded) is moved there. Masks are usually precomputed on CPU in the data
pipeline (v2 does this per clone) and moved with the batch.

| recipe | function | spec |
|---|---|---|
| v1 audio | :func:`span_mask` (p 0.65, span 10, equal counts) | §2.1 |
| v1 text | :func:`text_span_mask` (p 0.35, span 4) or :func:`bert_mask` (15%, 80/10/10) | §2.2, §8.2 |
| v1 vision | :func:`beit_block_mask` (120 of 14x14) | §2.3 |
| v2 audio / image | :func:`block_mask_1d` / :func:`block_mask_2d` (exact count, inverse) | §2.4 |
| v2 text | :func:`random_mask` (MAE) | §2.4 |

The "draw random keys, rank them, keep the first n" trick (``_rank``) samples without replacement for
all rows at once with a different ``n`` per row.
"""

from __future__ import annotations

import math
import random
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from d2v.errors import ConfigError, InvalidInput

__all__ = [
    "MaskInfo",
    "MaskedText",
    "beit_block_mask",
    "bert_mask",
    "block_mask_1d",
    "block_mask_2d",
    "gather_kept",
    "make_mask_info",
    "random_mask",
    "restore",
    "span_mask",
    "text_span_mask",
]


# ----------------------------------------------------------------------------------------- helpers


def _check_prob(name: str, value: float, *, inclusive_one: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if inclusive_one else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, 1{']' if inclusive_one else ')'}, got {value}")


def _rank(keys: Tensor) -> Tensor:
    """Rank of every entry of ``keys`` along dim 1 (0 = smallest). (B, T) -> (B, T) int64."""
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return ranks


def _choose(candidates: Tensor, n: Tensor, generator: torch.Generator) -> Tensor:
    """Pick ``n[b]`` positions uniformly without replacement among ``candidates[b]`` (bool (B, T)).

    ``n`` is clamped to the number of candidates. Returns a bool (B, T) mask.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates rank last
    n = torch.minimum(n, candidates.sum(dim=1))
    return (_rank(keys) < n[:, None]) & candidates


def _equalize(mask: Tensor, target: Tensor | int, generator: torch.Generator, allowed: Tensor | None = None) -> Tensor:
    """Randomly un-mask or mask extra positions so that every row has exactly ``target`` masked positions.

    Rows with too many keep a uniform subset of their masked positions; rows with too few keep all of them and
    gain uniformly chosen positions among the ``allowed`` (default: all) unmasked ones. One ranking does both:
    masked positions get keys in [0, 1), unmasked allowed ones in [1, 2), the rest 3.
    """
    keys = torch.rand(mask.shape, generator=generator, device=mask.device) + (~mask).float()
    if allowed is not None:
        keys = keys.masked_fill(~allowed & ~mask, 3.0)
    target = torch.as_tensor(target, device=mask.device).reshape(-1, 1)
    out = _rank(keys) < target
    return out if allowed is None else out & (allowed | mask)


# ------------------------------------------------------------------------------- v1 audio (wav2vec2)


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
    _check_prob("mask_prob", mask_prob, inclusive_one=True)
    if span < 1:
        raise ConfigError(f"span must be >= 1, got {span}")
    B, T = shape
    device = generator.device
    steps = torch.arange(T, device=device)
    if padding_mask is None:
        lengths = torch.full((B,), T, device=device)
    else:
        if padding_mask.shape != (B, T):
            raise InvalidInput(f"padding_mask shape {tuple(padding_mask.shape)} != {(B, T)}")
        lengths = T - padding_mask.to(device).sum(dim=1)
    u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
    num = (mask_prob * lengths.double() / span + u).long().clamp(min=min_masks)
    # Start range: range(n - span); fairseq widens it to num + 1 when the row is too short for num spans.
    n_starts = torch.where(lengths - span > num, lengths - span, num + 1).clamp(max=lengths)
    starts = _choose(steps[None, :] < n_starts[:, None], num, generator)  # (B, T)
    # Expand each start to [start, start + span): a running max over a window of ``span`` ending at t.
    spans = F.max_pool1d(F.pad(starts[:, None].float(), (span - 1, 0)), kernel_size=span, stride=1)[:, 0]
    mask = (spans > 0) & (steps[None, :] < lengths[:, None])  # (B, T)
    if require_same_masks and B > 1:
        counts = mask.sum(dim=1)
        mask = _equalize(mask, counts.min(), generator, allowed=torch.zeros_like(mask))
    return mask


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
        mask = _equalize(mask, num_masking_patches, generator)
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
    _check_prob("mask_prob", mask_prob, inclusive_one=True)
    if block < 1:
        raise ConfigError(f"block must be >= 1, got {block}")
    device = generator.device
    L = math.prod(grid)
    R = 1.0 - mask_prob if inverse else mask_prob
    num_centres = int(L * (R + mask_prob_adjust) / block ** len(grid))
    centres = torch.randint(0, L, (batch, num_centres), generator=generator, device=device)  # with replacement
    offsets = torch.arange(block, device=device) - block // 2  # (block,)
    if len(grid) == 1:
        idx = (centres[:, :, None] + offsets).clamp(0, L - 1).flatten(1)  # (B, n * block)
    else:
        H, W = grid
        rows = (centres // W)[:, :, None, None] + offsets[:, None]  # (B, n, block, 1)
        cols = (centres % W)[:, :, None, None] + offsets[None, :]  # (B, n, 1, block)
        idx = (rows.clamp(0, H - 1) * W + cols.clamp(0, W - 1)).flatten(1)  # (B, n * block * block)
    mask = torch.zeros(batch, L, dtype=torch.bool, device=device)
    mask.scatter_(1, idx, True)
    mask = _equalize(mask, int(L * R), generator)
    return ~mask if inverse else mask


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
    _check_prob("mask_prob", mask_prob, inclusive_one=True)
    len_keep = int(length * (1 - mask_prob))
    noise = torch.rand(batch, length, generator=generator, device=generator.device)
    return _rank(noise) >= len_keep


# ------------------------------------------------------------------------------------------ v1 text


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
    special tokens and padding are never masked. Every selected token becomes ``<mask>`` (no random/unchanged).

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
    _check_prob("mask_prob", mask_prob, inclusive_one=True)
    allowed = _maskable(input_ids, special_tokens_mask, padding_mask)
    n = allowed.sum(dim=1)
    u = torch.rand(n.shape, generator=generator, device=input_ids.device, dtype=torch.float64)
    num = (mask_prob * n.double() / span + u).long()
    starts = _choose(allowed, num, generator)
    spans = F.max_pool1d(F.pad(starts[:, None].float(), (span - 1, 0)), kernel_size=span, stride=1)[:, 0]
    mask = (spans > 0) & allowed
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
    _check_prob("mask_prob", mask_prob, inclusive_one=True)
    if abs(sum(replace_probs) - 1.0) > 1e-6 or min(replace_probs) < 0:
        raise ConfigError(f"replace_probs must be non-negative and sum to 1, got {replace_probs}")
    if not 0 <= min_random_id < vocab_size:
        raise ConfigError(f"min_random_id must be in [0, vocab_size={vocab_size}), got {min_random_id}")
    allowed = _maskable(input_ids, special_tokens_mask, padding_mask)
    device = input_ids.device
    n = allowed.sum(dim=1)
    u = torch.rand(n.shape, generator=generator, device=device, dtype=torch.float64)
    selected = _choose(allowed, (mask_prob * n.double() + u).long(), generator)
    r = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (r < replace_probs[0])
    to_random = selected & (r >= replace_probs[0]) & (r < replace_probs[0] + replace_probs[1])
    random_ids = torch.randint(min_random_id, vocab_size, input_ids.shape, generator=generator, device=device)
    out = torch.where(to_random, random_ids, input_ids).masked_fill(to_mask, mask_id)
    return MaskedText(out, to_mask, selected)


# ------------------------------------------------------------------------- v2 keep / restore indices


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


def make_mask_info(mask: Tensor) -> MaskInfo:
    """Build :class:`MaskInfo` from a bool (B, T) mask with the same masked count in every row.

    A stable sort puts the kept positions first in their original order (fairseq ``make_maskinfo`` uses an
    unstable ``argsort``; the order only matters for reproducibility).

    Raises:
        InvalidInput: if rows have different masked counts (the gather would silently drop or duplicate
            tokens, spec §8.13).
    """
    if mask.ndim != 2:
        raise InvalidInput(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if mask.shape[0] > 0 and bool((counts != counts[0]).any()):
        raise InvalidInput(
            f"every row of a v2 mask must have the same number of masked positions, got counts {counts.tolist()}; "
            "use a generator with equal counts (block_mask_*, random_mask, span_mask(require_same_masks=True))"
        )
    B, T = mask.shape
    num_keep = T - (int(counts[0]) if B > 0 else 0)
    ids_shuffle = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # (B, T): kept first
    ids_restore = torch.empty_like(ids_shuffle)
    ids_restore.scatter_(1, ids_shuffle, torch.arange(T, device=mask.device).expand(B, T))
    return MaskInfo(mask.bool(), ids_shuffle[:, :num_keep], ids_restore, num_keep)


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
