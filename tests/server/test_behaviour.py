"""Serving behaviour: auth, readiness, backpressure (429), batching seen in metrics, body limits, shutdown."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest
from testkit import asgi_client, live_server, make_settings

from d2v.core.errors import Unavailable
from d2v.core.manifest import ModelManifest
from d2v.runtime.engines.fake import FakeEngine
from d2v.server.app import create_app

pytestmark = pytest.mark.anyio


def fake(store, modality="text", **kwargs) -> FakeEngine:
    path = store / f"tiny-{modality}"
    return FakeEngine(ModelManifest.load(path), path, **kwargs)


def metric(text: str, name: str, model: str = "tiny-text") -> float:
    match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


async def test_auth_on(store):
    app = create_app(make_settings(store, api_keys="k1,k2"))
    async with asgi_client(app) as client:
        body = {"model": "tiny-text", "input": "hi"}
        missing = await client.post("/v1/embeddings", json=body)
        wrong = await client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
        scheme = await client.post("/v1/embeddings", json=body, headers={"Authorization": "Basic k1"})
        for resp in (missing, wrong, scheme):
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
            assert resp.json() == missing.json()  # one message: nothing says which part failed
            assert resp.json()["error"]["type"] == "authentication_error"
        for key in ("k1", "k2"):
            ok = await client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/info")).status_code == 401
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_readiness_before_and_after_warmup(store):
    gate = asyncio.Event()
    app = create_app(make_settings(store, models=["tiny-text"]), engines=[fake(store, warmup_gate=gate)])
    async with asgi_client(app, ready=False) as client:
        assert (await client.get("/livez")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "not_ready"
        early = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "hi"})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        gate.set()
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        assert (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "hi"})).status_code == 200


async def test_queue_full_returns_429_with_retry_after(store):
    settings = make_settings(store, max_queue=2, max_items_per_request=2, max_batch_size=1, retry_after_s=2)
    app = create_app(settings, engines=[fake(store, delay_s=0.3)])
    async with asgi_client(app) as client:
        body = {"model": "tiny-text", "input": ["a", "b"]}
        first = asyncio.create_task(client.post("/v1/embeddings", json=body))  # taken by the batcher
        await asyncio.sleep(0.1)
        second = asyncio.create_task(client.post("/v1/embeddings", json=body))  # fills the queue
        await asyncio.sleep(0.1)
        third = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "c"})
        assert third.status_code == 429 and third.headers["retry-after"] == "2"
        assert third.json()["error"]["type"] == "rate_limit_error"
        assert (await first).status_code == 200 and (await second).status_code == 200


async def test_engine_errors_map_to_status(store):
    app = create_app(make_settings(store), engines=[fake(store, error=Unavailable("backend down"))])
    async with asgi_client(app, ready=False) as client:
        app.state.registry.get("tiny-text").ready = True  # warm-up keeps failing with the same error
        resp = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "hi"})
        assert resp.status_code == 503 and resp.json()["error"]["message"] == "backend down"


async def test_concurrent_requests_share_batches_in_metrics(store):
    # The real ORT engine; a generous max_wait so that all concurrent requests meet in one window.
    app = create_app(make_settings(store, models=["tiny-text"], max_wait_ms=200))
    async with asgi_client(app) as client:
        texts = [f"hello {'world ' * i}" for i in range(8)]
        bodies = [{"model": "tiny-text", "input": t} for t in texts]
        results = await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in results)
        solo = (await client.post("/v1/embeddings", json=bodies[3])).json()["data"][0]["embedding"]
        np.testing.assert_allclose(results[3].json()["data"][0]["embedding"], solo, rtol=1e-5, atol=1e-6)
        text = (await client.get("/metrics")).text
        batches = metric(text, "d2v_batch_size_count")
        items = metric(text, "d2v_batch_size_sum")
        assert items == 9 and batches <= 3, (batches, items)  # 8 merged requests + the solo one
        assert metric(text, "d2v_inference_seconds_count") == batches
        assert 'd2v_requests_total{protocol="http",route="/v1/embeddings",status="200"} 9.0' in text


async def test_body_limit_before_parsing(store):
    app = create_app(make_settings(store, max_body_bytes=1000, max_items_per_request=3))
    async with asgi_client(app) as client:
        big = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "x" * 2000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"

        async def chunks():  # chunked transfer: no Content-Length to trust
            for _ in range(5):
                yield b"x" * 400

        streamed = await client.post("/v1/embed/text", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
        many = await client.post("/v1/embed/text", json={"input": ["a"] * 4})
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_items"


async def test_image_pixel_limit(store):
    from testkit import png_bytes

    app = create_app(make_settings(store, models=["tiny-image"], max_image_pixels=1000))
    async with asgi_client(app) as client:
        files = [("file", ("big.png", png_bytes(50, 50), "image/png"))]
        resp = await client.post("/v1/embed/image", files=files)
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


def test_graceful_shutdown_finishes_in_flight_requests(store):
    app = create_app(make_settings(store, models=["tiny-text"]), engines=[fake(store, delay_s=0.5)])
    results: dict[str, httpx.Response] = {}
    with live_server(app) as (base, server):

        def call() -> None:
            results["r"] = httpx.post(f"{base}/v1/embeddings", json={"model": "tiny-text", "input": "hi"}, timeout=10)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.15)  # the request is inside the engine now
        server.should_exit = True  # what SIGTERM does
        thread.join(timeout=10)
    assert results["r"].status_code == 200
    assert app.state.draining is True
