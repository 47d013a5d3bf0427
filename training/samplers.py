"""Which samples go into which micro-batch of which rank: fixed-size batches and fairseq's batching by length.

Both samplers are endless, deterministic streams for one rank, resumable at a micro-batch (``start_batch`` =
micro-batches this rank already consumed), and yield sample keys ``(epoch, index)``; every random draw of a
sample (crop, flip, masks) is keyed by that pair, never by the rank or the worker.

* :class:`ShardedSampler` yields keys, batched by the DataLoader into ``batch_size`` items: epoch ``e`` is a
  permutation seeded by ``seed + e``, rank ``r`` of ``W`` takes every W-th key, so the union of the ranks'
  micro-batch ``i`` is the single-process batch ``i`` of ``W * batch_size`` items.
* :class:`LengthGroupedBatchSampler` yields whole micro-batches (fairseq ``dataset.max_tokens``): items sorted
  by length, longest first, fill a batch until ``longest x count`` would exceed the budget
  (``RawAudioDataset.ordered_indices`` + ``data_utils.batch_by_size``); the batches are formed once per run
  and their order is shuffled every epoch, and rank ``r`` takes every W-th batch (``EpochBatchIterator`` +
  ``ShardedIterator``). A crop to a batch's shortest item then keeps nearly every sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from d2v.core.errors import ConfigError

Key = tuple[int, int]  # (epoch, index)


class ShardedSampler(Sampler[Key]):
    """An endless, deterministic stream of sample keys for one rank, resumable at a micro-batch.

    Epoch ``e`` is ``randperm(n)`` seeded with ``seed + e`` (or ``range(n)``), truncated to a multiple of
    ``batch_size * world_size`` (the "drop last" of DDP); rank ``r`` takes positions ``r, r + W, ...``.

    Args:
        num_samples: dataset size.
        batch_size: micro-batch size per rank.
        rank / world_size: this process's shard.
        seed: permutation seed.
        shuffle: permute each epoch.
        start_batch: micro-batches already consumed (resume position).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_batch: int = 0,
    ) -> None:
        self.n = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start_batch = start_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {num_samples} samples are fewer than one global micro-batch "
                f"(batch_size {batch_size} x {world_size} processes)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Key]:
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        offset = batch * self.batch_size
        while True:
            for index in self.epoch_order(epoch)[offset:]:
                yield (epoch, index)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


def batches_by_length(sizes: Sequence[int], max_tokens: int, *, seed: int, shuffle: bool = True) -> list[list[int]]:
    """fairseq's batches: indices ordered longest first (ties in a random order seeded by ``seed``; the dataset
    order when not ``shuffle``), cut greedily so that ``longest x count <= max_tokens`` in every batch.

    Raises:
        ConfigError: if an item alone exceeds ``max_tokens`` (fairseq raises too).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) and int(sizes.max()) > max_tokens:
        raise ConfigError(
            f"data.max_tokens: {max_tokens} is smaller than the longest item ({int(sizes.max())}; audio: samples "
            "of a data.max_seconds crop, text: tokens of a data.block_size block)"
        )
    if shuffle:
        ties = np.random.default_rng(seed).permutation(len(sizes))
        order = np.lexsort((ties, sizes))[::-1]  # RawAudioDataset.ordered_indices
    else:
        order = np.arange(len(sizes))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        size = int(sizes[index])
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


class LengthGroupedBatchSampler(Sampler[list[Key]]):
    """Micro-batches of similar-length items under a per-process budget, for one rank (endless, resumable).

    Args:
        sizes: every item's length in input units (audio samples of its crop, text tokens of its block).
        max_tokens: per-process budget of one micro-batch (``longest x count``).
        rank / world_size: this process's shard.
        seed: the tie order inside equal lengths and the per-epoch batch order.
        shuffle: shuffle the batch order every epoch (and the ties).
        start_batch: micro-batches already consumed (resume position).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        max_tokens: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_batch: int = 0,
    ) -> None:
        self.batches = batches_by_length(sizes, max_tokens, seed=seed, shuffle=shuffle)
        self.max_tokens = max_tokens
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.start_batch = start_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.max_tokens: {len(sizes)} items make {len(self.batches)} batches of at most {max_tokens}, "
                f"fewer than one per process ({world_size})"
            )

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches per rank and epoch (the last ``len(batches) % world_size`` are dropped)."""
        return len(self.batches) // self.world_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, in order (fairseq: shuffle with ``seed + epoch``, then shard)."""
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(len(self.batches))
        order = order[: self.batches_per_epoch * self.world_size][self.rank :: self.world_size]
        return [self.batches[i] for i in order.tolist()]

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[offset:]:
                yield [(epoch, index) for index in batch]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62
