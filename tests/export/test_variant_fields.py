"""The exporter fills each variant's ``engine`` and ``precision`` in model.json, and the gateway serves a
chosen variant of a real export (``d2v serve --variant``) within that variant's cosine bar."""

from __future__ import annotations

import numpy as np
import pytest
import testkit
from conftest import MODALITIES

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("modality", MODALITIES)
def test_exporter_fills_engine_and_precision(exports, modality):
    from d2v.core.manifest import ModelManifest
    from d2v.export.variants import cpu_has_bf16

    m = ModelManifest.load(exports[modality])
    fields = {name: (v.engine, v.precision) for name, v in m.variants.items()}
    assert fields["fp32"] == (None, "fp32")  # any engine
    assert fields["fp16"] == ("onnxruntime", "fp16") and fields["int8"] == ("onnxruntime", "int8")
    assert m.variants["fp16"].file == "model.fp16.onnx" and m.variants["int8"].file == "model.int8.onnx"
    if cpu_has_bf16():  # offered only where OpenVINO reports BF16; it is the fp32 graph plus a hint
        assert fields["bf16"] == ("openvino", "bf16") and m.variants["bf16"].file == "model.onnx"
    else:
        assert "bf16" not in fields
    if "optimized" in fields:
        assert fields["optimized"] == ("onnxruntime", "fp32")
    assert set(m.variants_for("openvino")) == {"fp32", *(["bf16"] if cpu_has_bf16() else [])}


def test_gateway_serves_the_int8_export(exports):
    import asyncio

    from d2v.server.app import create_app

    tk = testkit
    store = exports["text"].parent
    texts = ["hello int8", "data2vec embeds text, images and speech with one objective"]

    async def embed(variant):
        settings = tk.make_settings(store, models=["tiny_text"], variant=variant)
        async with tk.asgi_client(create_app(settings)) as client:
            info = (await client.get("/info")).json()["models"][0]
            resp = await client.post("/v1/embed/text", json={"input": texts, "encoding_format": "float"})
            assert resp.status_code == 200, resp.text
            return info["variant"], np.array([d["embedding"] for d in resp.json()["data"]])

    (v32, fp32), (v8, int8) = asyncio.run(embed(None)), asyncio.run(embed("int8"))
    assert (v32, v8) == ("fp32", "int8")
    cosine = (fp32 * int8).sum(axis=1)  # both L2-normalised
    assert not np.array_equal(fp32, int8) and cosine.min() >= 0.99
