"""The sans-IO part of the gRPC clients: KServe v2 messages (Triton's generated ``tritonclient.grpc``
modules, so the wire is Triton's own) to and from the shared planner's chunks.

One code path serves both servers. The d2v gateway (``ServerMetadata.name == "d2v"``) gets the options as
request parameters (``normalize``, ``dimensions``, ``layers``) and shapes the vectors itself; a Triton
ensemble (``d2v export --format triton``) returns raw outputs, which are shaped here the same way
(truncate to ``dimensions``, then L2-normalise). Either way the request names the outputs it wants, so
both answer only those.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from d2v_client import _core
from d2v_client._types import Embeddings, EmbedOptions, Limits, Modality, ModelInfo, ServerInfo
from d2v_client.errors import BadRequestError, D2VClientError

TARGET_ENV = "D2V_GRPC_URL"
DEFAULT_TARGET = "127.0.0.1:8081"  # d2v serve's default gRPC port
GATEWAY = "d2v"  # ServerMetadata.name of the gateway; Triton answers "triton"
RAW_INPUT = "raw_input"
TOKENS_OUTPUT = "d2v_token_embeddings"
TOKEN_MASK_OUTPUT = "d2v_token_mask"
POOLED_OUTPUTS = {"mean": "d2v_mean_embedding", "cls": "d2v_cls_embedding"}
#: tritonclient's limit: embeddings responses can be large (token-level output).
MAX_MESSAGE = 2**31 - 1
_DTYPES = {"FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "FP16": "<f2"}


def default_target() -> str:
    """``$D2V_GRPC_URL``, else ``127.0.0.1:8081``; read when a client is built, never at import."""
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


def channel_options() -> list[tuple[str, Any]]:
    """Large messages both ways, and a short reconnect backoff: after a failed connection gRPC waits up to
    120 s by default before trying again, failing every call fast meanwhile, so the retries would be spent
    while the server is already back. Capped at 1 s, the retry policy stays in charge of the waiting."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


# ------------------------------------------------------------------------------------------ discovery
def _guess_modality(outputs: list[Any]) -> Modality:
    """A Triton ensemble does not say its modality: audio has no CLS output, images a fixed token count."""
    names = {o.name: o for o in outputs}
    if POOLED_OUTPUTS["cls"] not in names:
        return "audio"
    tokens = names.get(TOKENS_OUTPUT)
    return "image" if tokens is not None and len(tokens.dims) >= 1 and tokens.dims[0] > 0 else "text"


def model_from_config(config: Any) -> ModelInfo | None:
    """A ``ModelConfig`` -> the SDK's model view; ``None`` for models that are not an embedding front
    (Triton's ``<name>_preprocess`` / ``<name>_encoder`` steps)."""
    inputs = list(config.input)
    outputs = {o.name: o for o in config.output}
    if len(inputs) != 1 or inputs[0].data_type != 13 or POOLED_OUTPUTS["mean"] not in outputs:  # 13: TYPE_STRING
        return None
    params = {k: v.string_value for k, v in config.parameters.items()}
    pooled = outputs[POOLED_OUTPUTS["mean"]]
    raw = {
        "raw_input": inputs[0].name,
        "pooling": params.get("pooling", "mean"),
        "supports_layers": params.get("supports_layers") == "true",
        "platform": config.platform,
    }
    limits = Limits(
        max_batch_size=max(1, int(config.max_batch_size or 1)),
        max_payload_bytes=int(params["max_request_bytes"]) if "max_request_bytes" in params else None,
    )
    modality = params.get("modality") or _guess_modality(list(config.output))
    return ModelInfo(name=config.name, modality=modality, dims=int(pooled.dims[-1]), limits=limits, raw=raw)


