"""KServe v2 tensors and parameters on the gRPC wire: request inputs -> raw items, results -> response tensors.

Inputs follow the Triton ensemble ``d2v export --format triton`` writes: one BYTES tensor ``raw_input``
(``manifest.triton.raw_input``), shape ``[B, 1]`` (or ``[B]``), one UTF-8 text or encoded image / audio
file per row. Text models also take pre-tokenised rows, the OpenAI token-id form, as ``input_ids``
(INT64 or INT32 ``[B, T]``) with an optional ``attention_mask`` ``[B, T]`` marking each row's real ids.
Values come from ``raw_input_contents`` (what tritonclient sends) or the typed ``contents`` fields.

Outputs are the contract's (``d2v.core.contract``) with Triton's layout: pooled ``[B, D]``, token
embeddings ``[B, T, D]`` zero-padded to the request's longest item with ``d2v_token_mask`` ``[B, T]``,
little-endian in ``raw_output_contents``. Without parameters the values are the model's raw outputs, as
Triton returns them; ``normalize`` / ``dimensions`` shape them as the HTTP API does.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from d2v.core.contract import (
    PRIMARY_INPUT,
    TOKEN_MASK_OUTPUT,
    TOKENS_OUTPUT,
    output_for,
    output_names,
)
from d2v.core.errors import InvalidInput
from d2v.runtime.postprocess import shape_vector

from ..served_model import ItemOutputs, ServedModel, TokenIds

TOKEN_IDS_INPUT = PRIMARY_INPUT["text"]  # "input_ids", as the encoder's own input
TOKEN_MASK_INPUT = "attention_mask"
_ID_TYPES = {"INT64": ("<i8", "int64_contents"), "INT32": ("<i4", "int_contents")}
_WIRE_TYPES = {np.dtype(np.float32): ("FP32", "<f4"), np.dtype(np.int64): ("INT64", "<i8")}
POOLINGS = ("mean", "cls", "none")


# -------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class InferOptions:
    """The request ``parameters`` the gateway understands; everything else is ignored, as Triton does."""

    pooling: str | None = None  # which output to answer when the request names none
    normalize: bool = False  # raw outputs by default: what the Triton ensemble returns
    dimensions: int | None = None
    layers: int | None = None
    truncate: bool | None = None
    timeout_us: int | None = None  # Triton's queue-timeout parameter: items still queued then never run

    @classmethod
    def from_parameters(cls, params: Mapping[str, service_pb2.InferParameter]) -> InferOptions:
        pooling = _param(params, "pooling", str)
        if pooling is not None and pooling not in POOLINGS:
            raise InvalidInput(f"parameter 'pooling' must be one of {list(POOLINGS)}, got {pooling!r}")
        out = cls(
            pooling=pooling,
            normalize=bool(_param(params, "normalize", bool) or False),
            dimensions=_param(params, "dimensions", int),
            layers=_param(params, "layers", int),
            truncate=_param(params, "truncate", bool),
            timeout_us=_param(params, "timeout", int),
        )
        for name in ("dimensions", "layers"):
            value = getattr(out, name)
            if value is not None and value < 1:
                raise InvalidInput(f"parameter {name!r} must be >= 1, got {value}")
        return out


def _param(params: Mapping[str, service_pb2.InferParameter], name: str, kind: type) -> Any:
    if name not in params:
        return None
    choice = params[name].WhichOneof("parameter_choice")
    value = getattr(params[name], choice) if choice else None
    expected = {str: ("string_param",), bool: ("bool_param",), int: ("int64_param", "uint64_param")}[kind]
    if choice not in expected:
        label = {str: "a string", bool: "a bool", int: "an integer"}[kind]
        raise InvalidInput(f"parameter {name!r} must be {label}, got {choice or 'no value'}")
    return value


# ------------------------------------------------------------------------------------------------ inputs
def _count(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def _bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a 4-byte little-endian length, then the bytes."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data holds fewer than the {count} elements of its shape")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidInput(f"input {name!r}: a BYTES element runs past the end of the data")
        out.append(raw[pos : pos + size])
        pos += size
    if pos != len(raw):
        raise InvalidInput(f"input {name!r}: BYTES data holds more than the {count} elements of its shape")
    return out


def _input_values(request: service_pb2.ModelInferRequest) -> dict[str, tuple[Any, Any]]:
    """name -> (tensor, raw bytes or None)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput("raw_input_contents must hold one entry per input")
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        tensors[tensor.name] = (tensor, raw[i] if raw else None)
    return tensors


def _raw_rows(tensor: Any, raw: bytes | None) -> list[bytes]:
    shape = list(tensor.shape)
    if tensor.datatype != "BYTES" or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        got = f"{tensor.datatype} {shape}"
        raise InvalidInput(f"input {tensor.name!r} must be BYTES [batch, 1] (one item per row), got {got}")
    count = _count(shape)
    values = _bytes_elements(raw, count, tensor.name) if raw is not None else list(tensor.contents.bytes_contents)
    if len(values) != count:
        raise InvalidInput(f"input {tensor.name!r}: {len(values)} values for shape {shape}")
    return values


