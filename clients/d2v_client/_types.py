"""Typed views of the server's ``/info`` and the per-call embedding options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Modality = Literal["text", "image", "audio"]
Pooling = Literal["mean", "cls", "none"]
EncodingFormat = Literal["base64", "float"]
UploadMode = Literal["base64", "multipart"]

MODALITIES: tuple[Modality, ...] = ("text", "image", "audio")

#: What ``embed_*`` returns: ``[N, D]`` float32 for pooled vectors, one ``[T_i, D]`` array per input for
#: ``pooling="none"`` (token-level, layer-averaged).
Embeddings = np.ndarray | list[np.ndarray]


@dataclass(frozen=True)
class Limits:
    """The server's request limits (``None`` = not published; the SDK then uses its own defaults)."""

    max_batch_size: int | None = None
    max_input_length: int | None = None
    max_image_pixels: int | None = None
    max_audio_seconds: float | None = None
    max_payload_bytes: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Limits:
        data = data or {}
        return cls(
            max_batch_size=_first_int(data, "max_items_per_request", "max_batch_size", "max_batch", "max_items"),
            max_input_length=_first_int(data, "max_input_length", "max_input_tokens", "max_tokens"),
            max_image_pixels=_first_int(data, "max_image_pixels"),
            max_audio_seconds=_first_float(data, "max_audio_seconds"),
            max_payload_bytes=_first_int(data, "max_payload_bytes", "max_body_bytes", "payload_size", "max_payload"),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One served model."""

    name: str
    modality: Modality
    dims: int | None = None
    limits: Limits = field(default_factory=Limits)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        return cls(
            name=str(data.get("name") or data.get("id") or data.get("model")),
            modality=data.get("modality", "text"),
            dims=_first_int(data, "dim", "dims", "embedding_dim"),
            limits=Limits.from_json(data.get("limits")),
            raw=data,
        )


@dataclass(frozen=True)
class ServerInfo:
    """The parsed ``GET /info``: served models and the server-wide limits."""

    models: tuple[ModelInfo, ...] = ()
    limits: Limits = field(default_factory=Limits)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerInfo:
        models = data.get("models") or data.get("data") or []
        if isinstance(models, Mapping):  # {"name": {...}}
            models = [{"name": k, **v} for k, v in models.items()]
        return cls(
            models=tuple(ModelInfo.from_json(m) for m in models),
            limits=Limits.from_json(data.get("limits")),
            raw=data,
        )

    def model_for(self, modality: str, name: str | None = None) -> ModelInfo | None:
        """The model named ``name``, else the first serving ``modality``; ``None`` if unknown."""
        for m in self.models:
            if (name is None or m.name == name) and (name is not None or m.modality == modality):
                return m
        return None

    def limits_for(self, model: ModelInfo | None) -> Limits:
        """Per-model limits over the server-wide ones field by field; where both are published, a request must
        keep both (e.g. a model's engine batch of 32 under a server cap of 8 items per request: 8)."""
        if model is None:
            return self.limits
        merged = {}
        for key in Limits.__dataclass_fields__:
            values = [v for v in (getattr(model.limits, key), getattr(self.limits, key)) if v is not None]
            merged[key] = min(values) if values else None
        return Limits(**merged)


@dataclass(frozen=True)
class EmbedOptions:
    """Per-call options. ``None`` leaves the choice to the server (its model's default)."""

    model: str | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    layers: int | None = None
    truncate: bool | None = None  # text: False refuses over-long input (413) instead of truncating it
    encoding_format: EncodingFormat = "base64"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding_format": self.encoding_format}
        for key in ("model", "pooling", "normalize", "dimensions", "layers", "truncate"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


def _first_int(data: Mapping[str, Any], *keys: str) -> int | None:
    value = _first(data, *keys)
    return None if value is None else int(value)


def _first_float(data: Mapping[str, Any], *keys: str) -> float | None:
    value = _first(data, *keys)
    return None if value is None else float(value)


def as_list(inputs: Any) -> list[Any]:
    """A list of inputs from one input or an iterable of them.

    One input is a ``str``, bytes, a path, a PIL image, a numpy array or an audio ``(samples, rate)`` pair.
    """
    if isinstance(inputs, str | bytes | bytearray | memoryview | os.PathLike | np.ndarray) or hasattr(inputs, "save"):
        return [inputs]
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], int | float | np.integer):
        return [inputs]
    return list(inputs)
