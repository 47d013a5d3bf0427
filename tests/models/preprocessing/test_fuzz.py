"""Property fuzzing of the preprocessors: arbitrary bytes, and valid files damaged at random, give a result or
a typed error (``D2VError``: a 4xx at the gateway), never another exception. Bounded and derandomised, so CI
runs the same cases every time; a failure prints the input hypothesis shrank it to."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from testkit import record_reliability

from d2v.core.errors import D2VError
from d2v.models.preprocessing import (
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    TextPreprocessingConfig,
    build_preprocessor,
    probe,
    train_bpe_tokenizer,
)

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _image(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (23, 31, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _audio(fmt: str) -> bytes:
    wave = (0.2 * np.sin(np.linspace(0, 200, 4000))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([wave, wave], axis=1), 8000, format=fmt)
    return buf.getvalue()


IMAGES = [_image(f) for f in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]
AUDIO = [_audio(f) for f in ("WAV", "FLAC", "OGG")]


@st.composite
def damaged(draw, originals: list[bytes]) -> bytes:
    """A valid file with random bytes overwritten, a random cut, or a random splice of two files."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    how = draw(st.sampled_from(["flip", "cut", "splice"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "splice":
        other = draw(st.sampled_from(originals))
        data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))) :]
    return bytes(data)


OUTCOMES: Counter[str] = Counter()  # what the properties saw, for the reliability report


def _result_or_typed_error(load, raw) -> None:
    try:
        load(raw)
        OUTCOMES["decoded"] += 1
    except D2VError:  # anything else propagates and fails the property
        OUTCOMES["typed error"] += 1


@pytest.fixture(scope="module")
def image_pre():
    return build_preprocessor(ImagePreprocessingConfig(), max_pixels=4_000_000)


@pytest.fixture(scope="module")
def audio_pre():
    return build_preprocessor(AudioPreprocessingConfig(), max_seconds=30.0)


@pytest.fixture(scope="module")
def text_pre(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz-tok")
    train_bpe_tokenizer(["fuzzing the tokenizer, café 東京 🙂"] * 20, vocab_size=300, path=directory / "tokenizer.json")
    return build_preprocessor(TextPreprocessingConfig(max_length=32), directory)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=4096), damaged(IMAGES)))
def test_image_bytes_give_pixels_or_a_typed_error(image_pre, raw):
    _result_or_typed_error(image_pre.load_item, raw)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=4096), damaged(AUDIO)))
def test_audio_bytes_give_a_waveform_or_a_typed_error(audio_pre, raw):
    _result_or_typed_error(probe, raw)
    _result_or_typed_error(audio_pre.load_item, raw)


@FUZZ
@given(text=st.text(max_size=400), truncate=st.booleans())
def test_any_text_gives_ids_or_a_typed_error(text_pre, text, truncate):
    _result_or_typed_error(lambda t: text_pre.load_item(t, truncate=truncate), text)


@FUZZ
@given(text=st.text(st.characters(codec="utf-16", categories=["Cs", "Co", "Cn", "Zs", "Cc"]), max_size=50))
def test_surrogates_and_control_characters_give_ids_or_a_typed_error(text_pre, text):
    _result_or_typed_error(text_pre.load_item, text)


def test_the_damage_really_reaches_the_decoders(image_pre, audio_pre):
    """Guards the fuzzers themselves: the seeds decode, and a cut file is refused with a typed error."""
    for raw in IMAGES:
        assert image_pre.load_item(raw).shape[0] == 3
    for raw in AUDIO:
        assert audio_pre.load_item(raw).ndim == 1
    with pytest.raises(D2VError):
        image_pre.load_item(IMAGES[0][:40])
    with pytest.raises(D2VError):
        audio_pre.load_item(AUDIO[0][:40])


def test_record_what_the_fuzzers_saw():
    """Runs after the properties (file order): their outcome counts go to docs/reliability.md."""
    record_reliability(
        "Preprocessor fuzzing (hypothesis)",
        tried="random bytes and damaged PNG/JPEG/GIF/WEBP/BMP/TIFF and WAV/FLAC/OGG files (bytes overwritten, cut, "
        "spliced); any Unicode text incl. surrogates and control characters, with and without truncation",
        faults="4 properties x 150 derandomised examples",
        outcome="every input gave a result or a typed D2VError (a 4xx at the gateway); no other exception",
        figures=", ".join(f"{n} {k}" for k, n in sorted(OUTCOMES.items())) or "properties not run",
    )
