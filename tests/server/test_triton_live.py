"""The gateway in Triton mode against a REAL tritonserver (nvidia-pytriton's binary from ``.venv-triton``, python
backend) serving the generated repository of the tiny exports (all three modalities).

- Parity: for every Triton mode (``encoder``: the gateway preprocesses and sends tensors to ``<name>_encoder``;
  ``ensemble``: it sends raw bytes to ``<name>``) over gRPC and HTTP, every modality and pooling gives the
  embedded ONNX Runtime engine's answer for the same request, and Triton's own statistics show it served them.
- Errors: an input only Triton can reject (ensemble mode) is a 400 and the gateway keeps serving.
- Down / recovery: tritonserver is stopped -> 503 ``backend_unavailable`` and ``/readyz`` 503; it is started
  again on the same ports -> the very next request succeeds, with the same app (no gateway restart).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
from testkit import asgi_client, make_settings, record_reliability

from d2v.server.app import create_app

tf = sys.modules["triton_fixtures"]  # registered by tests/conftest.py

pytestmark = [pytest.mark.triton, pytest.mark.anyio]

# The export contract's parity tolerance (ORT vs PyTorch); in practice both sides give identical bits.
ATOL = 1e-5
MODES = [("encoder", "grpc"), ("encoder", "http"), ("ensemble", "grpc"), ("ensemble", "http")]
POOLINGS = {"text": ("mean", "cls", "none"), "image": ("mean", "cls", "none"), "audio": ("mean", "none")}


def _request_input(modality: str, raw: bytes) -> str:
    return raw.decode() if modality == "text" else base64.b64encode(raw).decode()


async def _collect(client) -> dict:
    """Every modality x pooling through the native API, plus the OpenAI route for text."""
    out = {}
    for modality in tf.MODALITIES:
        inputs = [_request_input(modality, r) for r in tf.raw_inputs(modality)]
        for pooling in POOLINGS[modality]:
            body = {"input": inputs, "pooling": pooling, "encoding_format": "float"}
            resp = await client.post(f"/v1/embed/{modality}", json=body)
            assert resp.status_code == 200, (modality, pooling, resp.text)
            data = sorted(resp.json()["data"], key=lambda d: d["index"])
            out[(modality, pooling)] = [np.asarray(d["embedding"], dtype=np.float32) for d in data]
            out[(modality, pooling, "usage")] = resp.json().get("usage")
    resp = await client.post("/v1/embeddings", json={"model": "tiny_text", "input": ["hello triton", "a"]})
    assert resp.status_code == 200, resp.text
    out[("text", "openai")] = [np.asarray(d["embedding"], dtype=np.float32) for d in resp.json()["data"]]
    out[("text", "openai", "usage")] = resp.json()["usage"]
    return out


def _store(exports: dict[str, Path]) -> Path:
    return exports["text"].parent  # <root>/exports/tiny_<modality>: a model store


@pytest.fixture(scope="module")
def embedded(tiny_exports) -> dict:
    """The embedded ONNX Runtime engine's answers (the reference)."""

    async def run():
        async with asgi_client(create_app(make_settings(_store(tiny_exports)))) as client:
            return await _collect(client)

    return asyncio.run(run())


def _triton_settings(store: Path, server, mode: str, protocol: str, **extra):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return make_settings(
        store, engine="triton", triton_url=url, triton_protocol=protocol, triton_mode=mode, triton_timeout_s=10, **extra
    )


def _success_counts(server, models: list[str]) -> dict[str, int]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        counts = {}
        for name in models:
            stats = client.get_inference_statistics(name)["model_stats"][0]
            counts[name] = int(stats["inference_stats"]["success"]["count"])
        return counts
    finally:
        client.close()


@pytest.mark.parametrize(("mode", "protocol"), MODES, ids=[f"{m}-{p}" for m, p in MODES])
async def test_gateway_in_triton_mode_equals_embedded_engine(triton_server, tiny_exports, embedded, mode, protocol):
    from d2v.core.manifest import ModelManifest

    manifests = {m: ModelManifest.load(tiny_exports[m]) for m in tf.MODALITIES}
    target = {m: (mf.triton.encoder if mode == "encoder" else mf.triton.ensemble) for m, mf in manifests.items()}
    app = create_app(_triton_settings(_store(tiny_exports), triton_server, mode, protocol))
    async with asgi_client(app, ready=False) as client:
        await _wait_ready(client)  # warm-up runs through Triton (encoder mode sends a real batch)
        info = (await client.get("/info")).json()
        served = {m["name"]: m for m in info["models"]}
        for modality, name in target.items():
            engine = served[f"tiny_{modality}"]
            assert (engine["engine"], engine["mode"], engine["protocol"]) == ("triton", mode, protocol)
            assert engine["triton_model"] == name
        before = _success_counts(triton_server, list(target.values()))
        got = await _collect(client)
        after = _success_counts(triton_server, list(target.values()))

    for modality, name in target.items():  # every request of this test went through Triton's model
        requests = len(POOLINGS[modality]) + (1 if modality == "text" else 0)
        assert after[name] - before[name] >= requests, (name, before, after)
    worst = 0.0
    for key, expected in embedded.items():
        if key[-1] == "usage":
            assert got[key] == expected, key
            continue
        assert len(got[key]) == len(expected), key
        for g, e in zip(got[key], expected, strict=True):
            assert g.shape == e.shape, key
            np.testing.assert_allclose(g, e, atol=ATOL, rtol=0, err_msg=str(key))
            worst = max(worst, float(np.abs(g - e).max()))
    print(f"gateway Triton {mode}/{protocol} vs embedded ONNX Runtime: max |diff| = {worst:.3g}")


