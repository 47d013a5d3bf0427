"""Length-grouped batching (fairseq ``max_tokens``): budget, determinism, DDP sharding, resume, and audio crops."""

from __future__ import annotations

import numpy as np
import pytest

from d2v.core.errors import ConfigError
from d2v.training.samplers import LengthGroupedBatchSampler, batches_by_length


def _sizes(n: int = 300, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(2_000, 20_000, n).tolist() + [20_000] * 7  # some ties at the crop length


def test_batches_fill_the_budget_longest_first():
    sizes, budget = _sizes(), 100_000
    batches = batches_by_length(sizes, budget, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))  # every item exactly once
    flat = [sizes[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # fairseq ordered_indices: longest first
    for batch, following in zip(batches, batches[1:], strict=False):
        longest = max(sizes[i] for i in batch)
        assert longest * len(batch) <= budget
        # greedy: the next item would not have fitted
        assert max(longest, sizes[following[0]]) * (len(batch) + 1) > budget
    # sorted batches keep crops near full length: the shortest item is close to the longest
    waste = [1 - min(sizes[i] for i in b) / max(sizes[i] for i in b) for b in batches]
    assert np.mean(waste) < 0.05


def test_an_item_over_the_budget_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="data.max_tokens"):
        batches_by_length([10, 500], 100, seed=0)


def test_ties_are_seeded():
    sizes = [5] * 40
    a, b = batches_by_length(sizes, 20, seed=1), batches_by_length(sizes, 20, seed=2)
    assert a == batches_by_length(sizes, 20, seed=1)
    assert a != b and sorted(map(sorted, a)) != sorted(map(sorted, b))


def _take(sampler: LengthGroupedBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_is_deterministic_per_seed_and_epoch():
    sizes = _sizes()
    s = LengthGroupedBatchSampler(sizes, max_tokens=100_000, seed=3)
    per_epoch = s.batches_per_epoch
    first = _take(s, 3 * per_epoch)
    assert first == _take(LengthGroupedBatchSampler(sizes, max_tokens=100_000, seed=3), 3 * per_epoch)
    epochs = [first[e * per_epoch : (e + 1) * per_epoch] for e in range(3)]
    assert all(key[0] == e for e, batches in enumerate(epochs) for b in batches for key in b)
    # fairseq: the same batches every epoch, in a new order
    as_sets = [sorted(tuple(sorted(i for _, i in b)) for b in batches) for batches in epochs]
    assert as_sets[0] == as_sets[1] == as_sets[2]
    assert [[i for _, i in b] for b in epochs[0]] != [[i for _, i in b] for b in epochs[1]]
    other = _take(LengthGroupedBatchSampler(sizes, max_tokens=100_000, seed=4), per_epoch)
    assert [[i for _, i in b] for b in other] != [[i for _, i in b] for b in epochs[0]]


def test_sampler_shards_whole_batches_over_ranks():
    sizes, world = _sizes(), 3
    single = LengthGroupedBatchSampler(sizes, max_tokens=100_000, seed=5)
    ranks = [LengthGroupedBatchSampler(sizes, max_tokens=100_000, seed=5, rank=r, world_size=world) for r in range(3)]
    per_rank = ranks[0].batches_per_epoch
    assert per_rank == len(single.batches) // world and all(r.batches_per_epoch == per_rank for r in ranks)
    for epoch in range(2):
        order = single.epoch_batches(epoch)
        for r, sampler in enumerate(ranks):  # rank r takes every world-th batch of the shuffled order
            assert sampler.epoch_batches(epoch) == order[: per_rank * world][r::world]
        shards = [set(i for b in sampler.epoch_batches(epoch) for i in b) for sampler in ranks]
        assert not (shards[0] & shards[1]) and not (shards[1] & shards[2]) and not (shards[0] & shards[2])


def test_sampler_resumes_at_a_micro_batch():
    sizes = _sizes()
    sampler = LengthGroupedBatchSampler(sizes, max_tokens=60_000, seed=2, rank=1, world_size=2)
    full = _take(sampler, 2 * sampler.batches_per_epoch + 5)
    start = sampler.batches_per_epoch + 3  # inside the second epoch
    resumed = LengthGroupedBatchSampler(sizes, max_tokens=60_000, seed=2, rank=1, world_size=2, start_batch=start)
    assert _take(resumed, len(full) - start) == full[start:]


def test_too_few_batches_for_the_processes():
    with pytest.raises(ConfigError, match="data.max_tokens"):
        LengthGroupedBatchSampler([10, 10, 10], max_tokens=100, world_size=2)


def test_audio_pipeline_batches_by_length_and_crops_to_the_shortest(h, tiny_data, tmp_path):
    """The tiny audio recipe end to end through the data pipeline: the budget holds for the collated batches,
    the crop loses little, the corrupt file is left out and counted."""
    from d2v.models.preprocessing import AudioPreprocessor
    from d2v.training.config import resolve_model_config
    from d2v.training.data import build_loader, build_training_data
    from d2v.training.sample_randomness import MaskMaker

    cfg = h.tiny_config("tiny-audio-v1", tiny_data["audio"], tmp_path, "data.max_tokens=40000",
                        "data.min_seconds=0.1")  # fmt: skip
    pre = AudioPreprocessor(max_seconds=60)
    data = build_training_data(cfg, pre, MaskMaker(cfg.objective.mask, 1, 0), resolve_model_config(cfg))
    assert data.excluded == 1 and len(data.sizes) == len(data.dataset)  # corrupt.wav, from its header
    sampler = LengthGroupedBatchSampler(data.sizes, max_tokens=40_000, seed=0)
    loader = build_loader(data.dataset, sampler, data.collate, num_workers=0, seed=0, rank=0)
    batches = iter(loader)
    for batch_keys in sampler.epoch_batches(0):
        batch = next(batches)
        lengths = [data.sizes[i] for i in batch_keys]
        waves, mask = batch["input_values"], batch["mask"]
        assert waves.shape[0] == len(batch_keys) and waves.shape[0] * max(lengths) <= 40_000
        assert waves.shape[1] == min(lengths)  # cropped to the batch's shortest clip
        assert (mask.sum(1) == mask.sum(1)[0]).all()  # v1 require_same_masks: equal counts per row
