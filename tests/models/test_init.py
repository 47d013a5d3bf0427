"""Initialisation statistics per reference (issue 14 rows 7-8): data2vec_vision's truncated normal cut at +-1 std,
fairseq's init_bert_params, PyTorch defaults for the audio projection, N(0, 1) for the 2.0 CLS token."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

TRUNC_STD = 0.02 * 0.5379  # std of N(0, 0.02) truncated at +-0.02 (+-1 sigma)


def _check_default_linear(linear: nn.Linear) -> None:
    """PyTorch's Linear init: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)), bias U(+-1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(linear.in_features)
    w = linear.weight.detach()
    assert w.abs().max() <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert linear.bias.abs().max() <= bound and linear.bias.any()


def test_beit_init_truncates_at_one_sigma(tiny_model):
    model = tiny_model("image", 1)
    assert model.config.transformer.init == "beit"
    blocks = model.transformer.blocks
    qkv = torch.cat([b.attn.qkv.weight.detach().flatten() for b in blocks])
    assert qkv.abs().max() <= 0.02 and float(qkv.std()) == pytest.approx(TRUNC_STD, rel=0.05)
    for layer_id, block in enumerate(blocks, start=1):  # fix_init_weight
        limit = 0.02 / math.sqrt(2 * layer_id)
        assert block.mlp.fc2.weight.abs().max() <= limit + 1e-9
        assert block.attn.proj.weight.abs().max() <= limit + 1e-9
        assert not block.mlp.fc1.bias.any() and not block.attn.q_bias.any()
    front = model.front_end
    conv = front.patch_embed.weight.detach()
    assert conv.abs().max() <= 0.02 and float(conv.std()) == pytest.approx(TRUNC_STD, rel=0.1)
    assert not front.patch_embed.bias.any()
    for token in (front.cls_token.detach(), front.mask_token.detach()):
        assert token.abs().max() <= 0.02 and token.abs().min() > 0 and float(token.std()) < 0.02
    assert not model.transformer.rel_pos_bias.table.any()


def test_v2_image_init_mae_patch_embed_and_unit_cls(tiny_model):
    model = tiny_model("image", 2)
    front = model.front_end
    w = front.patch_embed.weight.detach()
    fan_out, fan_in = w.shape[0], w[0].numel()
    bound = math.sqrt(6 / (fan_in + fan_out))  # xavier-uniform on the flattened kernel
    assert w.abs().max() <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert front.patch_embed.bias.any() and front.patch_embed.bias.abs().max() <= 1 / math.sqrt(fan_in)
    cls = torch.cat([tiny_model("image", 2, seed=s).front_end.cls_token.detach().flatten() for s in range(8)])
    assert float(cls.std()) == pytest.approx(1.0, rel=0.15)  # init_extra_token_zero: false -> N(0, 1)
    fc1 = model.transformer.blocks[0].mlp.fc1.weight.detach()
    assert float(fc1.std()) == pytest.approx(0.02, rel=0.1) and fc1.abs().max() > 0.04  # bert: not truncated


@pytest.mark.parametrize("version", [1, 2])
def test_audio_projection_keeps_pytorch_default(tiny_model, version):
    model = tiny_model("audio", version)
    front = model.front_end
    _check_default_linear(front.projection)
    emb = front.mask_embedding.detach()
    assert float(emb.min()) >= 0 and float(emb.max()) < 1  # U[0, 1)
    fc1 = model.transformer.blocks[0].mlp.fc1.weight.detach()
    assert float(fc1.std()) == pytest.approx(0.02, rel=0.1)  # init_bert_params
    conv = front.feature_extractor[1].conv.weight.detach()  # kaiming-normal: std sqrt(2 / fan_in)
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / conv[0].numel()), rel=0.1)


def test_text_init_bert_params(tiny_model):
    model = tiny_model("text", 1)
    emb = model.front_end.token_embedding.weight.detach()
    assert not emb[model.front_end.pad_id].any()
    assert float(emb[2:].std()) == pytest.approx(0.02, rel=0.1)
    assert float(model.transformer.blocks[0].attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
