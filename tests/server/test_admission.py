"""Admission control: requests, items and bytes in flight per model, refused with 429 before any decoding."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from testkit import asgi_client, make_settings, record_reliability

from d2v.core.errors import Overloaded
from d2v.core.manifest import ModelManifest
from d2v.runtime.engines.fake import FakeEngine
from d2v.server.admission import Admission, AdmissionLimits
from d2v.server.app import create_app


def _refused(gate: Admission, items: int, nbytes: int, match: str) -> None:
    with pytest.raises(Overloaded, match=match), gate.admit(items=items, nbytes=nbytes):
        pass


def test_each_bound_refuses_and_names_itself():
    refused: list[str] = []
    gate = Admission("m", AdmissionLimits(max_requests=2, max_items=10, max_bytes=100), on_refuse=refused.append)
    with gate.admit(items=4, nbytes=10), gate.admit(items=4, nbytes=10):
        _refused(gate, 1, 1, "2 requests in flight")
    with gate.admit(items=8, nbytes=10):
        _refused(gate, 3, 1, "8 items in flight, 3 more asked")
    with gate.admit(items=1, nbytes=90):
        _refused(gate, 1, 11, "90 request bytes in flight")
    assert refused == ["requests", "items", "bytes"]
    with pytest.raises(RuntimeError), gate.admit(items=5, nbytes=50):
        raise RuntimeError("a failed request still gives its share back")
    assert (gate.requests, gate.items, gate.bytes) == (0, 0, 0)


def test_one_request_larger_than_the_byte_bound_is_a_settings_error():
    with pytest.raises(ValueError, match="max_inflight_bytes"):
        make_settings(".", max_body_bytes=10_000, max_inflight_bytes=1_000)


def _large_jpeg() -> bytes:
    """16 megapixels that compress to little: cheap to send, expensive to decode (the attack)."""
    y, x = np.mgrid[0:4000, 0:4000]
    pixels = np.stack([(x // 16) % 256, (y // 16) % 256, ((x + y) // 32) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _histogram(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}_count\{{model="{model}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.anyio
async def test_a_flood_of_large_images_is_refused_before_any_decoding(store):
    path = store / "tiny-image"
    engine = FakeEngine(ModelManifest.load(path), path, delay_s=0.5)
    settings = make_settings(store, models=["tiny-image"], max_concurrent_requests=2, retry_after_s=3)
    image = base64.b64encode(_large_jpeg()).decode()
    async with asgi_client(create_app(settings, engines=[engine])) as client:
        before = _histogram((await client.get("/metrics")).text, "d2v_preprocess_seconds", "tiny-image")
        body = {"input": [image], "model": "tiny-image"}
        flood = await asyncio.gather(*(client.post("/v1/embed/image", json=body) for _ in range(40)))
        after = (await client.get("/metrics")).text
    statuses = [r.status_code for r in flood]
    admitted, refused = statuses.count(200), statuses.count(429)
    assert admitted + refused == 40 and 2 <= admitted < 40, statuses
    for resp in flood:
        if resp.status_code == 429:
            assert resp.headers["retry-after"] == "3"
            assert "at capacity: 2 requests in flight" in resp.json()["error"]["message"]
    decoded = _histogram(after, "d2v_preprocess_seconds", "tiny-image") - before
    seconds = re.search(r'^d2v_preprocess_seconds_sum\{model="tiny-image"\} (\S+)$', after, re.M)
    print(
        f"flood of 40 x 16 MP JPEG: {admitted} admitted, {refused} refused; decodes run: {int(decoded)}; "
        f"preprocessing {float(seconds.group(1)):.2f} s in all, 0 s on refused requests"
    )
    assert decoded == admitted  # the refused requests never reached the decoder
    refused_metric = re.search(
        r'^d2v_admission_refused_total\{bound="requests",model="tiny-image"\} (\S+)$', after, re.M
    )
    assert refused_metric and float(refused_metric.group(1)) == refused
    record_reliability(
        "Admission control under a flood of large images",
        tried="40 concurrent requests, each a 16-megapixel JPEG, at --max-concurrent-requests 2",
        faults="a slow engine (0.5 s per batch), so requests pile up",
        outcome="refused requests answered 429 + Retry-After before any decoding",
        figures=f"{admitted} admitted and decoded, {refused} refused, 0 decodes and 0 s preprocessing on refused",
    )
