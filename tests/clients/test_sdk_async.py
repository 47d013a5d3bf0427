"""The asyncio client: same wire behaviour, bounded concurrency, retries with an injected async sleep."""

from __future__ import annotations

import asyncio
import random

import httpx
import numpy as np
import pytest

from d2v_client import AsyncClient, BadRequestError, OverloadedError, RetryPolicy


def make_client(server, sleeps, **kw) -> AsyncClient:
    return AsyncClient(
        "http://d2v.test", transport=httpx.MockTransport(server), sleep=sleeps.asleep, rng=random.Random(1), **kw
    )


def test_async_embed_text_chunks_and_orders(fake_server, sleeps):
    texts = [f"t{i}" for i in range(11)]

    async def main():
        async with make_client(fake_server, sleeps) as client:
            return await client.embed_text(texts), await client.embed_text(["a"], pooling="none")

    out, toks = asyncio.run(main())
    np.testing.assert_array_equal(out, np.stack([fake_server.vector(t) for t in texts]))
    assert sorted(len(b["input"]) for b in fake_server.bodies[:3]) == [3, 4, 4]
    assert isinstance(toks, list) and toks[0].shape == (2, 8)


def test_async_retries_and_errors(fake_server, sleeps):
    fake_server.script = [fake_server.error(429, retry_after="2"), fake_server.error(400, "bad item 0")]

    async def main():
        async with make_client(fake_server, sleeps) as client:
            with pytest.raises(BadRequestError, match="bad item 0"):
                await client.embed_text(["x"])
            fake_server.script = [fake_server.error(429, "full")] * 3
            client._transport.retry = RetryPolicy(max_retries=2)
            with pytest.raises(OverloadedError, match="full"):
                await client.embed_text(["y"])

    asyncio.run(main())
    assert 2.0 <= sleeps[0] <= 2.5 and len(sleeps) == 3


def test_async_concurrency_is_bounded(fake_server, sleeps):
    fake_server.limits = {"max_batch_size": 1}
    state = {"now": 0, "peak": 0}

    class SlowTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            await asyncio.sleep(0.01)
            state["now"] -= 1
            await request.aread()
            return fake_server(request)

    async def main():
        client = AsyncClient("http://d2v.test", transport=SlowTransport(), max_concurrency=3)
        async with client:
            return await client.embed_text([str(i) for i in range(12)])

    out = asyncio.run(main())
    assert out.shape == (12, 8) and state["peak"] == 3


def test_async_images_and_audio(fake_server, sleeps, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nxx")

    async def main():
        async with make_client(fake_server, sleeps) as client:
            return await client.embed_image([path]), await client.embed_audio((np.zeros(160), 16000))

    img, aud = asyncio.run(main())
    assert img.shape == aud.shape == (1, 8)
    assert [r.url.path for r in fake_server.requests if r.url.path != "/info"] == ["/v1/embed/image", "/v1/embed/audio"]
