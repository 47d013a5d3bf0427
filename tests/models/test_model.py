import dataclasses

import pytest
import torch

from d2v.models.config import preset
from d2v.models.model import Data2VecModel, repeat_local


@pytest.mark.parametrize("version", [1, 2])
def test_encode_shapes_and_padding(modality, version, tiny_model, tiny_batch):
    model = tiny_model(modality, version)
    inputs, attention_mask = tiny_batch(modality)
    padding = None if attention_mask is None else attention_mask == 0
    out = model.encode(inputs, padding)
    B, T, D = out.last_hidden.shape
    assert B == 3 and D == 64 and out.padding_mask.shape == (B, T) and out.padding_mask.dtype == torch.bool
    assert len(out.layers) == model.num_layers
    assert all(layer.block.shape == layer.ffn.shape == (B, T, D) for layer in out.layers)
    if modality == "image":
        assert T == 17 and not out.padding_mask.any()
    else:
        assert out.padding_mask[0].sum() == 0 and out.padding_mask[2].sum() > out.padding_mask[1].sum() > 0
    assert torch.isfinite(out.last_hidden).all()


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_padded_inputs_do_not_change_real_outputs(modality, tiny_model, tiny_batch):
    model = tiny_model(modality)
    inputs, attention_mask = tiny_batch(modality)
    padding = attention_mask == 0
    changed = inputs.clone()
    changed[padding] = 3 if modality == "text" else 7.0
    a, b = model.encode(inputs, padding), model.encode(changed, padding)
    real = ~a.padding_mask
    for la, lb in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(la.block[real], lb.block[real])


def test_text_padded_row_equals_unpadded_run(tiny_model, tiny_batch):
    model = tiny_model("text")
    ids, attention_mask = tiny_batch("text")
    batch = model.encode(ids, attention_mask == 0).last_hidden
    alone = model.encode(ids[2:, :4]).last_hidden
    torch.testing.assert_close(batch[2, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_audio_padded_row_equals_unpadded_run_with_zero_padding_pos_conv(tiny_batch):
    cfg = preset("audio", "tiny")
    cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, pos_conv_zero_padding=True))
    torch.manual_seed(0)
    model = Data2VecModel(cfg).eval()
    wave, attention_mask = tiny_batch("audio")
    out = model.encode(wave, attention_mask == 0)
    alone = model.encode(wave[2:, :2203])
    frames = alone.last_hidden.shape[1]
    torch.testing.assert_close(out.last_hidden[2, :frames], alone.last_hidden[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_replace_mask_changes_outputs(modality, tiny_model, tiny_batch):
    model = tiny_model(modality)
    inputs, attention_mask = tiny_batch(modality)
    padding = None if attention_mask is None else attention_mask == 0
    local = model.local_features(inputs, padding)
    mask = torch.zeros(local.tokens.shape[:2], dtype=torch.bool)
    mask[:, 2:5] = True
    plain, masked = model.encode_local(local), model.encode_local(local, mask)
    assert plain.last_hidden.shape == masked.last_hidden.shape
    assert not torch.allclose(plain.last_hidden, masked.last_hidden)
    torch.testing.assert_close(plain.last_hidden, model.encode(inputs, padding).last_hidden)


def test_remove_mode_with_nothing_masked_equals_full_encode(modality, tiny_model, tiny_batch):
    model = tiny_model(modality, version=2)
    inputs, attention_mask = tiny_batch(modality)
    padding = None if attention_mask is None else attention_mask == 0
    local = model.local_features(inputs, padding)
    nothing = torch.zeros(local.tokens.shape[:2], dtype=torch.bool)
    full, removed = model.encode_local(local), model.encode_local(local, nothing, "remove")
    torch.testing.assert_close(full.last_hidden, removed.last_hidden, atol=1e-5, rtol=1e-5)


def test_multi_mask_students_share_local_features(modality, tiny_model, tiny_batch):
    model = tiny_model(modality, version=2)
    inputs, attention_mask = tiny_batch(modality)
    padding = None if attention_mask is None else attention_mask == 0
    local = model.local_features(inputs, padding)
    T = local.tokens.shape[1]
    clones = repeat_local(local, 2)
    g = torch.Generator().manual_seed(0)
    mask = torch.stack([torch.randperm(T, generator=g) < T // 2 for _ in range(6)])  # equal counts per row
    out = model.encode_local(clones, mask, "remove")
    extra = model.num_extra_tokens
    assert out.last_hidden.shape == (6, T - T // 2 + extra, 64)
    assert out.padding_mask.shape == out.last_hidden.shape[:2]


def test_init_schemes(tiny_model):
    text = tiny_model("text")
    assert torch.count_nonzero(text.front_end.token_embedding.weight[1]) == 0  # padding row
    assert abs(text.transformer.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.003
    image = tiny_model("image", 1)  # BEiT: residual output projections rescaled by 1/sqrt(2 * layer_id)
    first, last = (image.transformer.blocks[i].mlp.fc2.weight.std().item() for i in (0, -1))
    assert last < first * 0.6
    assert image.transformer.blocks[0].ls1.gamma.eq(1e-4).all()


def test_base_sizes_match_reference_parameter_counts():
    # data2vec-audio-base ~93.2M (HF, without masked_spec_embed: -768), text base ~124.6M (pooler excluded).
    counts = {}
    for modality in ("audio", "text"):
        with torch.device("meta"):
            model = Data2VecModel(preset(modality, "base"))
        counts[modality] = sum(p.numel() for p in model.parameters())
    assert 93.0e6 < counts["audio"] < 93.5e6
    assert 124.0e6 < counts["text"] < 125.0e6
