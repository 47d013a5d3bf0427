"""The recipe behaviours that must match the references (issue 14): weight-decay groups per recipe, v1 audio
equal-count span masks, v1 text document blocks, data2vec_vision's colour jitter and fp32 teacher, head init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from d2v.models.model import Data2VecModel
from d2v.training.augment import color_jitter, jitter_params
from d2v.training.config import MaskConfig, load_config, resolve_model_config
from d2v.training.objective import Pretrainer, build_teacher
from d2v.training.optim import param_groups
from d2v.training.sample_randomness import MaskMaker


def _pretrainer(recipe: str, *overrides: str):
    """``(Pretrainer, cfg)``: the recipe's objective around a tiny model of its modality and version (the
    weight-decay rule depends on parameter names and shapes only)."""
    torch.manual_seed(0)
    cfg = load_config(recipe, ["model.preset=tiny", *overrides])
    model_cfg = resolve_model_config(cfg, vocab_size=100 if cfg.modality == "text" else None)
    return Pretrainer(Data2VecModel(model_cfg), cfg.objective), cfg


# fairseq decays every parameter: plainly under ``adam`` (v1 audio / text, 2.0 audio Base), and, as it runs, under
# its ``composite`` optimizer too (2.0 images, text, audio Large): data2vec2.py's weight_decay_scale 0 override is
# never applied (tests/training/test_fairseq_parity.py checks fairseq's own optimizer). BEiT exempts 1-D + cls_token.
FAIRSEQ = ["base-audio-v1", "base-audio-v2", "base-text-v1", "large-audio-v1", "large-text-v1", "base-image-v2",
           "base-text-v2", "large-audio-v2", "large-image-v2", "large-text-v2", "tiny-audio-v1", "tiny-audio-v2",
           "tiny-image-v2", "tiny-text-v1", "tiny-text-v2"]  # fmt: skip
SMALL_HEAD = ["objective.head.dim=64"]


@pytest.mark.parametrize("recipe", FAIRSEQ)
def test_fairseq_recipes_decay_every_parameter(recipe):
    pretrainer, cfg = _pretrainer(recipe, *(SMALL_HEAD if "v2" in recipe and "tiny" not in recipe else []))
    decay, no_decay = param_groups([pretrainer], 0.01, no_decay_1d=cfg.optim.no_decay_1d,
                                   no_decay_names=cfg.optim.no_decay_names)  # fmt: skip
    assert not no_decay["params"]
    names = set(decay["names"])
    assert any(n.endswith("norm1.weight") for n in names) and any(n.endswith("q_bias") for n in names)
    if cfg.modality == "audio" and cfg.objective.version == "v1":
        assert "model.front_end.mask_embedding" in names  # fairseq mask_emb decays too
    if cfg.objective.version == "v2" and cfg.modality == "audio":
        assert "model.transformer.alibi.scale" in names


@pytest.mark.parametrize("recipe", ["base-image-v1", "large-image-v1", "tiny-image-v1"])
def test_beit_recipes_exempt_1d_and_cls_token(recipe):
    pretrainer, cfg = _pretrainer(recipe)
    decay, no_decay = param_groups([pretrainer], 0.05, no_decay_1d=cfg.optim.no_decay_1d,
                                   no_decay_names=cfg.optim.no_decay_names)  # fmt: skip
    assert "model.front_end.cls_token" in no_decay["names"]
    assert {n for n, p in zip(no_decay["names"], no_decay["params"], strict=True) if p.ndim >= 2} == {
        "model.front_end.cls_token"}  # fmt: skip
    # BEiT decays mask_token (not in no_weight_decay()) and the shared relative position bias table
    assert {"model.front_end.mask_token", "model.transformer.rel_pos_bias.table"} <= set(decay["names"])


def test_v1_audio_span_masks_have_equal_counts_per_batch():
    cfg = MaskConfig(kind="span", prob=0.65, length=10, require_same_masks=True)
    free = MaskMaker(MaskConfig(kind="span", prob=0.65, length=10, require_same_masks=False), 1, seed=3)
    same = MaskMaker(cfg, 1, seed=3)
    keys = [(0, i) for i in range(12)]
    raw, cut = free.token_masks(keys, 120), same.token_masks(keys, 120)
    counts = raw.sum(1)
    assert len(set(counts.tolist())) > 1  # the rows really differ before the cut
    assert (cut.sum(1) == counts.min()).all()  # fairseq: every row cut to the batch minimum
    assert not (cut & ~raw).any()  # a random subset of each row's own spans
    smallest = int(counts.argmin())
    assert torch.equal(cut[smallest], raw[smallest])
    # A row's cut depends on its sample and the batch minimum, not on its place in the batch.
    reordered = same.token_masks(keys[::-1], 120)
    assert torch.equal(reordered.flip(0), cut)
    assert torch.equal(same.token_masks(keys[:1], 120), raw[:1])  # one row: nothing to equalise


def test_complete_doc_blocks_never_cross_documents(tmp_path):
    from d2v.models.preprocessing import TextPreprocessor, train_bpe_tokenizer
    from d2v.models.preprocessing.config import TextPreprocessingConfig
    from d2v.training.data import Collator, Loaded, make_text_blocks

    docs = ["alpha beta gamma delta " * 12, "short doc", "epsilon zeta eta " * 5]
    train_bpe_tokenizer(docs, vocab_size=300, path=tmp_path / "tokenizer.json")
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=16), tmp_path)
    blocks = make_text_blocks(docs, pre, block_size=16, mode="complete_doc")
    assert all(len(b) <= 16 and b[0] == pre.bos_id for b in blocks)
    rebuilt, i = [], 0
    for doc in docs:  # each document's blocks, in order, are exactly its tokens (no block spans two documents)
        tokens = pre.tokenize_document(doc)[1:]
        n = math.ceil(len(tokens) / 15)
        assert [t for b in blocks[i : i + n] for t in b[1:]] == tokens
        assert blocks[i + n - 1][-1] == pre.eos_id
        rebuilt.append(tokens)
        i += n
    assert i == len(blocks) and any(len(b) < 16 for b in blocks)  # short documents give short blocks
    maker = MaskMaker(MaskConfig(kind="text_span", prob=0.35, length=4), 1, seed=0, mask_id=4, pad_id=pre.pad_id)
    batch = Collator("text", maker, seed=0, pad_id=pre.pad_id)([Loaded((0, k), b) for k, b in enumerate(blocks)])
    ids = batch["input_ids"]
    assert ids.shape == (len(blocks), 16)
    for row, block in zip(ids, blocks, strict=True):
        assert row[: len(block)].tolist() == block.tolist() and (row[len(block) :] == pre.pad_id).all()
    assert not batch["mask"][ids == pre.pad_id].any()


def test_text_v1_recipe_batches_padded_document_blocks(h, tiny_data, tmp_path):
    """The tiny v1 text recipe trains on complete_doc blocks under the token budget (padding never masked)."""
    from d2v.training.distributed import DistInfo
    from d2v.training.trainer import Trainer

    cfg = h.tiny_config("tiny-text-v1", tiny_data["text"], tmp_path, "run.max_steps=1")
    trainer = Trainer(cfg, DistInfo()).setup()
    try:
        batch = next(iter(trainer.loader))
        ids, mask = batch["input_ids"], batch["mask"]
        assert ids.numel() <= cfg.data.max_tokens and ids.shape[1] <= cfg.data.block_size
        assert (ids == 1).any() and not mask[ids == 1].any()
        trainer.train()
    finally:
        trainer.close()


def _enhance_reference(arr: np.ndarray, which: int, factor: float) -> np.ndarray:
    """What ImageEnhance computes, in numpy: blend with black / the mean grey / the grey image."""
    x = arr.astype(np.float64)
    grey = arr @ np.array([0.299, 0.587, 0.114])  # PIL "L" conversion (ITU-R 601-2)
    degenerate = [np.zeros_like(x), np.full_like(x, int(grey.mean() + 0.5)), np.repeat(grey[..., None], 3, -1)]
    return np.clip(degenerate[which] + factor * (x - degenerate[which]), 0, 255)


def test_color_jitter_is_torchvision_colorjitter_on_pil():
    rng = np.random.default_rng(0)
    arr = rng.integers(30, 220, (24, 20, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    assert color_jitter(img, 0.0, np.random.default_rng(1)) is img
    for seed in range(20):
        order, factors = jitter_params(0.4, np.random.default_rng(seed))
        assert sorted(order) == [0, 1, 2] and all(0.6 <= f <= 1.4 for f in factors)
        out = np.asarray(color_jitter(img, 0.4, np.random.default_rng(seed)), dtype=np.float64)
        expected = arr
        for i in order:  # each step rounds to uint8, as Pillow does
            expected = np.asarray(
                [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color][i](Image.fromarray(expected))
                .enhance(factors[i])
            )  # fmt: skip
        assert np.array_equal(out, expected)
    # and Pillow's enhancers are the blends torchvision documents (within rounding)
    for which in range(3):
        got = np.asarray([ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color][which](img).enhance(1.3))
        assert np.abs(got - _enhance_reference(arr, which, 1.3)).max() <= 1.5
    orders = {tuple(jitter_params(0.4, np.random.default_rng(s))[0]) for s in range(50)}
    assert len(orders) == 6  # a random order of the three adjustments


def test_image_dataset_jitters_per_sample(tiny_data):
    from d2v.models.preprocessing import ImagePreprocessor
    from d2v.models.preprocessing.config import ImagePreprocessingConfig
    from d2v.training.data import ImageDataset
    from d2v.training.sources import IMAGE_EXTENSIONS, list_media_files

    files = [f for f in list_media_files(tiny_data["image"], IMAGE_EXTENSIONS, "image") if "broken" not in f.name]
    pre = ImagePreprocessor(ImagePreprocessingConfig(image_size=32, resize_size=32))
    plain = ImageDataset(files, pre, seed=0, flip=False)
    jittered = ImageDataset(files, pre, seed=0, flip=False, jitter=0.4)
    a, b = jittered.load((0, 1)), jittered.load((0, 1))
    assert np.array_equal(a, b)  # keyed by (seed, epoch, index)
    assert not np.array_equal(a, jittered.load((1, 1)))  # another epoch, another draw
    assert not np.array_equal(a, plain.load((0, 1)))
    assert a.shape == plain.load((0, 1)).shape == (3, 32, 32)


def test_v1_vision_teacher_runs_in_fp32_under_bf16():
    torch.manual_seed(0)
    cfg = load_config("tiny-image-v1")
    assert cfg.objective.teacher_fp32
    model = Data2VecModel(resolve_model_config(cfg))
    teacher = build_teacher(model, cfg.objective, 10)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), "_device": torch.device("cpu")}
    targets = {}
    for precision, fp32 in (("fp32", True), ("bf16", True), ("bf16", False)):
        obj = cfg.objective.__class__(**{**cfg.objective.__dict__, "teacher_fp32": fp32})
        pretrainer = Pretrainer(model, obj, precision=precision)
        targets[precision, fp32] = pretrainer.make_targets(teacher, batch, None)
    assert torch.equal(targets["bf16", True], targets["fp32", True])
    assert not torch.equal(targets["bf16", False], targets["fp32", True])


def test_heads_keep_pytorch_defaults_except_beit():
    """fairseq leaves final_proj / regression_head / the 2.0 decoders at PyTorch's init; data2vec_vision inits
    lm_head with truncated normal(0.02) cut at +-1 std."""
    for recipe in ("tiny-audio-v1", "tiny-text-v1", "tiny-audio-v2", "tiny-image-v2"):
        pretrainer, _ = _pretrainer(recipe)
        for module in pretrainer.head.modules():
            if isinstance(module, torch.nn.Linear):
                bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform(a=sqrt(5)) and the bias bound
                assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.8 * bound
                assert module.bias.abs().max() > 0
    pretrainer, _ = _pretrainer("tiny-image-v1")
    weight = pretrainer.head.net.weight.detach()
    assert weight.abs().max() <= 0.02 and float(weight.std()) == pytest.approx(0.02 * 0.5379, rel=0.1)
    assert not pretrainer.head.net.bias.any()


def test_head_init_bert_is_normal_002_with_zero_bias():
    """``objective.head.init: bert`` (quickstart-audio): Linear layers normal(0.02), zero bias."""
    pretrainer, _ = _pretrainer("quickstart-audio")
    linears = [m for m in pretrainer.head.modules() if isinstance(m, torch.nn.Linear)]
    assert linears
    for module in linears:
        assert float(module.weight.std()) == pytest.approx(0.02, rel=0.15) and not module.bias.any()
