"""The embedded engines for real on the tiny models: ONNX Runtime, OpenVINO (f32 ~ ORT; bf16 close)."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import asgi_client, make_settings, png_bytes, wav_bytes

from d2v.core.contract import CLS_OUTPUT, MEAN_OUTPUT, TOKEN_MASK_OUTPUT, TOKENS_OUTPUT, output_names
from d2v.core.errors import NotFound
from d2v.core.manifest import ModelManifest
from d2v.models.preprocessing import build_preprocessor
from d2v.runtime.engines.onnxruntime import OnnxRuntimeEngine
from d2v.runtime.engines.openvino import OpenVinoEngine
from d2v.server.app import create_app

pytestmark = pytest.mark.anyio

RAWS = {
    "text": ["hello world", "the quick brown fox jumps over the lazy dog", "hi"],
    "audio": [wav_bytes(0.5), wav_bytes(1.2, seed=1), wav_bytes(0.3, rate=22050, seed=2)],
    "image": [png_bytes(), png_bytes(64, 48, seed=1), png_bytes(33, 90, seed=2)],
}


def batch_for(store, modality):
    path = store / f"tiny-{modality}"
    manifest = ModelManifest.load(path)
    pre = build_preprocessor(manifest.preprocessing, path)
    inputs = pre.collate([pre.load_item(r) for r in RAWS[modality]])
    if manifest.supports_top_k:
        inputs["d2v_top_k"] = np.array([2], dtype=np.int64)
    return manifest, path, inputs


def cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("modality", ["text", "audio", "image"])
async def test_onnxruntime_engine_contract(store, modality):
    manifest, path, inputs = batch_for(store, modality)
    engine = OnnxRuntimeEngine(manifest, path, intra_op_threads=1)
    await engine.load()
    try:
        assert await engine.health()
        await engine.warmup()
        out = await engine.embed(inputs, output_names(modality))
        b = len(RAWS[modality])
        assert out[MEAN_OUTPUT].shape == (b, manifest.embedding_dim)
        assert out[TOKENS_OUTPUT].shape[:2] == out[TOKEN_MASK_OUTPUT].shape
        assert (CLS_OUTPUT in out) == (modality != "audio")
        assert engine.describe()["providers"] == ["CPUExecutionProvider"]
    finally:
        await engine.close()
    assert not await engine.health()


async def test_unknown_variant_is_not_found(store):
    manifest, path, _ = batch_for(store, "text")
    engine = OnnxRuntimeEngine(manifest, path, variant="int8")
    with pytest.raises(NotFound):
        await engine.load()
    await engine.close()


@pytest.mark.parametrize("modality", ["text", "audio", "image"])
async def test_openvino_matches_onnxruntime(store, modality):
    manifest, path, inputs = batch_for(store, modality)
    ort_engine = OnnxRuntimeEngine(manifest, path)
    f32 = OpenVinoEngine(manifest, path, precision="f32")
    bf16 = OpenVinoEngine(manifest, path, precision="bf16")
    names = output_names(modality)
    for engine in (ort_engine, f32, bf16):
        await engine.load()
    try:
        ref = await ort_engine.embed(inputs, names)
        got = await f32.embed(inputs, names)
        low = await bf16.embed(inputs, names)
        np.testing.assert_array_equal(got[TOKEN_MASK_OUTPUT], ref[TOKEN_MASK_OUTPUT])
        for name in (MEAN_OUTPUT, TOKENS_OUTPUT):
            assert cosine(got[name], ref[name]).min() > 0.99999
            assert cosine(low[name], ref[name]).min() > 0.99  # bf16 where the CPU has it, else f32
    finally:
        for engine in (ort_engine, f32, bf16):
            await engine.close()


async def test_openvino_engine_behind_the_api(store):
    app = create_app(make_settings(store, engine="openvino", openvino_precision="f32"))
    async with asgi_client(app) as client:
        info = (await client.get("/info")).json()
        assert {m["engine"] for m in info["models"]} == {"openvino"}
        resp = await client.post("/v1/embed/text", json={"input": ["hello", "hello world"], "pooling": "none"})
        assert resp.status_code == 200
        data = resp.json()["data"]
        assert data[0]["shape"][0] < data[1]["shape"][0] and [d["shape"][0] for d in data] == [
            d["tokens"] for d in data
        ]
