"""Parameter groups, lr schedules, the sampler, masks, datasets and skipping of corrupt files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from d2v.training.config import MaskConfig, OptimConfig, load_config
from d2v.training.data import (
    AudioDataset,
    Collator,
    ShardedSampler,
    conv_output_length,
)
from d2v.training.optim import build_optimizer, lr_multiplier, param_groups
from d2v.training.sample_randomness import MaskMaker
from d2v.training.sources import list_media_files, read_manifest


def test_no_weight_decay_on_1d_params():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    decay, no_decay = param_groups([model], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    opt = build_optimizer([model], OptimConfig(betas=(0.9, 0.95), eps=1e-8))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_cosine_with_warmup():
    cfg = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.0)
    values = [lr_multiplier(s, 100, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:], strict=False))  # non-increasing after warm-up
    assert values[-1] < 0.01


def test_tri_stage():
    cfg = OptimConfig(schedule="tri_stage", phase_ratios=(0.1, 0.6, 0.3), init_lr_scale=0.01, final_lr_scale=0.05)
    f = [lr_multiplier(s, 100, cfg) for s in range(101)]
    assert f[0] == pytest.approx(0.01)
    assert all(v == 1.0 for v in f[10:70])
    assert f[100] == pytest.approx(0.05)
    assert f[85] == pytest.approx(math.exp(math.log(0.05) * 0.5))


def test_sampler_shards_union_equals_single_process_batch():
    one = iter(ShardedSampler(20, batch_size=4, world_size=1, seed=3))
    two = [iter(ShardedSampler(20, batch_size=2, rank=r, world_size=2, seed=3)) for r in range(2)]
    for _ in range(12):  # crosses epochs (5 global batches per epoch)
        single = {next(one) for _ in range(4)}
        split = {next(two[r]) for r in range(2) for _ in range(2)}
        assert single == split


def test_sampler_resumes_at_position():
    full = iter(ShardedSampler(10, batch_size=3, seed=1))
    keys = [next(full) for _ in range(30)]
    resumed = iter(ShardedSampler(10, batch_size=3, seed=1, start_batch=4))
    assert [next(resumed) for _ in range(18)] == keys[12:30]


def test_masks_depend_on_sample_not_batch():
    maker = MaskMaker(MaskConfig(kind="block_1d", prob=0.5, adjust=0.05, length=5), clone_batch=3, seed=7)
    keys = [(0, 5), (0, 9), (1, 5)]
    batch = maker.token_masks(keys, 50)
    assert batch.shape == (9, 50)
    assert torch.equal(batch[3:6], maker.token_masks([(0, 9)], 50))  # same sample, alone
    assert not torch.equal(batch[0:3], batch[6:9])  # same index, another epoch
    assert (batch.sum(1) == 25).all()  # v2: exact count per row
    assert not torch.equal(batch[0], batch[1])  # clones differ


def test_text_masks_use_mask_token_and_skip_specials():
    maker = MaskMaker(MaskConfig(kind="text_span", prob=0.35, length=4), clone_batch=1, seed=0, mask_id=4)
    ids = torch.randint(5, 100, (2, 40))
    ids[:, 0] = 0
    student, mask = maker.text_masks([(0, 0), (0, 1)], ids)
    assert (student[mask] == 4).all() and torch.equal(student[~mask], ids[~mask])
    assert not mask[:, 0].any() and mask.any()


def test_manifests(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "m.tsv").write_text(f"{tmp_path}\na.wav\t16000\n")
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n')
    (tmp_path / "m.txt").write_text("a.wav\n")
    for name in ("m.tsv", "m.jsonl", "m.txt"):
        assert read_manifest(tmp_path / name) == [tmp_path / "a.wav"]


def test_audio_batches_are_cropped_to_equal_length_and_corrupt_files_skipped(tiny_data, caplog):
    from d2v.models.preprocessing import AudioPreprocessor

    files = list_media_files(tiny_data["audio"], (".wav", ".flac", ".ogg"), "audio")
    bad = next(i for i, f in enumerate(files) if f.name == "corrupt.wav")
    ds = AudioDataset(files, AudioPreprocessor(max_seconds=60), max_samples=12000, min_samples=400, seed=0)
    with caplog.at_level("WARNING"):
        item = ds[(0, bad)]
    assert item.skipped == 1 and item.key[1] != bad and "corrupt.wav" in caplog.text
    assert ds[(0, bad)].skipped == 1  # counted again, logged once
    cfg = load_config("tiny-audio-v1")
    conv = ((8, 10, 5), (8, 3, 2))
    collate = Collator("audio", MaskMaker(cfg.objective.mask, 1, 0), seed=0, conv_layers=conv)
    batch = collate([ds[(0, i)] for i in range(len(files))])
    waves = batch["input_values"]
    assert waves.shape[0] == len(files) and waves.shape[1] <= 12000
    assert batch["mask"].shape == (len(files), conv_output_length(waves.shape[1], conv))
    assert batch["skipped"] == 1
    assert torch.allclose(waves[0].mean(), torch.tensor(0.0), atol=0.3)  # normalised per utterance, then cropped
    assert np.isfinite(waves.numpy()).all()


def test_text_blocks_keep_documents_longer_than_the_model_limit(tmp_path):
    from d2v.models.preprocessing import TextPreprocessor, train_bpe_tokenizer
    from d2v.models.preprocessing.config import TextPreprocessingConfig
    from d2v.training.data import make_text_blocks

    docs = ["alpha beta gamma delta " * 40, "short doc"]
    train_bpe_tokenizer(docs, vocab_size=300, path=tmp_path / "tokenizer.json")
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=16), tmp_path)
    blocks = make_text_blocks(docs, pre, block_size=16)  # the first document alone is > 16 tokens
    stream = [t for doc in docs for t in pre.tokenize_document(doc)[1:]]
    assert blocks.shape == (len(stream) // 15, 16)
    assert (blocks[:, 0] == pre.bos_id).all()
    np.testing.assert_array_equal(blocks[:, 1:].reshape(-1), stream[: blocks.shape[0] * 15])
