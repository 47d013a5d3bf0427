"""Server test kit: tiny ONNX models following the export contract (names, shapes, dtypes), built with
``onnx.helper``, media samples, and ASGI / live-uvicorn server helpers.

They let the real engines, the batcher and the HTTP layer run on all three modalities in milliseconds:
text = embedding lookup -> MatMul -> Tanh; audio = 320-sample frames -> MatMul; image = strided Conv
patches. Pooling (masked mean, first-token cls) is done in-graph like the real export.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
from asgi_lifespan import LifespanManager
from onnx import TensorProto, helper, numpy_helper

from d2v.core.manifest import ModelManifest, TensorSpec, Variant
from d2v.server.settings import ServerSettings

DIM = 16
VOCAB = 512
AUDIO_STRIDE = 320
PATCH = 8
IMAGE_SIZE = 32
SAMPLE_RATE = 16_000
TEXT_MAX_LENGTH = 32

_OUT = ("d2v_token_embeddings", "d2v_token_mask", "d2v_mean_embedding", "d2v_cls_embedding")


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _masked_mean(nodes: list, tokens: str, mask_f: str) -> None:
    """mean = sum(tokens * mask) / max(sum(mask), 1); mask_f is [B, T] float."""
    nodes += [
        helper.make_node("Unsqueeze", [mask_f, "axis_m1"], ["mask3"]),
        helper.make_node("Mul", [tokens, "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis_1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one_f"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["d2v_mean_embedding"]),
    ]


def _common_inits() -> list:
    return [
        _const("axis_m1", np.array([-1], dtype=np.int64)),
        _const("axis_1", np.array([1], dtype=np.int64)),
        _const("one_f", np.array([1.0], dtype=np.float32)),
    ]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    # IR 9 / opset 17: readable by every onnxruntime and OpenVINO release we support.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _outputs(modality: str) -> list:
    specs = [
        helper.make_tensor_value_info("d2v_token_embeddings", TensorProto.FLOAT, ["batch", "tokens", DIM]),
        helper.make_tensor_value_info("d2v_token_mask", TensorProto.INT64, ["batch", "tokens"]),
        helper.make_tensor_value_info("d2v_mean_embedding", TensorProto.FLOAT, ["batch", DIM]),
    ]
    if modality != "audio":
        specs.append(helper.make_tensor_value_info("d2v_cls_embedding", TensorProto.FLOAT, ["batch", DIM]))
    return specs


def text_graph(top_k: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = _common_inits() + [
        _const("table", rng.standard_normal((VOCAB, DIM)).astype(np.float32)),
        _const("proj", (rng.standard_normal((DIM, DIM)) / math.sqrt(DIM)).astype(np.float32)),
        _const("zero_i", np.array(0, dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("MatMul", ["emb", "proj"], ["proj_out"]),
        helper.make_node("Tanh", ["proj_out"], ["tanh_out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    tokens = "tanh_out"
    if top_k:  # a stand-in for "average the top K layers": scale by K, observable from outside
        inputs.append(helper.make_tensor_value_info("d2v_top_k", TensorProto.INT64, [1]))
        nodes += [
            helper.make_node("Cast", ["d2v_top_k"], ["k_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [tokens, "k_f"], ["scaled"]),
        ]
        tokens = "scaled"
    nodes += [
        helper.make_node("Identity", [tokens], ["d2v_token_embeddings"]),
        helper.make_node("Identity", ["attention_mask"], ["d2v_token_mask"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", [tokens, "zero_i"], ["d2v_cls_embedding"], axis=1),
    ]
    _masked_mean(nodes, tokens, "mask_f")
    graph = helper.make_graph(nodes, "tiny_text", inputs, _outputs("text"), inits)
    return _model(graph)


def audio_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = _common_inits() + [
        _const("proj", (rng.standard_normal((AUDIO_STRIDE, DIM)) / math.sqrt(AUDIO_STRIDE)).astype(np.float32)),
        _const("stride", np.array([AUDIO_STRIDE], dtype=np.int64)),
        _const("zero_1", np.array([0], dtype=np.int64)),
        _const("frame_shape", np.array([0, -1, AUDIO_STRIDE], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Shape", ["input_values"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis_1"], ["samples"]),
        helper.make_node("Div", ["samples", "stride"], ["frames"]),
        helper.make_node("Mul", ["frames", "stride"], ["usable"]),
        helper.make_node("Slice", ["input_values", "zero_1", "usable", "axis_1"], ["cut"]),
        helper.make_node("Reshape", ["cut", "frame_shape"], ["framed"]),
        helper.make_node("MatMul", ["framed", "proj"], ["proj_out"]),
        helper.make_node("Tanh", ["proj_out"], ["tokens"]),
        helper.make_node("Identity", ["tokens"], ["d2v_token_embeddings"]),
        helper.make_node("Cast", ["attention_mask"], ["am_f"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["am_f", "zero_1", "usable", "axis_1"], ["am_cut"]),
        helper.make_node("Reshape", ["am_cut", "frame_shape"], ["am_framed"]),
        helper.make_node("ReduceMin", ["am_framed"], ["mask_f"], axes=[2], keepdims=0),
        helper.make_node("Cast", ["mask_f"], ["d2v_token_mask"], to=TensorProto.INT64),
    ]
    _masked_mean(nodes, "tokens", "mask_f")
    inputs = [
        helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "samples"]),
    ]
    graph = helper.make_graph(nodes, "tiny_audio", inputs, _outputs("audio"), inits)
    return _model(graph)


def image_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = _common_inits() + [
        _const("conv_w", (rng.standard_normal((DIM, 3, PATCH, PATCH)) / PATCH).astype(np.float32)),
        _const("flat_shape", np.array([0, DIM, -1], dtype=np.int64)),
        _const("zero_f", np.array([0.0], dtype=np.float32)),
        _const("zero_i", np.array(0, dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv_w"], ["conv"], strides=[PATCH, PATCH]),
        helper.make_node("Reshape", ["conv", "flat_shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["patches"], perm=[0, 2, 1]),
        helper.make_node("Tanh", ["patches"], ["tokens"]),
        helper.make_node("Identity", ["tokens"], ["d2v_token_embeddings"]),
        helper.make_node("ReduceSum", ["tokens", "axis_m1"], ["tok_sum"], keepdims=0),
        helper.make_node("Mul", ["tok_sum", "zero_f"], ["zeros"]),
        helper.make_node("Add", ["zeros", "one_f"], ["mask_f"]),
        helper.make_node("Cast", ["mask_f"], ["d2v_token_mask"], to=TensorProto.INT64),
        helper.make_node("Gather", ["tokens", "zero_i"], ["d2v_cls_embedding"], axis=1),
    ]
    _masked_mean(nodes, "tokens", "mask_f")
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    graph = helper.make_graph(nodes, "tiny_image", inputs, _outputs("image"), inits)
    return _model(graph)


def _spec(proto: onnx.ValueInfoProto) -> TensorSpec:
    dtype = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}[proto.type.tensor_type.elem_type]
    shape = [d.dim_param or d.dim_value for d in proto.type.tensor_type.shape.dim]
    return TensorSpec(dtype=dtype, shape=shape)


PREPROCESSING = {
    "text": {"modality": "text", "tokenizer_file": "tokenizer.json", "max_length": TEXT_MAX_LENGTH, "pad_id": 1},
    "audio": {"modality": "audio", "sample_rate": SAMPLE_RATE, "normalize": True, "max_seconds": 4.0},
    "image": {"modality": "image", "image_size": IMAGE_SIZE, "resize_size": IMAGE_SIZE + 4},
}

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "data2vec learns contextualized representations for speech, vision and language",
    "embedding servers batch requests to keep the accelerator busy",
    "hello world, hello embeddings, hello batching",
] * 20


def write_model(root: Path, modality: str, name: str | None = None, *, top_k: bool | None = None) -> Path:
    """Write ``<root>/<name>/{model.onnx, model.json[, tokenizer.json]}``; return the directory."""
    name = name or f"tiny-{modality}"
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    supports_top_k = (modality == "text") if top_k is None else top_k
    model = {"text": lambda: text_graph(supports_top_k), "audio": audio_graph, "image": image_graph}[modality]()
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    if modality == "text":
        from d2v.models.preprocessing import train_bpe_tokenizer

        train_bpe_tokenizer(CORPUS, vocab_size=300, path=out / "tokenizer.json", min_frequency=1)
    manifest = ModelManifest(
        name=name,
        modality=modality,
        embedding_dim=DIM,
        num_layers=4,
        top_k=2,
        inputs={i.name: _spec(i) for i in model.graph.input},
        outputs={o.name: _spec(o) for o in model.graph.output},
        variants={"fp32": Variant(file="model.onnx", cosine_vs_fp32=1.0)},
        preprocessing=dict(PREPROCESSING[modality]),
        supports_top_k=supports_top_k,
        max_batch_size=64,
        source={"checkpoint": "tests", "sha256": ""},
    )
    manifest.save(out)
    return out


# ------------------------------------------------------------------------------------------ media
def png_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = SAMPLE_RATE, seed: int = 0) -> bytes:
    import soundfile as sf

    wave = np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ servers
def make_settings(store: Path, **overrides) -> ServerSettings:
    """Gateway tests run one known engine; ``--engine auto`` (the default) has its own tests."""
    # gRPC off: in-process apps must not all bind the default 8081 (the gRPC tests pass their own free port).
    base = {"store": store, "max_wait_ms": 2.0, "preprocess_workers": 2, "engine": "onnxruntime", "grpc_port": 0}
    return ServerSettings(**{**base, **overrides})


async def wait_ready(client: httpx.AsyncClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("server did not become ready")


@contextlib.asynccontextmanager
async def asgi_client(app, *, ready: bool = True, headers: dict | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers or {}) as client:
            if ready:
                await wait_ready(client)
            yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, *, graceful_timeout_s: float = 10.0) -> Iterator[tuple[str, object]]:
    """uvicorn on 127.0.0.1:<free port> in a thread; yields (base_url, server)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    try:
        while httpx.get(f"{base}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready")
            time.sleep(0.02)
        yield base, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# ------------------------------------------------------------------------------------------ reliability
RELIABILITY_LOG_ENV = "D2V_RELIABILITY_LOG"


def record_reliability(check: str, *, tried: str, faults: str, outcome: str, figures: str = "") -> None:
    """One row of ``docs/reliability.md``: ``scripts/reliability_report.py`` runs the suites with
    ``D2V_RELIABILITY_LOG`` set and renders what they recorded; in plain test runs this does nothing."""
    import json
    import os

    path = os.environ.get(RELIABILITY_LOG_ENV)
    if path:
        row = {"check": check, "tried": tried, "faults": faults, "outcome": outcome, "figures": figures}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