# -------------------------------------------------------------------------------------------- requests
def _bytes_tensor(items: list[bytes]) -> bytes:
    """Triton's BYTES serialisation: a 4-byte little-endian length before each element."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _wire_bytes(item: Any) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else item.data  # text, or a planner Upload


def _param(request: Any, name: str, value: Any) -> None:
    slot = request.parameters[name]
    if isinstance(value, bool):
        slot.bool_param = value
    elif isinstance(value, int):
        slot.int64_param = value
    else:
        slot.string_param = str(value)


@dataclass(frozen=True)
class GrpcJob:
    """One ``embed`` call over gRPC: the planner's job plus the model and who shapes the vectors."""

    job: _core.EmbedJob
    model: ModelInfo
    gateway: bool

    @property
    def outputs(self) -> list[str]:
        pooling = self.job.options.pooling
        return [TOKENS_OUTPUT, TOKEN_MASK_OUTPUT] if pooling == "none" else [POOLED_OUTPUTS[pooling]]

    def request(self, chunk: _core.Chunk, request_id: str = "") -> Any:
        o = self.job.options
        req = service_pb2.ModelInferRequest(model_name=self.model.name, id=request_id)
        items = [_wire_bytes(item) for item in chunk.items]
        req.inputs.add(name=self.model.raw.get("raw_input", RAW_INPUT), datatype="BYTES", shape=[len(items), 1])
        req.raw_input_contents.append(_bytes_tensor(items))
        for name in self.outputs:
            req.outputs.add(name=name)
        if self.gateway:
            params = (("normalize", o.normalize), ("dimensions", o.dimensions), ("layers", o.layers))
            for key, value in (*params, ("truncate", o.truncate)):
                if value is not None:
                    _param(req, key, value)
        return req

    def parse(self, chunk: _core.Chunk, response: Any) -> list[np.ndarray]:
        arrays = response_arrays(response)
        missing = [n for n in self.outputs if n not in arrays]
        if missing:
            raise D2VClientError(f"the response lacks output(s) {missing}")
        o = self.job.options
        shape = self.gateway is False  # Triton returns raw outputs: shape them as the gateway would
        normalize, dims = (o.normalize, o.dimensions) if shape else (False, None)
        if o.pooling != "none":
            rows = finish(arrays[self.outputs[0]], normalize, dims)
        else:
            mask = arrays[TOKEN_MASK_OUTPUT].astype(bool)
            tokens = arrays[TOKENS_OUTPUT]
            rows = [finish(tokens[i][mask[i]], normalize, dims) for i in range(len(mask))]
        if len(rows) != len(chunk.items):
            raise D2VClientError(f"expected {len(chunk.items)} embeddings in the response, got {len(rows)}")
        return list(rows)

    def assemble(self, parts: list[list[np.ndarray]]) -> Embeddings:
        return self.job.assemble(parts)


def response_arrays(response: Any) -> dict[str, np.ndarray]:
    """Every output of a ``ModelInferResponse`` (``raw_output_contents``, as Triton sends) as numpy."""
    out = {}
    for i, tensor in enumerate(response.outputs):
        if tensor.datatype not in _DTYPES:
            raise D2VClientError(f"output {tensor.name!r} has an unexpected datatype {tensor.datatype}")
        raw = response.raw_output_contents[i] if i < len(response.raw_output_contents) else b""
        array = np.frombuffer(raw, dtype=_DTYPES[tensor.datatype])
        out[tensor.name] = array.reshape([int(d) for d in tensor.shape]).astype(
            np.float32 if tensor.datatype.startswith("FP") else np.int64, copy=False
        )
    return out


def finish(values: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Truncate to ``dimensions`` and L2-normalise rows, as the gateway does (truncate, then re-normalise)."""
    out = np.asarray(values, dtype=np.float32)
    if dimensions:
        out = out[..., :dimensions]
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


def plan(
    modality: Modality, items: list[Any], options: EmbedOptions, model: ModelInfo, gateway: bool
) -> tuple[GrpcJob, Any]:
    """The shared planner's job and chunks (raw bytes, by the model's ``max_batch_size`` and payload size),
    with the options made concrete for the model: its default pooling, normalisation on (as over HTTP).

    Raises:
        BadRequestError: an option the server cannot honour (``layers`` on Triton, ``cls`` on audio).
    """
    pooling = options.pooling or model.raw.get("pooling", "mean")
    if pooling == "cls" and modality == "audio":
        raise BadRequestError(f"pooling 'cls' is not available for audio model {model.name!r}; use mean")
    if options.layers is not None and not model.raw.get("supports_layers"):
        where = "a Triton ensemble" if not gateway else f"model {model.name!r}"
        raise BadRequestError(f"'layers' is not available on {where} (it needs the gateway and a per-layer export)")
    if options.truncate is False and not gateway:  # Triton's preprocess model always truncates
        raise BadRequestError("'truncate=False' needs the gateway: a Triton ensemble truncates over-long text itself")
    normalize = True if options.normalize is None else options.normalize
    options = replace(options, model=model.name, pooling=pooling, normalize=normalize)
    info = ServerInfo(models=(model,))
    job, chunks = _core.plan_embed(modality, items, options, info, multipart=True)
    return GrpcJob(job, model, gateway), chunks


def trailers(metadata: Any) -> Mapping[str, str]:
    """gRPC trailing metadata (pairs or ``Metadata``) as a dict of str."""
    out = {}
    for key, value in metadata or ():
        out[key] = value.decode() if isinstance(value, bytes) else str(value)
    return out
