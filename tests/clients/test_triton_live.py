"""``d2v_client.GrpcClient`` / ``AsyncGrpcClient`` straight to a REAL tritonserver serving the exported ensembles
(raw bytes in, preprocessing inside Triton) and to the gateway serving the same exports: the same client code
gives the same vectors (<= 1e-5), equal to in-process ONNX Runtime on the same preprocessing, for all three
modalities and every pooling; Triton's errors become the SDK's typed errors."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from d2v_client import AsyncGrpcClient, BadRequestError, GrpcClient, NotFoundError, OverloadedError
from d2v_client.errors import error_from_grpc, error_from_stream_message

tf = sys.modules["triton_fixtures"]  # registered by tests/conftest.py

ATOL = 1e-5


def _reference(export_dir) -> dict[str, np.ndarray]:
    """In-process ONNX Runtime on the torch-free preprocessing: the raw d2v_* outputs."""
    import onnxruntime as ort

    from d2v.core.manifest import ModelManifest
    from d2v.models.preprocessing import build_preprocessor

    m = ModelManifest.load(export_dir)
    pre = build_preprocessor(m.preprocessing, export_dir)
    raws = tf.raw_inputs(m.modality)
    feeds = pre.collate([pre.load_item(r.decode() if m.modality == "text" else r) for r in raws])
    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(m.outputs, session.run(list(m.outputs), feeds), strict=True))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _answers(target: str, modality: str, streaming: bool = False) -> dict:
    raws = tf.raw_inputs(modality)
    items = [r.decode() for r in raws] if modality == "text" else raws
    out = {}
    with GrpcClient(target, streaming=streaming) as client:
        out["models"] = sorted(m.name for m in client.models())
        out["mean"] = client.embed(modality, items)
        out["raw_mean"] = client.embed(modality, items, normalize=False)
        out["short"] = client.embed(modality, items, dimensions=8)
        out["tokens"] = client.embed(modality, items, pooling="none", normalize=False)
        if modality != "audio":
            out["cls"] = client.embed(modality, items, pooling="cls")
    out["aio"] = asyncio.run(_aio(target, modality, items))
    return out


async def _aio(target: str, modality: str, items: list) -> np.ndarray:
    async with AsyncGrpcClient(target) as client:
        return await client.embed(modality, items, normalize=False)


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("modality", tf.MODALITIES)
def test_grpc_client_same_answers_from_triton_and_gateway(triton_server, tiny_exports, testkit, modality):
    from d2v.server.app import create_app

    ref = _reference(tiny_exports[modality])
    triton = _answers(triton_server.grpc_url, modality)
    port = testkit.free_port()
    settings = testkit.make_settings(tiny_exports[modality].parent, grpc_port=port, models=[f"tiny_{modality}"])
    with testkit.live_server(create_app(settings)):
        gateway = _answers(f"127.0.0.1:{port}", modality, streaming=True)

    assert triton["models"] == ["tiny_audio", "tiny_image", "tiny_text"]  # the pipeline steps are left out
    assert gateway["models"] == [f"tiny_{modality}"]
    for answers in (triton, gateway):
        np.testing.assert_allclose(answers["raw_mean"], ref["d2v_mean_embedding"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(answers["aio"], ref["d2v_mean_embedding"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(answers["mean"], _unit(ref["d2v_mean_embedding"]), atol=ATOL, rtol=0)
        np.testing.assert_allclose(answers["short"], _unit(ref["d2v_mean_embedding"][:, :8]), atol=ATOL, rtol=0)
        if modality != "audio":
            np.testing.assert_allclose(answers["cls"], _unit(ref["d2v_cls_embedding"]), atol=ATOL, rtol=0)
        mask = ref["d2v_token_mask"].astype(bool)
        for i, t in enumerate(answers["tokens"]):  # padding trimmed; the real tokens equal the batched run's
            np.testing.assert_allclose(t, ref["d2v_token_embeddings"][i][mask[i]], atol=ATOL, rtol=0)
        if modality != "image":  # images are resized to one size; text and audio really differ in length
            assert len({t.shape[0] for t in answers["tokens"]}) > 1


@pytest.mark.triton
def test_grpc_client_on_triton_chunks_and_types_errors(triton_server):
    texts = [f"sentence number {i}" for i in range(70)]  # over the ensemble's max_batch_size (64): two calls
    with GrpcClient(triton_server.grpc_url) as client:
        assert not client.is_gateway()
        whole = client.embed_text(texts)
        one = np.concatenate([client.embed_text([t]) for t in texts[60:]])
        np.testing.assert_allclose(whole[60:], one, atol=ATOL, rtol=0)
        with pytest.raises(BadRequestError, match="preprocessing"):
            client.embed_image([b"definitely not an image"])
        assert client.embed_image([tf.raw_inputs("image")[0]]).shape == (1, 64)  # still serving
        with pytest.raises(NotFoundError, match="unknown model"):
            client.embed_text(["x"], model="no_such_model")
        with pytest.raises(BadRequestError, match="layers"):
            client.embed_text(["x"], layers=2)
        with pytest.raises(BadRequestError, match="truncate"):
            client.embed_text(["x"], truncate=False)


def test_triton_queue_full_is_overload_not_outage():
    """Triton reports a full queue as UNAVAILABLE; the SDK calls it an overload (as the gateway's 429)."""
    full = error_from_grpc("UNAVAILABLE", "Exceeds maximum queue size")
    down = error_from_grpc("UNAVAILABLE", "failed to connect to all addresses")
    assert type(full) is OverloadedError and full.retryable
    assert type(down).__name__ == "ServiceUnavailableError" and down.retryable
    assert type(error_from_stream_message("RESOURCE_EXHAUSTED: model 'm' is overloaded")) is OverloadedError
    assert type(error_from_stream_message("in ensemble 'x', image preprocessing: bad")) is BadRequestError
