"""The sans-IO heart shared by :class:`Client` and :class:`AsyncClient`.

It encodes inputs, cuts them into requests that respect the server's limits (items per request and
body size), and turns response bodies back into numpy arrays. No network code lives here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d2v_client._encode import audio_bytes, decode_vector, image_bytes, sniff_mime, to_data_uri
from d2v_client._types import Embeddings, EmbedOptions, Limits, Modality, ModelInfo, ServerInfo
from d2v_client.errors import BadRequestError, D2VClientError

#: Used when ``/info`` publishes no limit.
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: Room for the JSON envelope and the options around the inputs.
_ENVELOPE_BYTES = 1024
_MULTIPART_PER_FILE = 256


@dataclass(frozen=True)
class Chunk:
    """One request's worth of inputs: ``start`` is the position of its first input in the caller's list."""

    start: int
    items: list[Any]


@dataclass(frozen=True)
class Upload:
    """One image/audio input ready for multipart upload."""

    name: str
    data: bytes
    mime: str


def encode_inputs(modality: Modality, inputs: Iterable[Any], multipart: bool) -> Iterator[Any]:
    """Yield each input in its wire form: text as-is, media as a ``data:`` URI or an :class:`Upload`.

    Raises:
        BadRequestError: an input of the wrong type, an unreadable path, or an empty text.
    """
    for i, item in enumerate(inputs):
        if modality == "text":
            if not isinstance(item, str):
                raise BadRequestError(f"input {i}: text inputs must be str, got {type(item).__name__}")
            yield item
            continue
        raw = image_bytes(item) if modality == "image" else audio_bytes(item)
        if multipart:
            name = Path(item).name if isinstance(item, str | Path) else f"input{i}"
            yield Upload(name, raw, sniff_mime(raw))
        else:
            yield to_data_uri(raw)


def _wire_size(item: Any) -> int:
    if isinstance(item, Upload):
        return len(item.data) + _MULTIPART_PER_FILE
    return len(json.dumps(item)) + 2


def chunk_inputs(items: Iterable[Any], limits: Limits) -> Iterator[Chunk]:
    """Group wire-form inputs into requests of at most ``max_batch_size`` items and ``max_payload_bytes``.

    An item larger than the payload budget on its own goes alone (the server answers 413 with its reason).
    """
    max_items = limits.max_batch_size or DEFAULT_MAX_BATCH
    budget = (limits.max_payload_bytes or DEFAULT_MAX_PAYLOAD) - _ENVELOPE_BYTES
    batch: list[Any] = []
    size = 0
    start = 0
    for item in items:
        n = _wire_size(item)
        if batch and (len(batch) >= max_items or size + n > budget):
            yield Chunk(start, batch)
            start += len(batch)
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield Chunk(start, batch)


@dataclass(frozen=True)
class Request:
    """Arguments for one ``transport.request("POST", ...)``."""

    path: str
    json: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None


def build_request(modality: Modality, chunk: Chunk, options: EmbedOptions) -> Request:
    """The native ``POST /v1/embed/{modality}`` request for one chunk (JSON, or multipart for uploads)."""
    path = f"/v1/embed/{modality}"
    if chunk.items and isinstance(chunk.items[0], Upload):
        files = [("file", (u.name, u.data, u.mime)) for u in chunk.items]
        form = {k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in options.to_json().items()}
        return Request(path, files=files, data=form)
    return Request(path, json={**options.to_json(), "input": list(chunk.items)})


def parse_embeddings(body: Mapping[str, Any], n_expected: int, token_level: bool, dims: int | None) -> list[np.ndarray]:
    """The arrays of one response body, in input order.

    Accepts ``{"data": [{"index", "embedding", "shape"?}]}`` (OpenAI style, also the native shape) and a
    bare ``{"embeddings": [...]}`` list. Token-level results are ``[T, D]``: the shape comes from the item's
    ``shape``, else from ``dims``.

    Raises:
        D2VClientError: the body does not hold ``n_expected`` embeddings.
    """
    items = body.get("data", body.get("embeddings"))
    if not isinstance(items, list) or len(items) != n_expected:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise D2VClientError(f"expected {n_expected} embeddings in the response, got {got}")
    dims = dims or _int_or_none(body.get("dim") or body.get("dims"))
    if items and isinstance(items[0], Mapping):
        items = sorted(items, key=lambda it: it.get("index", 0))
    out = []
    for item in items:
        value, shape = item, None
        if isinstance(item, Mapping):
            value = item.get("embedding", item.get("embeddings"))
            shape = item.get("shape")
        arr = decode_vector(value, shape)
        if token_level and arr.ndim == 1:
            if not dims:
                raise D2VClientError("a token-level result came without its shape or the model's dims")
            arr = arr.reshape(-1, dims)
        out.append(arr)
    return out


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def assemble(parts: list[list[np.ndarray]], token_level: bool, dims: int | None) -> np.ndarray | list[np.ndarray]:
    """Join the per-chunk results (already in chunk order) into the final return value."""
    flat = [arr for part in parts for arr in part]
    if token_level:
        return flat
    if not flat:
        return np.zeros((0, dims or 0), dtype=np.float32)
    return np.stack(flat).astype(np.float32, copy=False)


def model_dims(model: ModelInfo | None, options: EmbedOptions) -> int | None:
    """The embedding width the server will answer with, when it can be known."""
    if options.dimensions:
        return options.dimensions
    return model.dims if model else None


@dataclass(frozen=True)
class EmbedJob:
    """One ``embed`` call: what to ask for and what shape the answer takes. Each client only sends its chunks."""

    modality: Modality
    options: EmbedOptions
    token_level: bool
    dims: int | None

    def request(self, chunk: Chunk) -> Request:
        return build_request(self.modality, chunk, self.options)

    def parse(self, chunk: Chunk, body: Mapping[str, Any]) -> list[np.ndarray]:
        return parse_embeddings(body, len(chunk.items), self.token_level, self.dims)

    def assemble(self, parts: list[list[np.ndarray]]) -> Embeddings:
        return assemble(parts, self.token_level, self.dims)


def plan_embed(
    modality: Modality, items: list[Any], options: EmbedOptions, info: ServerInfo, multipart: bool
) -> tuple[EmbedJob, Iterator[Chunk]]:
    """The job of one ``embed`` call and its chunks (lazy: inputs are encoded as the chunks are drawn).

    No inputs give no chunks, and the job then assembles an empty result.
    """
    model = info.model_for(modality, options.model)
    job = EmbedJob(modality, options, token_level=options.pooling == "none", dims=model_dims(model, options))
    wire = encode_inputs(modality, items, multipart)
    return job, chunk_inputs(wire, info.limits_for(model))
