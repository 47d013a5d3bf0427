"""A bounded soak: thousands of mixed requests (every modality, valid and hostile) against ``d2v serve`` in its
own process, its RSS sampled from /proc; after warm-up the RSS must stay within a stated bound.

The bound (``RSS_GROWTH_BOUND_MB``) is generous for allocator noise yet far below what one leaked buffer per
request would cost here (a 16 MP image decode is ~190 MB; even 1 KB per request is 3 MB over the run).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from testkit import free_port, png_bytes, record_reliability, wav_bytes

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

REQUESTS = 3000
CONCURRENCY = 16
WARMUP = 500  # requests before the baseline sample: pools, caches and arenas reach their working size
RSS_GROWTH_BOUND_MB = 40.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _bomb() -> str:
    """A PNG that decodes to far more pixels than the server allows."""
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _requests() -> list[tuple[str, dict, set[int]]]:
    """(route, JSON body, acceptable statuses): the mix cycled through by the soak."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    image, audio = b64(png_bytes(seed=3)), b64(wav_bytes(seconds=0.3, seed=4))
    rng = np.random.default_rng(0)
    return [
        ("/v1/embeddings", {"input": ["hello soak", "another sentence, a bit longer than the first"]}, {200}),
        ("/v1/embeddings", {"model": "tiny-text", "input": [[0, 5, 7, 2]]}, {200}),
        ("/v1/embed/text", {"input": ["token level"], "pooling": "none", "encoding_format": "base64"}, {200}),
        ("/v1/embed/image", {"input": [image, image]}, {200}),
        ("/v1/embed/audio", {"input": [audio]}, {200}),
        ("/v1/embed/image", {"input": [b64(rng.bytes(3000))]}, {400, 415}),  # random bytes
        ("/v1/embed/image", {"input": [b64(png_bytes()[:60])]}, {400, 415}),  # truncated PNG
        ("/v1/embed/image", {"input": [_bomb()]}, {413}),  # decompression bomb
        ("/v1/embed/audio", {"input": ["%%% not base64"]}, {400}),
        ("/v1/embed/text", {"input": ["x" * 20_000], "truncate": False}, {413}),
        ("/v1/embeddings", {"model": "no-such-model", "input": "hi"}, {404}),
        ("/v1/embeddings", {"input": []}, {422}),
        ("/v1/embed/text", {"input": ["a"], "layers": 99}, {400}),
        ("/v1/embeddings", {"model": "tiny-text", "input": [[99_999_999]]}, {400}),
    ]


@pytest.fixture
def server(store, tmp_path):
    port = free_port()
    env = {**os.environ, "D2V_GRPC_PORT": "0", "D2V_MAX_TEXT_CHARS": "10000", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "d2v", "serve", "--store", str(store), "--port", str(port)]
    cmd += ["--engine", "onnxruntime"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"d2v serve did not become ready: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.2)
    yield base, proc
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


async def test_soak_of_mixed_requests_keeps_rss_bounded(server):
    base, proc = server
    mix = _requests()
    samples: list[tuple[int, float]] = []
    unexpected: list[str] = []
    counter = iter(range(REQUESTS))

    async def worker(client: httpx.AsyncClient) -> None:
        for n in counter:
            route, body, ok = mix[n % len(mix)]
            resp = await client.post(route, json=body)
            if resp.status_code not in ok:
                unexpected.append(f"{route} {str(body)[:80]} -> {resp.status_code} {resp.text[:200]}")
            if n % 250 == 0:
                samples.append((n, _rss_mb(proc.pid)))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    samples.append((REQUESTS, _rss_mb(proc.pid)))
    assert proc.poll() is None, "the server died during the soak"
    assert not unexpected, unexpected[:5]
    baseline = max(rss for n, rss in samples if n <= WARMUP)
    peak_after = max(rss for n, rss in samples if n > WARMUP)
    growth = peak_after - baseline
    print(
        f"soak: {REQUESTS} requests ({len(mix)} kinds, {CONCURRENCY} clients) in {elapsed:.1f} s; RSS after "
        f"{WARMUP} requests {baseline:.0f} MB, peak after {peak_after:.0f} MB, growth {growth:+.1f} MB "
        f"(bound {RSS_GROWTH_BOUND_MB:.0f} MB); samples: " + ", ".join(f"{n}:{rss:.0f}" for n, rss in samples)
    )
    assert growth < RSS_GROWTH_BOUND_MB
    record_reliability(
        "Soak: mixed valid and hostile requests",
        tried=f"{REQUESTS} requests from {CONCURRENCY} clients cycling {len(mix)} kinds: text, token ids, "
        "images, audio, random bytes, truncated PNG, decompression bomb, bad base64, over-long text, "
        "unknown model, empty input, bad options",
        faults="hostile inputs interleaved with valid ones on one `d2v serve` process",
        outcome="every answer the expected status (no 5xx); the server stayed up",
        figures=f"RSS {baseline:.0f} MB after {WARMUP} requests, peak {peak_after:.0f} MB after: "
        f"{growth:+.1f} MB (bound {RSS_GROWTH_BOUND_MB:.0f} MB); {REQUESTS / elapsed:.0f} req/s",
    )
