"""The same unmodified ``tritonclient.grpc`` code (sync, aio, streaming) against the gateway's gRPC front end and
against a REAL tritonserver serving the generated ensembles of the same exports: equal metadata and config
(names, datatypes, shapes, max_batch_size) and equal vectors (<= 1e-5)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from testkit import free_port, live_server, make_settings

from d2v.core.contract import MEAN_OUTPUT, TOKEN_MASK_OUTPUT, TOKENS_OUTPUT
from d2v.server.app import create_app

tf = sys.modules["triton_fixtures"]  # registered by tests/conftest.py

pytestmark = [pytest.mark.triton, pytest.mark.slow]
ATOL = 1e-5


def _tensor(lib, raws: list[bytes]):
    tensor = lib.InferInput("raw_input", [len(raws), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[r] for r in raws], dtype=object))
    return tensor


def kserve_answers(url: str) -> dict:
    """What a tritonclient user sees from ``url``: metadata, config and outputs of every modality."""
    client = grpcclient.InferenceServerClient(url)
    out: dict = {}
    try:
        for modality in tf.MODALITIES:
            name = f"tiny_{modality}"
            meta = client.get_model_metadata(name, as_json=True)
            config = client.get_model_config(name, as_json=True)["config"]
            out[modality, "metadata"] = (meta["name"], meta["inputs"], meta["outputs"])
            out[modality, "config"] = (config["max_batch_size"], config["input"], config["output"])
            result = client.infer(name, [_tensor(grpcclient, tf.raw_inputs(modality))])
            out[modality, "outputs"] = {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()

    async def aio() -> None:
        async with aioclient.InferenceServerClient(url) as c:
            for modality in tf.MODALITIES:
                wanted = [aioclient.InferRequestedOutput(MEAN_OUTPUT)]
                r = await c.infer(f"tiny_{modality}", [_tensor(aioclient, tf.raw_inputs(modality))], outputs=wanted)
                out[modality, "aio"] = r.as_numpy(MEAN_OUTPUT)

            async def requests():
                for i, raw in enumerate(tf.raw_inputs("text")):
                    yield {"model_name": "tiny_text", "inputs": [_tensor(aioclient, [raw])], "request_id": str(i)}

            streamed = {}
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                streamed[result.get_response().id] = result.as_numpy(MEAN_OUTPUT)[0]
            out["text", "stream"] = np.stack([streamed[str(i)] for i in range(len(streamed))])

    asyncio.run(aio())
    return out


def test_gateway_and_triton_answer_the_same(triton_server, tiny_exports):
    port = free_port()
    settings = make_settings(tiny_exports["text"].parent, grpc_port=port)
    with live_server(create_app(settings)):
        gateway = kserve_answers(f"127.0.0.1:{port}")
    triton = kserve_answers(triton_server.grpc_url)

    assert gateway.keys() == triton.keys()
    for modality in tf.MODALITIES:
        assert gateway[modality, "metadata"] == triton[modality, "metadata"], modality
        assert gateway[modality, "config"] == triton[modality, "config"], modality
        got, want = gateway[modality, "outputs"], triton[modality, "outputs"]
        assert got.keys() == want.keys()
        np.testing.assert_array_equal(got[TOKEN_MASK_OUTPUT], want[TOKEN_MASK_OUTPUT])
        mask = want[TOKEN_MASK_OUTPUT].astype(bool)
        for name in got:
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, (modality, name)
            if name == TOKENS_OUTPUT:  # padding positions carry whatever the model computes there in Triton
                np.testing.assert_allclose(got[name][mask], want[name][mask], atol=ATOL, rtol=0)
            elif name != TOKEN_MASK_OUTPUT:
                np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=0, err_msg=f"{modality} {name}")
        np.testing.assert_allclose(gateway[modality, "aio"], triton[modality, "aio"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(gateway["text", "stream"], triton["text", "stream"], atol=ATOL, rtol=0)
