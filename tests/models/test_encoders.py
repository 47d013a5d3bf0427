import pytest
import torch

from d2v.core.errors import InvalidInput
from d2v.models.encoders.audio import AudioEncoder
from d2v.models.encoders.image import ImageEncoder, sincos_positions_2d
from d2v.models.encoders.text import TextEncoder
from d2v.models.masking import gather_kept, visible_indices

CONV = ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2


def _audio(**kwargs) -> AudioEncoder:
    torch.manual_seed(0)
    options = dict(dim=32, conv_layers=CONV, pos_conv_kernel=5, pos_conv_depth=2, pos_conv_groups=4)
    return AudioEncoder(**{**options, **kwargs}).eval()


def test_audio_frames_follow_conv_strides():
    encoder = _audio()
    for samples in (400, 401, 719, 720, 3377, 16000):
        frames = encoder.local_features(torch.randn(1, samples)).tokens.shape[1]
        assert frames == encoder.num_frames(torch.tensor(samples)).item()
    assert encoder.num_frames(torch.tensor(16000)).item() == 49  # 50 Hz minus the receptive-field edge


def test_audio_sample_mask_maps_to_frame_mask():
    encoder = _audio()
    wave = torch.randn(3, 4001)
    lengths = torch.tensor([4001, 3377, 2203])
    padding = torch.arange(4001)[None] >= lengths[:, None]
    out = encoder(wave, padding)
    assert out.tokens.shape == (3, 12, 32) and out.padding_mask.shape == (3, 12)
    assert (~out.padding_mask).sum(1).tolist() == encoder.num_frames(lengths).tolist()
    assert encoder(wave).padding_mask is None


def test_audio_padding_values_do_not_leak():
    encoder = _audio()
    wave = torch.randn(2, 4001)
    padding = torch.zeros(2, 4001, dtype=torch.bool)
    padding[1, 2500:] = True
    noisy = wave.clone()
    noisy[padding] = 5.0
    a, b = encoder(wave, padding), encoder(noisy, padding)
    real = ~a.padding_mask
    torch.testing.assert_close(a.tokens[real], b.tokens[real])
    # fairseq/HF behaviour: pos-conv layers 2.. see non-zero padded frames, so the padded row differs from the same
    # audio alone near its end; pos_conv_zero_padding removes that batch dependence.
    alone = encoder(wave[1:2, :2500]).tokens[0]
    assert not torch.allclose(a.tokens[1][real[1]], alone, atol=1e-4)
    exact = _audio(pos_conv_zero_padding=True)
    padded_row = exact(wave, padding).tokens[1][real[1]]
    torch.testing.assert_close(padded_row, exact(wave[1:2, :2500]).tokens[0], atol=1e-5, rtol=1e-5)


def test_audio_group_norm_mode_and_even_pos_kernel():
    encoder = _audio(extractor_mode="group_norm", pos_conv_kernel=4)
    assert encoder(torch.randn(2, 2000)).tokens.shape == (2, 6, 32)  # 2000 -> 399 -> 199 -> 99 -> 49 -> 24 -> 12 -> 6


def test_audio_masking_modes():
    encoder = _audio()
    local = encoder.local_features(torch.randn(2, 4001))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 3:7] = True
    replaced = encoder.contextualize(local, mask, "replace")
    assert replaced.tokens.shape == (2, 12, 32)
    removed = encoder.contextualize(local, mask, "remove")
    assert removed.tokens.shape == (2, 8, 32)
    assert removed.positions.tolist() == [[0, 1, 2, 7, 8, 9, 10, 11]] * 2


def test_image_tokens_and_positions():
    torch.manual_seed(0)
    encoder = ImageEncoder(dim=32, image_size=32, patch_size=8, positions="sincos", context_norm=True).eval()
    out = encoder(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 17, 32) and out.padding_mask is None
    assert "sincos" not in encoder.state_dict()  # fixed, rebuilt from the config
    with pytest.raises(InvalidInput):
        encoder(torch.randn(2, 3, 48, 48))
    pos = sincos_positions_2d(32, 4)
    assert pos.shape == (16, 32)
    # First half encodes the column: patches in one column share it.
    torch.testing.assert_close(pos[0, :16], pos[4, :16])
    assert not torch.allclose(pos[0, 16:], pos[4, 16:])


def test_image_mask_modes():
    torch.manual_seed(0)
    encoder = ImageEncoder(dim=32, image_size=32, patch_size=8, positions="learned").eval()
    torch.nn.init.normal_(encoder.position_embedding)
    torch.nn.init.normal_(encoder.mask_token)
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12] = True
    mask[1, 4:] = True
    replaced = encoder(pixels, mask=mask)
    assert replaced.tokens.shape == (2, 17, 32)
    position = encoder.position_embedding[0]
    torch.testing.assert_close(replaced.tokens[0, 1], (encoder.mask_token[0, 0] + position[1]).detach())
    removed = encoder(pixels, mask=mask, mask_mode="remove")
    assert removed.tokens.shape == (2, 5, 32)
    assert removed.positions[0].tolist() == [0, 13, 14, 15, 16]


def test_text_positions_start_after_padding_index():
    torch.manual_seed(0)
    encoder = TextEncoder(dim=16, vocab_size=50, pad_id=1, max_positions=20, dropout=0.0).eval()
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    out = encoder(ids)
    assert out.padding_mask.tolist() == [[False] * 4, [False, False, False, True]]
    # Row 1's real tokens equal the same tokens unpadded.
    torch.testing.assert_close(out.tokens[1, :3], encoder(ids[1:, :3]).tokens[0])
    with pytest.raises(InvalidInput, match="at most 18"):
        encoder(torch.zeros(1, 19, dtype=torch.long))
    with pytest.raises(InvalidInput):
        encoder(ids, mask=torch.zeros(2, 4, dtype=torch.bool))
    kept = encoder(ids, mask=torch.tensor([[True, False, False, True], [False, True, True, False]]), mask_mode="remove")
    assert kept.tokens.shape == (2, 2, 16) and kept.padding_mask.tolist() == [[False, False], [False, True]]


def test_visible_indices_keep_order_and_need_equal_counts():
    mask = torch.tensor([[True, False, True, False, False], [False, False, True, True, False]])
    assert visible_indices(mask).tolist() == [[1, 3, 4], [0, 1, 4]]
    x = torch.arange(10.0).view(2, 5)
    assert gather_kept(x, visible_indices(mask)).tolist() == [[1.0, 3.0, 4.0], [5.0, 6.0, 9.0]]
    with pytest.raises(InvalidInput, match="same number"):
        visible_indices(torch.tensor([[True, False], [False, False]]))
