"""``d2v_client.triton.TritonClient`` against a REAL tritonserver serving the exported ensembles (raw bytes in,
preprocessing inside Triton): its vectors equal in-process ONNX Runtime on the same preprocessing, for all
three modalities and every pooling, and Triton's errors become the SDK's typed errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException

from d2v_client import BadRequestError, NotFoundError, OverloadedError, ServiceUnavailableError
from d2v_client.triton import TritonClient, map_triton_error

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


@pytest.mark.triton
@pytest.mark.parametrize("modality", tf.MODALITIES)
def test_triton_client_equals_onnxruntime(triton_server, tiny_exports, modality):
    ref = _reference(tiny_exports[modality])
    raws = tf.raw_inputs(modality)
    items = [r.decode() for r in raws] if modality == "text" else raws
    with TritonClient(triton_server.grpc_url, model=f"tiny_{modality}") as client:
        assert client.max_batch_size() == 64  # read from the ensemble's real config
        mean = client.embed(modality, items)
        raw_mean = client.embed(modality, items, normalize=False)
        short = client.embed(modality, items, dimensions=8)
        tokens = client.embed(modality, items, pooling="none")
        cls = client.embed(modality, items, pooling="cls") if modality != "audio" else None
    np.testing.assert_allclose(raw_mean, ref["d2v_mean_embedding"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(mean, _unit(ref["d2v_mean_embedding"]), atol=ATOL, rtol=0)
    np.testing.assert_allclose(short, _unit(ref["d2v_mean_embedding"][:, :8]), atol=ATOL, rtol=0)
    if cls is not None:
        np.testing.assert_allclose(cls, _unit(ref["d2v_cls_embedding"]), atol=ATOL, rtol=0)
    mask = ref["d2v_token_mask"].astype(bool)
    assert len(tokens) == len(raws)
    for i, t in enumerate(tokens):  # padding trimmed; the real tokens equal the batched run's
        np.testing.assert_allclose(t, ref["d2v_token_embeddings"][i][mask[i]], atol=ATOL, rtol=0)
    if modality != "image":  # images are resized to one size; text and audio really differ in length
        assert len({t.shape[0] for t in tokens}) > 1


@pytest.mark.triton
def test_triton_client_chunks_by_batch_size(triton_server):
    texts = [f"sentence number {i}" for i in range(5)]
    with TritonClient(triton_server.grpc_url, model="tiny_text", max_batch_size=2) as chunked:
        a = chunked.embed_text(texts)
    with TritonClient(triton_server.grpc_url, model="tiny_text") as whole:
        b = np.concatenate([whole.embed_text([t]) for t in texts])
    assert a.shape == (5, 64)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


@pytest.mark.triton
def test_triton_client_errors_are_typed(triton_server):
    with TritonClient(triton_server.grpc_url, model="tiny_image") as client:
        with pytest.raises(BadRequestError, match="preprocessing"):
            client.embed_images([b"definitely not an image"])
        assert client.embed_images([tf.raw_inputs("image")[0]]).shape == (1, 64)  # still serving
    unknown = TritonClient(triton_server.grpc_url, model="no_such_model", max_batch_size=4)
    with unknown, pytest.raises(NotFoundError, match="unknown model"):
        unknown.embed_text(["x"])


def test_queue_full_is_overload_not_outage():
    """Triton reports a full queue as UNAVAILABLE; the SDK calls it an overload (as the gateway's 429)."""
    full = InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
    down = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    assert type(map_triton_error(full)) is OverloadedError
    assert type(map_triton_error(down)) is ServiceUnavailableError
