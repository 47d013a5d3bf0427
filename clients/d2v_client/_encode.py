"""Turning user inputs into request bytes, and response payloads into numpy arrays.

Images: a path, raw file bytes, a PIL image or an ``HxWxC`` uint8 array (the last two need Pillow, the
``images`` extra). Audio: a path, raw file bytes, or ``(samples, sample_rate)`` (written as a float32
WAV; the server decodes and resamples). Both travel as ``data:`` URIs. Embeddings come back as base64
little-endian float32 (the default) or JSON floats.
"""

from __future__ import annotations

import base64
import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from d2v_client.errors import BadRequestError

_LE_F32 = np.dtype("<f4")

# (magic prefix, offset, mime type)
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\xff\xfb", 0, "audio/mpeg"),
    (b"\xff\xf3", 0, "audio/mpeg"),
)


def sniff_mime(data: bytes, default: str = "application/octet-stream") -> str:
    """The media type of ``data`` from its magic bytes, or ``default``."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return default


def to_data_uri(data: bytes, mime: str | None = None) -> str:
    """``data:<mime>;base64,<payload>``."""
    return f"data:{mime or sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _is_pathlike(item: Any) -> bool:
    return isinstance(item, str | os.PathLike)


def _read_path(item: str | os.PathLike[str]) -> bytes:
    path = Path(item)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc


def image_bytes(item: Any) -> bytes:
    """Encoded image bytes for one image input.

    Raises:
        BadRequestError: a path that cannot be read, or an unsupported input type.
        ImportError: a PIL image or array given without Pillow installed.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if _is_pathlike(item):
        return _read_path(item)
    if isinstance(item, np.ndarray):
        item = _pil().fromarray(np.ascontiguousarray(item))
    if type(item).__module__.startswith("PIL.") and hasattr(item, "save"):
        buf = io.BytesIO()
        item.save(buf, format="PNG")
        return buf.getvalue()
    raise BadRequestError(f"unsupported image input of type {type(item).__name__}: use a path, bytes or a PIL image")


def audio_bytes(item: Any) -> bytes:
    """Encoded audio bytes for one audio input: a path, file bytes or ``(samples, sample_rate)``.

    Raises:
        BadRequestError: a path that cannot be read, a bad ``(samples, rate)`` pair, or an unsupported type.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if _is_pathlike(item):
        return _read_path(item)
    if isinstance(item, tuple) and len(item) == 2:
        samples, rate = item
        return wav_float32(np.asarray(samples), int(rate))
    raise BadRequestError(
        f"unsupported audio input of type {type(item).__name__}: use a path, bytes or (samples, sample_rate)"
    )


def wav_float32(samples: np.ndarray, sample_rate: int) -> bytes:
    """A WAV file (IEEE float32, little-endian) holding ``samples`` shaped ``[S]`` or ``[S, channels]``.

    Raises:
        BadRequestError: a non-positive sample rate, an empty signal or more than two dimensions.
    """
    if sample_rate <= 0:
        raise BadRequestError(f"sample_rate must be positive, got {sample_rate}")
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise BadRequestError(f"audio samples must be a non-empty [S] or [S, channels] array, got {samples.shape}")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    data = np.ascontiguousarray(samples, dtype=_LE_F32).tobytes()
    block = 4 * channels
    fmt = struct.pack("<HHIIHH", 3, channels, sample_rate, sample_rate * block, block, 32)
    fact = struct.pack("<I", samples.shape[0])
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("image arrays need Pillow: pip install 'd2v-client[images]'") from exc
    return Image


def decode_vector(value: str | Sequence[Any], shape: Sequence[int] | None = None) -> np.ndarray:
    """One embedding from a response: base64 little-endian float32 or a (nested) JSON list of floats.

    Args:
        value: the ``embedding`` field.
        shape: the array shape when known (token-level results: ``[T, D]``).

    Raises:
        ValueError: a malformed payload (bad base64, or a size that does not fit ``shape``).
    """
    if isinstance(value, str):
        arr = np.frombuffer(base64.b64decode(value), dtype=_LE_F32).astype(np.float32, copy=False)
    else:
        arr = np.asarray(value, dtype=np.float32)
    if shape is not None:
        arr = arr.reshape(tuple(int(s) for s in shape))
    return arr


def encode_vector(arr: np.ndarray) -> str:
    """Base64 of ``arr`` as little-endian float32 (the inverse of :func:`decode_vector`)."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=_LE_F32).tobytes()).decode("ascii")
