import io

import numpy as np
import pytest
import soundfile as sf

from d2v.core.errors import ConfigError, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from d2v.models.preprocessing import (
    AudioPreprocessingConfig,
    AudioPreprocessor,
    build_preprocessor,
    crop,
    duration_seconds,
    normalize_waveform,
    probe,
)
from d2v.models.preprocessing import audio as audio_module


def tone(seconds, rate, channels=1, freq=440.0):
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05
    if channels == 1:
        return wave.astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def encode(wave, rate, fmt, subtype=None):
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture()
def pre():
    return AudioPreprocessor(AudioPreprocessingConfig())


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (44100, 2)])
def test_containers_to_16k_mono_normalised(pre, fmt, rate, channels):
    data = encode(tone(0.5, rate, channels), rate, fmt)
    wave = pre.load_item(data)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 8000) <= 2
    assert abs(float(wave.mean())) < 1e-4
    assert abs(float(wave.std()) - 1.0) < 1e-3


def test_mp3(pre):
    data = encode(tone(1.0, 44100, 2), 44100, "MP3", "MPEG_LAYER_III")
    wave = pre.load_item(data)
    assert abs(wave.shape[0] - 16000) < 1200  # MP3 encoder delay / padding
    assert abs(float(wave.std()) - 1.0) < 1e-3


def test_path_and_array_inputs_agree(pre, tmp_path):
    wave = tone(0.3, 22050, 2)
    path = tmp_path / "clip.flac"
    sf.write(path, wave, 22050)
    from_path = pre.load_item(path)
    from_str = pre.load_item(str(path))
    from_array = pre.load_item((wave, 22050))
    channels_first = pre.load_item((wave.T.copy(), 22050))
    np.testing.assert_allclose(from_path, from_str)
    np.testing.assert_allclose(from_path, from_array, atol=1e-3)  # FLAC is 16-bit PCM
    np.testing.assert_allclose(from_array, channels_first)


def test_int16_array_and_no_normalisation():
    raw = AudioPreprocessor(AudioPreprocessingConfig(normalize=False))
    pcm = (tone(0.1, 16000) * 32767).astype(np.int16)
    out = raw.load_item((pcm, 16000))
    np.testing.assert_allclose(out, pcm / 32768.0, atol=1e-6)


def test_normalisation_matches_layer_norm_formula():
    x = np.random.default_rng(0).normal(3.0, 2.0, 1000).astype(np.float32)
    expected = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
    np.testing.assert_allclose(normalize_waveform(x), expected, rtol=1e-5, atol=1e-5)
    assert np.all(normalize_waveform(np.zeros(500, np.float32)) == 0)  # silence stays finite


def test_too_long_refused_from_header_without_decoding(monkeypatch):
    pre = AudioPreprocessor(AudioPreprocessingConfig(max_seconds=30.0))
    silent = encode(np.zeros(8000 * 31, np.int16), 8000, "WAV", "PCM_16")
    assert duration_seconds(silent) == pytest.approx(31.0)

    def no_decode(*args, **kwargs):
        raise AssertionError("sf.read must not be called for an over-long clip")

    monkeypatch.setattr(audio_module.sf, "read", no_decode)
    with pytest.raises(PayloadTooLarge, match="31.00 s"):
        pre.load_item(silent)


def test_limit_can_be_tightened_and_arrays_are_checked():
    pre = build_preprocessor(AudioPreprocessingConfig(), max_seconds=1.0)
    assert pre.describe()["max_seconds"] == 1.0
    assert pre.load_item((tone(1.0, 16000), 16000)).shape == (16000,)
    with pytest.raises(PayloadTooLarge):
        pre.load_item((tone(1.01, 16000), 16000))
    with pytest.raises(PayloadTooLarge):
        pre.load_item(encode(tone(1.5, 8000), 8000, "FLAC"))


def test_corrupt_and_unsupported_inputs(pre, tmp_path):
    with pytest.raises(UnsupportedMediaType, match="cannot decode audio"):
        pre.load_item(b"definitely not audio, just some bytes" * 10)
    truncated_header = encode(tone(0.5, 16000), 16000, "FLAC")[:20]
    with pytest.raises(InvalidInput):
        pre.load_item(truncated_header)
    with pytest.raises(InvalidInput, match="empty"):
        pre.load_item(b"")
    with pytest.raises(NotFound):
        pre.load_item(tmp_path / "missing.wav")
    with pytest.raises(InvalidInput, match="ambiguous"):
        pre.load_item(np.zeros(16000, np.float32))
    with pytest.raises(InvalidInput):
        pre.load_item(12345)
    with pytest.raises(InvalidInput, match="sample_rate"):
        pre.load_item((np.zeros(16000, np.float32), 0))


def test_empty_short_and_non_finite_rejected(pre):
    with pytest.raises(InvalidInput, match="no samples"):
        pre.load_item(encode(np.zeros((0, 1), np.float32), 16000, "WAV"))
    with pytest.raises(InvalidInput, match="no samples"):
        pre.load_item((np.zeros(0, np.float32), 16000))
    with pytest.raises(InvalidInput, match="too short"):
        pre.load_item((np.zeros(100, np.float32), 16000))
    bad = tone(0.1, 16000)
    bad[10] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        pre.load_item((bad, 16000))
    bad[10] = np.inf
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        pre.load_item(encode(bad, 16000, "WAV", "FLOAT"))


def test_collate_masks(pre):
    items = [pre.load_item((tone(s, 16000), 16000)) for s in (0.1, 0.25, 0.05)]
    batch = pre.collate(items)
    assert set(batch) == {"input_values", "attention_mask"}
    values, mask = batch["input_values"], batch["attention_mask"]
    assert values.dtype == np.float32 and mask.dtype == np.int64 and values.shape == mask.shape == (3, 4000)
    assert mask.sum(axis=1).tolist() == [1600, 4000, 800]
    assert (values[0, 1600:] == 0).all() and (mask[0, 1600:] == 0).all()
    np.testing.assert_array_equal(values[2, :800], items[2])
    with pytest.raises(InvalidInput):
        pre.collate([])


def test_crop_and_probe():
    wave = np.arange(100, dtype=np.float32)
    assert crop(wave, 200) is wave
    assert crop(wave, 10).tolist() == list(range(45, 55))
    rng = np.random.default_rng(0)
    starts = {int(crop(wave, 10, rng)[0]) for _ in range(50)}
    assert len(starts) > 5 and all(0 <= s <= 90 for s in starts)
    info = probe(encode(tone(0.5, 44100, 2), 44100, "FLAC"))
    assert (info.sample_rate, info.channels, info.frames, info.format) == (44100, 2, 22050, "FLAC")
    assert duration_seconds((np.zeros((48000, 2)), 48000)) == 1.0


def test_bad_config():
    with pytest.raises(ConfigError):
        AudioPreprocessor(AudioPreprocessingConfig(max_seconds=0))