def _id_matrix(tensor: Any, raw: bytes | None) -> np.ndarray:
    shape = list(tensor.shape)
    if tensor.datatype not in _ID_TYPES or len(shape) != 2:
        raise InvalidInput(f"input {tensor.name!r} must be INT64 or INT32 [batch, tokens], got {tensor.datatype}")
    dtype, field = _ID_TYPES[tensor.datatype]
    if raw is not None:
        if len(raw) != _count(shape) * np.dtype(dtype).itemsize:
            raise InvalidInput(f"input {tensor.name!r}: {len(raw)} bytes do not fit shape {shape}")
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = np.asarray(getattr(tensor.contents, field), dtype=np.int64)
        if values.size != _count(shape):
            raise InvalidInput(f"input {tensor.name!r}: {values.size} values for shape {shape}")
    return values.astype(np.int64).reshape(shape)


def _token_rows(ids: np.ndarray, mask: np.ndarray | None) -> list[TokenIds]:
    if mask is not None and mask.shape != ids.shape:
        raise InvalidInput(f"{TOKEN_MASK_INPUT!r} has shape {list(mask.shape)}, {TOKEN_IDS_INPUT!r} {list(ids.shape)}")
    rows = ids if mask is None else [row[m != 0] for row, m in zip(ids, mask, strict=True)]
    return [TokenIds([int(v) for v in row]) for row in rows]


def decode_inputs(request: service_pb2.ModelInferRequest, model: ServedModel) -> list[Any]:
    """The request's items in the form ``ServedModel.load_items`` takes: str (text), bytes (media), TokenIds.

    Raises:
        InvalidInput: unknown or missing inputs, wrong datatypes or shapes, undecodable UTF-8.
    """
    tensors = _input_values(request)
    raw_name = model.manifest.triton.raw_input
    allowed = {raw_name} | ({TOKEN_IDS_INPUT, TOKEN_MASK_INPUT} if model.modality == "text" else set())
    unknown = sorted(set(tensors) - allowed)
    if unknown:  # Triton's own wording for the same mistake
        raise InvalidInput(f"unexpected inference input {unknown[0]!r} for model {model.name!r}")
    if raw_name in tensors and TOKEN_IDS_INPUT in tensors:
        raise InvalidInput(f"send either {raw_name!r} or {TOKEN_IDS_INPUT!r}, not both")
    if raw_name in tensors:
        rows = _raw_rows(*tensors[raw_name])
        return [_text(row, i) for i, row in enumerate(rows)] if model.modality == "text" else rows
    if TOKEN_IDS_INPUT not in tensors:
        raise InvalidInput(f"model {model.name!r} expects input {raw_name!r} (BYTES [batch, 1])")
    if model.engine.raw_inputs:
        raise InvalidInput("token-id input needs the gateway to tokenize (Triton --triton-mode encoder)")
    mask = _id_matrix(*tensors[TOKEN_MASK_INPUT]) if TOKEN_MASK_INPUT in tensors else None
    return _token_rows(_id_matrix(*tensors[TOKEN_IDS_INPUT]), mask)


def _text(row: bytes, index: int) -> str:
    try:
        return row.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input[{index}]: text input is not valid UTF-8") from None


# ----------------------------------------------------------------------------------------------- outputs
def wanted_outputs(request: service_pb2.ModelInferRequest, model: ServedModel, options: InferOptions) -> list[str]:
    """The outputs to answer, in answer order: those the request names, else those of ``pooling``, else all."""
    available = output_names(model.modality)
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in available:
            raise InvalidInput(f"unexpected inference output {name!r} for model {model.name!r}")
    if names:
        return list(dict.fromkeys(names))
    if options.pooling == "none":
        return [TOKENS_OUTPUT, TOKEN_MASK_OUTPUT]
    if options.pooling is not None:
        if output_for(options.pooling) not in available:
            raise InvalidInput(
                f"pooling {options.pooling!r} is not available for {model.modality} model {model.name!r}"
            )
        return [output_for(options.pooling)]
    return [n for n in model.manifest.outputs if n in available]  # the ensemble's order


def _tensor_array(name: str, results: list[ItemOutputs], dim: int, options: InferOptions) -> np.ndarray:
    def shaped(vector: np.ndarray) -> np.ndarray:
        return shape_vector(vector, dim=dim, dimensions=options.dimensions, normalize=options.normalize)

    longest = max(r.tokens for r in results)
    if name == TOKEN_MASK_OUTPUT:
        return (np.arange(longest)[None, :] < np.array([r.tokens for r in results])[:, None]).astype(np.int64)
    if name != TOKENS_OUTPUT:
        return shaped(np.stack([r.values[name] for r in results]))
    rows = [shaped(r.values[name]) for r in results]
    out = np.zeros((len(rows), longest, rows[0].shape[-1]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def encode_response(
    request: service_pb2.ModelInferRequest,
    model: ServedModel,
    names: list[str],
    results: list[ItemOutputs],
    options: InferOptions,
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=model.name, model_version="1", id=request.id)
    for name in names:
        array = _tensor_array(name, results, model.manifest.embedding_dim, options)
        datatype, wire = _WIRE_TYPES[array.dtype]
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=wire).tobytes())
    return response
