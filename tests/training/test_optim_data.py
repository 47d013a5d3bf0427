"""Parameter groups, lr schedules, the sampler, masks, datasets and skipping of corrupt files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from d2v.training.config import MaskConfig, OptimConfig, load_config
from d2v.training.data import AudioDataset, Collator, conv_output_length
from d2v.training.optim import FairseqAdam, build_optimizer, lr_multiplier, param_groups
from d2v.training.sample_randomness import MaskMaker
from d2v.training.samplers import ShardedSampler
from d2v.training.sources import list_media_files, read_manifest


def test_weight_decay_rule():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    decay, no_decay = param_groups([model], 0.05)  # default: 1-D parameters exempt
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == {"cls_token", "0.weight", "2.weight"}
    assert set(no_decay["names"]) == {"0.bias", "1.weight", "1.bias", "2.bias"}
    decay, no_decay = param_groups([model], 0.05, no_decay_names=["cls_token"])
    assert "cls_token" in no_decay["names"] and "cls_token" not in decay["names"]
    decay, no_decay = param_groups([model], 0.05, no_decay_1d=False)  # fairseq plain adam: everything decays
    assert len(decay["params"]) == 7 and not no_decay["params"]
    opt = build_optimizer([model], OptimConfig(betas=(0.9, 0.95), eps=1e-8, no_decay_1d=False))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.01  # the empty group is dropped
    assert "names" not in opt.param_groups[0]


def test_fairseq_adam_adds_eps_before_the_bias_correction():
    start = torch.tensor([1.0, -2.0, 3.0])
    p = nn.Parameter(start.clone())
    opt = FairseqAdam([{"params": [p], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.98), eps=1e-3)
    g = torch.tensor([0.5, 1e-3, -2.0])
    p.grad = g.clone()
    opt.step()
    m, v = 0.1 * g, 0.02 * g * g  # fairseq/optim/adam.py, step 1
    expected = start - 0.1 * 0.01 * start - 0.01 * math.sqrt(0.02) / 0.1 * m / (v.sqrt() + 1e-3)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
    # Without eps it is torch's AdamW (decoupled decay); with eps the small gradient moves less.
    a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    fs = FairseqAdam([a], lr=0.01, betas=(0.9, 0.98), eps=0.0, weight_decay=0.1)
    tw = torch.optim.AdamW([b], lr=0.01, betas=(0.9, 0.98), eps=0.0, weight_decay=0.1)
    for step in range(3):
        a.grad = b.grad = g * (step + 1)
        fs.step()
        tw.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    assert abs(float(p.detach()[1] - start[1] * 0.999)) < 0.5 * 0.01  # |g| ~ eps: well under a full lr step
    state = opt.state_dict()  # resumable
    again = FairseqAdam([nn.Parameter(start.clone())], lr=0.01, betas=(0.9, 0.98), eps=1e-3)
    again.load_state_dict(state)
    assert again.state[again.param_groups[0]["params"][0]]["step"] == 1
    cfg = OptimConfig(optimizer="fairseq_adam", eps=1e-6)
    assert isinstance(build_optimizer([nn.Linear(2, 2)], cfg), FairseqAdam)


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


def test_text_masks_may_cover_special_tokens_but_never_padding():
    # fairseq MaskTokensDataset masks a block before it is padded: starts range over <s> and </s> too.
    maker = MaskMaker(MaskConfig(kind="text_span", prob=0.35, length=4), clone_batch=1, seed=0, mask_id=4, pad_id=1)
    ids = torch.randint(5, 100, (64, 40))
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    ids[32:, 30:] = 1  # padding in half of the rows
    student, mask = maker.text_masks([(0, i) for i in range(64)], ids)
    assert (student[mask] == 4).all() and torch.equal(student[~mask], ids[~mask])
    assert mask[:, 0].any() and mask[:32, -1].any()  # <s> and </s> are maskable
    assert not mask[ids == 1].any()  # <pad> never
    assert torch.equal(maker.text_masks([(0, 5)], ids[5:6])[1], mask[5:6])  # per sample, not per batch


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
