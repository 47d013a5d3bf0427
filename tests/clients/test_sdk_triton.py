"""The optional Triton transport against a fake gRPC client (a real Triton is exercised by the export tests)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException

from d2v_client import BadRequestError, OverloadedError, RetryPolicy
from d2v_client.triton import TritonClient, finish


class FakeResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays[name]


class FakeTriton:
    def __init__(self, failures=()):
        self.failures = list(failures)
        self.batches = []

    def get_model_config(self, name, as_json=False):
        return {"config": {"name": name, "max_batch_size": 2}}

    def infer(self, model, inputs, outputs=None, client_timeout=None):
        if self.failures:
            raise self.failures.pop(0)
        raw = inputs[0]._get_content() if hasattr(inputs[0], "_get_content") else None
        batch = inputs[0].shape()[0]
        self.batches.append((model, inputs[0].name(), batch, raw))
        d = 4
        mean = np.arange(batch * d, dtype=np.float32).reshape(batch, d) + 1
        tokens = np.ones((batch, 3, d), dtype=np.float32)
        mask = np.array([[1, 1, 0]] * batch, dtype=np.int64)
        names = {o.name() for o in outputs}
        arrays = {
            "d2v_mean_embedding": mean,
            "d2v_cls_embedding": -mean,
            "d2v_token_embeddings": tokens,
            "d2v_token_mask": mask,
        }
        return FakeResult({k: v for k, v in arrays.items() if k in names})

    def close(self):
        pass


def test_triton_embed_chunks_to_model_batch_and_normalises():
    fake = FakeTriton()
    with TritonClient(model="d2v-text", client=fake) as client:
        out = client.embed_text(["a", "b", "c"])
        raw = client.embed_text(["a"], normalize=False, pooling="cls", dimensions=2)
    assert [b[2] for b in fake.batches] == [2, 1, 1]
    assert fake.batches[0][:2] == ("d2v-text", "raw_input")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(raw, [[-1.0, -2.0]])


def test_triton_token_level_drops_padding():
    with TritonClient(model="m", client=FakeTriton(), max_batch_size=8) as client:
        toks = client.embed_images([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"], pooling="none")
    assert [t.shape for t in toks] == [(2, 4), (2, 4)]


def test_triton_retries_overload_then_maps_errors():
    sleeps = []
    busy = InferenceServerException("queue full", status="StatusCode.RESOURCE_EXHAUSTED")
    fake = FakeTriton([busy, busy])
    with TritonClient(model="m", client=fake, max_batch_size=4, sleep=sleeps.append) as client:
        assert client.embed_text(["x"]).shape == (1, 4)
    assert len(sleeps) == 2
    fake.failures = [InferenceServerException("bad utf-8", status="StatusCode.INVALID_ARGUMENT")]
    with pytest.raises(BadRequestError, match="bad utf-8"):
        TritonClient(model="m", client=fake, max_batch_size=4).embed_text(["x"])
    fake.failures = [busy] * 3
    client = TritonClient(
        model="m", client=fake, max_batch_size=4, retry=RetryPolicy(max_retries=1), sleep=sleeps.append
    )
    with pytest.raises(OverloadedError):
        client.embed_text(["x"])


def test_finish_truncates_then_renormalises():
    v = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(finish(v, True, 2), [[0.6, 0.8]], rtol=1e-6)


def test_missing_tritonclient_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(ImportError, match=r"pip install 'd2v-client\[triton\]'"):
        TritonClient(model="m")
