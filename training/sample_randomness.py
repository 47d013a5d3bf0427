"""Per-sample, world-size-independent masks for the data pipeline.

Every mask (and every per-sample random draw of the data pipeline) comes from a generator seeded by
``(run seed, epoch, sample index, purpose, clone)``, never from a per-rank or per-worker stream: a sample gets
the same crop and the same masks whether it is loaded by 1 process or 4, by worker 0 or worker 3, before or
after a resume. ``MaskMaker`` wraps the generators of ``d2v.models.masking`` and is called by the collate
functions (so masks are built in DataLoader workers, as fairseq's ``precompute_mask_config``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from d2v.models import masking

from .config import MaskConfig

# Purposes, so that a sample's crop and its masks never share a stream.
CROP, FLIP, MASK, NOISE, EQUALIZE, JITTER = 1, 2, 3, 4, 5, 6


def sample_seed(seed: int, epoch: int, index: int, purpose: int, clone: int = 0) -> int:
    """A 63-bit seed for one sample's draw of one ``purpose``."""
    state = np.random.SeedSequence([seed, epoch, index, purpose, clone]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_rng(seed: int, epoch: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(sample_seed(seed, epoch, index, purpose))


def sample_generator(seed: int, epoch: int, index: int, purpose: int, clone: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index, purpose, clone))


@dataclass
class MaskMaker:
    """Builds the student masks of a batch from its sample keys.

    Args:
        cfg: the recipe's mask settings.
        clone_batch: masks per sample (data2vec 2.0 ``clone_batch``; 1 for v1). Rows are sample-major
            (``repeat_interleave`` order): row ``b * M + c`` is clone ``c`` of sample ``b``.
        seed: the run seed.
        grid: the image patch grid (image kinds).
        mask_id / vocab_size / pad_id: text maskers (``<mask>``, the vocabulary, ``<pad>``, never masked).
        special_ids: ids never drawn as BERT random replacements (fairseq zeroes their weights).
    """

    cfg: MaskConfig
    clone_batch: int
    seed: int
    grid: tuple[int, int] | None = None
    mask_id: int = 4
    vocab_size: int = 0
    pad_id: int = 1
    special_ids: tuple[int, ...] = (0, 1, 2, 3)

    def _generator(self, key: tuple[int, int], clone: int, purpose: int = MASK) -> torch.Generator:
        epoch, index = key
        return sample_generator(self.seed, epoch, index, purpose, clone)

    def token_masks(self, keys: list[tuple[int, int]], num_tokens: int) -> Tensor:
        """bool ``[B * M, T]``, True = masked, for audio frames or image patches.

        Each row is drawn from its sample's own generator. v1 span masks with ``require_same_masks`` are then
        cut to the batch's smallest masked count (fairseq ``compute_mask_indices`` per batch), each row by its
        sample's own ``EQUALIZE`` stream, so only the batch minimum couples a row to its batch."""
        rows = [self._one(self._generator(key, c), num_tokens) for key in keys for c in range(self.clone_batch)]
        masks = torch.cat(rows, dim=0)
        if self.cfg.kind == "span" and self.cfg.require_same_masks and masks.shape[0] > 1:
            generators = [self._generator(key, c, EQUALIZE) for key in keys for c in range(self.clone_batch)]
            masks = masking.same_masked_count(masks, generators)
        return masks

    def _one(self, g: torch.Generator, T: int) -> Tensor:
        c = self.cfg
        match c.kind:
            case "span":
                return masking.span_mask((1, T), mask_prob=c.prob, span=c.length, min_masks=c.min_masks, generator=g)
            case "block_1d":
                return masking.block_mask_1d(
                    1, T, mask_prob=c.prob, mask_prob_adjust=c.adjust, block=c.length, inverse=c.inverse, generator=g
                )
            case "block_2d":
                H, W = self._grid(T)
                return masking.block_mask_2d(
                    1, H, W, mask_prob=c.prob, mask_prob_adjust=c.adjust, block=c.length, inverse=c.inverse, generator=g
                )
            case "random":
                return masking.random_mask(1, T, mask_prob=c.prob, generator=g)
            case "beit":
                return masking.beit_block_mask(
                    1,
                    self._grid(T),
                    num_masking_patches=min(c.num_patches, T),
                    min_patches=c.min_block_patches,
                    max_patches=c.max_block_patches,
                    generator=g,
                )
        raise ValueError(f"objective.mask.kind={c.kind!r} needs token ids (text) or is unknown")

    def _grid(self, T: int) -> tuple[int, int]:
        if self.grid is None or self.grid[0] * self.grid[1] != T:
            raise ValueError(f"objective.mask.kind={self.cfg.kind!r} needs the image patch grid (got T={T})")
        return self.grid

    def text_masks(self, keys: list[tuple[int, int]], input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(student_ids [B*M, T], mask [B*M, T])``. ``text_span``/``bert`` put ``<mask>`` into the ids and
        the loss mask is the ``<mask>`` positions (spec §8.2); the other kinds leave the ids unchanged.

        As fairseq's ``MaskTokensDataset`` (which masks a block before it is padded), every real token of a
        block may be masked, ``<s>`` and ``</s>`` included; only ``<pad>`` never is."""
        if self.cfg.kind not in ("text_span", "bert"):
            masks = self.token_masks(keys, input_ids.shape[1])
            return input_ids.repeat_interleave(self.clone_batch, dim=0), masks
        padding = input_ids == self.pad_id
        ids, masks = [], []
        for b, key in enumerate(keys):
            for c in range(self.clone_batch):
                g = self._generator(key, c)
                row, row_padding = input_ids[b : b + 1], padding[b : b + 1]
                if self.cfg.kind == "text_span":
                    out = masking.text_span_mask(
                        row, mask_id=self.mask_id, padding_mask=row_padding, mask_prob=self.cfg.prob,
                        span=self.cfg.length, generator=g,
                    )  # fmt: skip
                else:
                    out = masking.bert_mask(
                        row, mask_id=self.mask_id, vocab_size=self.vocab_size, padding_mask=row_padding,
                        mask_prob=self.cfg.prob, min_random_id=max(self.special_ids) + 1, generator=g,
                    )  # fmt: skip
                ids.append(out.input_ids)
                masks.append(out.mask)
        return torch.cat(ids, dim=0), torch.cat(masks, dim=0)
