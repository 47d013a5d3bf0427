"""Audio preprocessing: any soundfile-readable clip -> mono float32 at ``sample_rate``, normalised per utterance.

data2vec audio (spec §3.1) takes raw 16 kHz mono waveforms normalised per utterance to zero mean and unit
variance (fairseq ``F.layer_norm(wav, wav.shape)``: biased variance, eps 1e-5). Decoding uses soundfile
(libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF ...), resampling uses soxr (HQ). Torch-free.

Limits are checked as early as possible: for bytes and paths the duration is read from the container header
(``soundfile.info``) before any sample is decoded, and decoding itself stops one frame past the limit in
case the header under-reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from d2v.core.errors import ConfigError, InvalidInput, PayloadTooLarge, UnsupportedMediaType

from .base import PreprocessorBase, check_batch, is_bytes_like, is_path_like, open_binary
from .config import AudioPreprocessingConfig

LAYER_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm's default, used by fairseq's normalisation
# The wav2vec2/data2vec CNN front-end has a 400-sample receptive field (25 ms at 16 kHz): shorter inputs
# produce no frame at all.
DEFAULT_MIN_SAMPLES = 400
MAX_CHANNELS = 64
SUPPORTED_FORMATS = "WAV, FLAC, OGG (Vorbis/Opus), MP3, AIFF"


@dataclass(frozen=True)
class AudioInfo:
    """What a container header says, read without decoding samples."""

    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


def _decode_error(exc: Exception) -> UnsupportedMediaType:
    detail = str(exc).strip() or type(exc).__name__
    return UnsupportedMediaType(f"cannot decode audio ({detail}); supported formats: {SUPPORTED_FORMATS}")


def probe(raw: Any) -> AudioInfo:
    """Header information for bytes, a path or a binary file object, without decoding the samples."""
    stream = open_binary(raw, "audio")
    try:
        return _probe_stream(stream)
    finally:
        if stream is not raw:
            stream.close()


def _probe_stream(stream: Any) -> AudioInfo:
    start = stream.tell()
    try:
        with sf.SoundFile(stream) as f:
            info = AudioInfo(int(f.samplerate), int(f.frames), int(f.channels), str(f.format), str(f.subtype))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise _decode_error(exc) from exc
    finally:
        stream.seek(start)
    if info.sample_rate <= 0:
        raise InvalidInput(f"audio header has an invalid sample rate {info.sample_rate}")
    if info.channels <= 0 or info.channels > MAX_CHANNELS:
        raise InvalidInput(f"audio has {info.channels} channels; 1..{MAX_CHANNELS} are accepted")
    return info


def duration_seconds(raw: Any) -> float:
    """Duration of a clip: from the header for bytes/paths/files, from the shape for ``(array, sample_rate)``."""
    if isinstance(raw, tuple):
        wave, sample_rate = _check_array_input(raw)
        return wave.shape[0] / sample_rate
    return probe(raw).duration_seconds


def normalize_waveform(wave: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """Zero mean, unit variance over the whole clip, like ``F.layer_norm(wav, wav.shape)`` (biased var)."""
    x = np.asarray(wave, dtype=np.float64)
    mean = x.mean()
    var = np.mean(np.square(x - mean))
    return ((x - mean) / np.sqrt(var + eps)).astype(np.float32)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` -> ``(samples,)`` by averaging the channels."""
    if wave.ndim == 1:
        return wave
    if wave.shape[1] == 1:
        return wave[:, 0]
    return wave.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(wave: np.ndarray, from_rate: int, to_rate: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling of a mono float32 wave; returns the input unchanged when the rates match."""
    if from_rate == to_rate:
        return wave
    return np.asarray(soxr.resample(wave, from_rate, to_rate, quality=quality), dtype=np.float32)


def crop(wave: np.ndarray, max_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A window of at most ``max_samples``: random offset with ``rng`` (training), centred without it."""
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    excess = wave.shape[0] - max_samples
    if excess <= 0:
        return wave
    start = int(rng.integers(0, excess + 1)) if rng is not None else excess // 2
    return wave[start : start + max_samples]


def _int_to_float(wave: np.ndarray) -> np.ndarray:
    if wave.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        return (wave.astype(np.float32) - 128.0) / 128.0
    scale = float(2 ** (np.iinfo(wave.dtype).bits - 1))
    return (wave.astype(np.float64) / scale).astype(np.float32)


def _check_array_input(raw: tuple) -> tuple[np.ndarray, int]:
    """Validate ``(array, sample_rate)``; returns a ``(samples,)``/``(samples, channels)`` float32 array.

    2-D arrays may be ``(samples, channels)`` (soundfile's layout) or ``(channels, samples)`` (torchaudio's):
    the channel axis is the smaller dimension, and it must hold at most ``MAX_CHANNELS`` channels.
    """
    if len(raw) != 2:
        raise InvalidInput("audio given as a tuple must be (waveform array, sample_rate)")
    wave, sample_rate = raw
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise InvalidInput(f"sample_rate must be a positive integer, got {sample_rate!r}")
    wave = np.asarray(wave)
    if wave.dtype.kind in "iu":
        wave = _int_to_float(wave)
    elif wave.dtype.kind == "f":
        wave = wave.astype(np.float32, copy=False)
    else:
        raise InvalidInput(f"audio array must be numeric (float or integer PCM), got dtype {wave.dtype}")
    if wave.ndim == 2:
        if wave.shape[0] < wave.shape[1]:
            wave = wave.T
        if wave.shape[1] > MAX_CHANNELS:
            raise InvalidInput(f"audio array of shape {wave.shape} has no plausible channel axis")
    elif wave.ndim != 1:
        raise InvalidInput(f"audio array must be 1-D or 2-D, got shape {wave.shape}")
    return wave, int(sample_rate)


class AudioPreprocessor(PreprocessorBase):
    """Bytes / path / file / ``(array, sample_rate)`` -> float32 ``(samples,)`` -> ``{"input_values", ...}``.

    ``max_seconds`` defaults to the config's and may be tightened by the server; ``min_samples`` (after
    resampling) rejects clips too short for the CNN front-end.
    """

    modality = "audio"

    def __init__(
        self,
        cfg: AudioPreprocessingConfig | None = None,
        *,
        max_seconds: float | None = None,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        resample_quality: str = "HQ",
    ) -> None:
        self.cfg = cfg or AudioPreprocessingConfig()
        if self.cfg.sample_rate <= 0:
            raise ConfigError(f"audio sample_rate must be positive, got {self.cfg.sample_rate}")
        self.sample_rate = int(self.cfg.sample_rate)
        self.normalize = bool(self.cfg.normalize)
        self.max_seconds = float(max_seconds if max_seconds is not None else self.cfg.max_seconds)
        if not self.max_seconds > 0:
            raise ConfigError(f"audio max_seconds must be positive, got {self.max_seconds}")
        self.min_samples = int(min_samples)
        self.resample_quality = resample_quality

    def _max_frames(self, sample_rate: int) -> int:
        return int(np.floor(self.max_seconds * sample_rate + 1e-6))

    def _too_long(self, seconds: float) -> PayloadTooLarge:
        return PayloadTooLarge(f"audio is {seconds:.2f} s long; the limit is {self.max_seconds:g} s")

    def decode(self, raw: Any) -> tuple[np.ndarray, int]:
        """Decode without resampling or normalising: ``(float32 (samples,) or (samples, channels), rate)``."""
        if isinstance(raw, tuple):
            wave, sample_rate = _check_array_input(raw)
            if wave.shape[0] > self._max_frames(sample_rate):
                raise self._too_long(wave.shape[0] / sample_rate)
            return wave, sample_rate
        if isinstance(raw, np.ndarray):
            raise InvalidInput("a bare audio array is ambiguous: pass (array, sample_rate)")
        if not (is_bytes_like(raw) or is_path_like(raw) or hasattr(raw, "read")):
            raise InvalidInput(f"audio must be bytes, a path or (array, sample_rate), got {type(raw).__name__}")
        stream = open_binary(raw, "audio")
        try:
            info = _probe_stream(stream)
            if info.frames == 0:
                raise InvalidInput("audio has no samples (zero length)")
            max_frames = self._max_frames(info.sample_rate)
            if info.frames > max_frames:
                raise self._too_long(info.duration_seconds)
            try:
                # Read one frame past the limit so a header that under-reports cannot make us decode more.
                wave, sample_rate = sf.read(stream, frames=max_frames + 1, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
                raise _decode_error(exc) from exc
        finally:
            if stream is not raw:
                stream.close()
        if wave.shape[0] > max_frames:
            raise self._too_long(wave.shape[0] / sample_rate)
        return wave, int(sample_rate)

    def load_item(self, raw: Any) -> np.ndarray:
        """One clip as float32 ``(samples,)`` mono at ``sample_rate``, normalised when the config says so."""
        wave, sample_rate = self.decode(raw)
        if wave.shape[0] == 0:
            raise InvalidInput("audio has no samples (zero length)")
        if not np.isfinite(wave).all():
            raise InvalidInput("audio contains NaN or infinite samples")
        wave = resample(to_mono(wave), sample_rate, self.sample_rate, self.resample_quality)
        if wave.shape[0] < self.min_samples:
            raise InvalidInput(
                f"audio is too short: {wave.shape[0]} samples at {self.sample_rate} Hz, "
                f"the model needs at least {self.min_samples} ({self.min_samples / self.sample_rate * 1000:.0f} ms)"
            )
        if self.normalize:
            return normalize_waveform(wave)
        return np.ascontiguousarray(wave, dtype=np.float32)

    def collate(self, items: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Zero-pad right to the longest clip: ``input_values`` float32 [B,S], ``attention_mask`` int64 [B,S]."""
        check_batch(items, self.modality)
        for item in items:
            if not isinstance(item, np.ndarray) or item.ndim != 1 or item.shape[0] == 0:
                raise InvalidInput("audio collate expects non-empty 1-D arrays from load_item")
        longest = max(item.shape[0] for item in items)
        input_values = np.zeros((len(items), longest), dtype=np.float32)
        attention_mask = np.zeros((len(items), longest), dtype=np.int64)
        for row, item in enumerate(items):
            input_values[row, : item.shape[0]] = item
            attention_mask[row, : item.shape[0]] = 1
        return {"input_values": input_values, "attention_mask": attention_mask}

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "sample_rate": self.sample_rate,
            "normalize": self.normalize,
            "max_seconds": self.max_seconds,
            "min_samples": self.min_samples,
            "formats": SUPPORTED_FORMATS,
        }