async def _wait_ready(client, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gateway not ready: {(await client.get('/readyz')).text}")


async def test_input_only_triton_rejects_is_400_and_gateway_keeps_serving(triton_server, tiny_exports):
    app = create_app(_triton_settings(_store(tiny_exports), triton_server, "ensemble", "grpc", models=["tiny_image"]))
    async with asgi_client(app, ready=False) as client:
        await _wait_ready(client)
        bad = base64.b64encode(b"definitely not an image").decode()
        resp = await client.post("/v1/embed/image", json={"input": [bad]})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert "Triton rejected the input" in error["message"] and "tiny_image" in error["message"]
        good = _request_input("image", tf.raw_inputs("image")[0])
        assert (await client.post("/v1/embed/image", json={"input": [good]})).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_ensemble_applies_the_text_limits_of_encoder_mode(triton_server, tiny_exports):
    """Token ids, ``truncate: false`` and the character limit: the same answer in both Triton modes, or a 400
    that says why (token ids: the ensemble tokenizes the text itself)."""
    long_text = "many words " * 300  # far over the tiny model's token limit, under the character limit
    cases = {
        "tokens_over_limit": ("/v1/embed/text", {"input": [long_text], "truncate": False}),
        "chars_over_limit": ("/v1/embed/text", {"input": ["x" * 5000], "truncate": False}),
        "chars_truncated": ("/v1/embed/text", {"input": ["é" * 5000], "encoding_format": "float"}),
        "token_ids": ("/v1/embeddings", {"model": "tiny_text", "input": [[0, 5, 6, 2]], "encoding_format": "float"}),
    }
    answers = {}
    for mode in ("encoder", "ensemble"):
        settings = _triton_settings(
            _store(tiny_exports), triton_server, mode, "grpc", models=["tiny_text"], max_text_chars=4000
        )
        async with asgi_client(create_app(settings), ready=False) as client:
            await _wait_ready(client)
            for case, (route, body) in cases.items():
                resp = await client.post(route, json=body)
                answers[(mode, case)] = (resp.status_code, resp.json())
    for case in ("tokens_over_limit", "chars_over_limit"):  # the same 413, word for word
        assert answers[("ensemble", case)] == answers[("encoder", case)], case
        assert answers[("encoder", case)][0] == 413, answers[("encoder", case)]
    encoder, ensemble = answers[("encoder", "chars_truncated")], answers[("ensemble", "chars_truncated")]
    assert encoder[0] == ensemble[0] == 200
    np.testing.assert_allclose(ensemble[1]["data"][0]["embedding"], encoder[1]["data"][0]["embedding"], atol=ATOL)
    assert answers[("encoder", "token_ids")][0] == 200
    status, body = answers[("ensemble", "token_ids")]
    assert status == 400 and "--triton-mode encoder" in body["error"]["message"], body
    record_reliability(
        "Triton ensemble mode: text limits",
        tried="over-long text with truncate: false, over the character limit, truncated text, token ids",
        faults="the same requests to a gateway in encoder mode and in ensemble mode (real tritonserver)",
        outcome="identical 413s and vectors in both modes; token ids refused in ensemble mode with a 400 saying why",
        figures="4 of 4 cases as specified",
    )


async def test_triton_down_is_503_and_gateway_recovers_when_it_is_back(triton_repo, tiny_exports):
    """A private tritonserver (text models only), stopped and started again on the same ports."""
    reason = tf.triton_skip_reason()
    if reason:
        pytest.skip(reason)
    server = tf.start_triton(triton_repo, models=["tiny_text", "tiny_text_preprocess", "tiny_text_encoder"])
    store = _store(tiny_exports)
    setups = [("encoder", "grpc"), ("encoder", "http"), ("ensemble", "grpc")]
    body = {"input": ["hello triton", "the gateway outlives its backend"]}
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for mode, protocol in setups:
                app = create_app(_triton_settings(store, server, mode, protocol, models=["tiny_text"], warmup=False))
                clients[(mode, protocol)] = await stack.enter_async_context(asgi_client(app, ready=False))
            first = {}
            for key, client in clients.items():
                await _wait_ready(client)
                resp = await client.post("/v1/embed/text", json=body)
                assert resp.status_code == 200, (key, resp.text)
                first[key] = resp.json()["data"]

            ports = (server.grpc_port, server.http_port)
            server.stop()
            for (mode, protocol), client in clients.items():
                resp = await client.post("/v1/embed/text", json=body)
                assert resp.status_code == 503, (mode, protocol, resp.text)
                error = resp.json()["error"]
                assert error["code"] == "backend_unavailable" and error["type"] == "service_unavailable"
                url = server.grpc_url if protocol == "grpc" else server.http_url
                assert f"Triton at {url}" in error["message"]
                assert (await client.get("/readyz")).status_code == 503

            server.start(timeout=120)  # the same object: the same ports
            assert (server.grpc_port, server.http_port) == ports
            for key, client in clients.items():
                resp = await client.post("/v1/embed/text", json=body)  # the first request after the restart
                assert resp.status_code == 200, (key, resp.text)
                assert resp.json()["data"] == first[key]
                assert (await client.get("/readyz")).status_code == 200
    finally:
        server.stop()
