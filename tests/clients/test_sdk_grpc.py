"""``GrpcClient`` / ``AsyncGrpcClient`` against the real gateway's gRPC front end (tiny models, real sockets): the
same vectors as the HTTP client for every modality and option, chunking by the model's ``max_batch_size``,
streaming, retries honouring ``retry-after``, typed errors, and the default targets from the environment."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from d2v_client import (
    AsyncGrpcClient,
    AuthenticationError,
    BadRequestError,
    Client,
    GrpcClient,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RetryPolicy,
)

KEY = "sdk-key"


class GatedEngine:
    """A real engine that can be held closed, so requests stay queued (and the queue can be filled)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.busy = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def embed(self, inputs, outputs):
        self.busy += 1
        self.calls += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.002)
            return await self.inner.embed(inputs, outputs)
        finally:
            self.busy -= 1


@pytest.fixture(scope="module")
def gateway(testkit, model_store):
    from d2v.server.app import build_engines, create_app

    port = testkit.free_port()
    settings = testkit.make_settings(
        model_store,
        grpc_port=port,
        api_keys=KEY,
        max_items_per_request=3,
        max_queue=6,
        retry_after_s=2,
        max_body_bytes=100_000,
    )
    engines = {e.manifest.name: GatedEngine(e) for e in build_engines(settings)}
    with testkit.live_server(create_app(settings, engines=list(engines.values()))) as (url, _):
        yield SimpleNamespace(grpc=f"127.0.0.1:{port}", http=url, engines=engines)


def _inputs(testkit):
    return {
        "text": ["hello", "grpc and http agree", "x", "four", "five items"],
        "image": [testkit.png_bytes(seed=1), testkit.png_bytes(24, 40, seed=2)],
        "audio": [testkit.wav_bytes(0.4, seed=1), (np.zeros(3200, dtype=np.float32), 16000)],
    }


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_grpc_client_equals_http_client(gateway, testkit, streaming):
    inputs = _inputs(testkit)
    option_sets = [{}, {"normalize": False}, {"dimensions": 8}, {"pooling": "none"}]
    with Client(gateway.http, api_key=KEY) as http, GrpcClient(gateway.grpc, api_key=KEY, streaming=streaming) as rpc:
        assert rpc.is_gateway() and rpc.ready()
        assert sorted(m.name for m in rpc.models()) == ["tiny-audio", "tiny-image", "tiny-text"]
        for modality, items in inputs.items():
            for options in option_sets + ([{"pooling": "cls"}] if modality != "audio" else []):
                want = http.embed(modality, items, **options)
                got = rpc.embed(modality, items, **options)
                if options.get("pooling") == "none":
                    assert [g.shape for g in got] == [w.shape for w in want]
                    for g, w in zip(got, want, strict=True):
                        np.testing.assert_allclose(g, w, atol=1e-6)
                else:
                    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{modality} {options}")
        np.testing.assert_allclose(rpc.embed_text(["a b"], layers=3), http.embed_text(["a b"], layers=3), atol=1e-6)
        np.testing.assert_allclose(rpc.embed_image(inputs["image"][:1]), http.embed_image(inputs["image"][:1]))


def test_async_grpc_client_and_chunking(gateway, testkit):
    inputs = _inputs(testkit)
    engine = gateway.engines["tiny-text"]

    async def run():
        async with AsyncGrpcClient(gateway.grpc, api_key=KEY, max_concurrency=1) as client:
            calls = engine.calls
            text = await client.embed_text(inputs["text"])  # 5 items, max_batch_size 3: two calls
            chunked_calls = engine.calls - calls
            audio = await client.embed_audio(inputs["audio"], pooling="none")
            streamed = await AsyncGrpcClient(gateway.grpc, api_key=KEY, streaming=True).embed_text(inputs["text"])
            return text, chunked_calls, audio, streamed

    text, chunked_calls, audio, streamed = asyncio.run(run())
    with Client(gateway.http, api_key=KEY) as http:
        np.testing.assert_allclose(text, http.embed_text(inputs["text"]), atol=1e-6)
    assert chunked_calls == 2 and text.shape == (5, 16)
    assert [a.shape[1] for a in audio] == [16, 16] and audio[0].shape[0] != audio[1].shape[0]
    np.testing.assert_allclose(streamed, text, atol=1e-6)


def _fill_queue(gateway) -> list[threading.Thread]:
    """Hold the text engine and fill its queue (max_queue 6) with two 3-item requests behind a held one."""
    engine = gateway.engines["tiny-text"]
    engine.gate.clear()
    threads = [threading.Thread(target=_embed, args=(gateway, n)) for n in (1, 3, 3)]
    threads[0].start()
    _until(lambda: engine.busy == 1)
    for t in threads[1:]:
        t.start()
    _until(lambda: _queue_depth(gateway) == 6)
    return threads


def _embed(gateway, n: int) -> None:
    with GrpcClient(gateway.grpc, api_key=KEY) as client:
        client.embed_text(["q"] * n)


def _queue_depth(gateway) -> int:
    import httpx

    text = httpx.get(f"{gateway.http}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith('d2v_queue_depth{model="tiny-text"}'))
    return int(float(line.split()[-1]))


def _until(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_overload_is_retried_after_the_servers_retry_after(gateway):
    engine = gateway.engines["tiny-text"]
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the retry's wait: let the engine go and the queue drain
        slept.append(seconds)
        engine.gate.set()
        _until(lambda: _queue_depth(gateway) == 0)

    threads = _fill_queue(gateway)
    try:
        with GrpcClient(gateway.grpc, api_key=KEY, sleep=sleep) as client:
            out = client.embed_text(["over the limit"])
    finally:
        engine.gate.set()
        for t in threads:
            t.join()
    assert out.shape == (1, 16)
    assert len(slept) == 1 and slept[0] >= 2.0  # waited the server's retry-after (retry_after_s=2)

    threads = _fill_queue(gateway)
    try:
        client = GrpcClient(gateway.grpc, api_key=KEY, retry=RetryPolicy(max_retries=0))
        with client, pytest.raises(OverloadedError) as err:
            client.embed_text(["no retries"])
    finally:
        engine.gate.set()
        for t in threads:
            t.join()
    assert err.value.retry_after == 2.0 and err.value.code == "overloaded"


def test_typed_errors(gateway, testkit):
    with GrpcClient(gateway.grpc, api_key=KEY, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(BadRequestError, match="input\\[0\\]"):
            client.embed_image([b"definitely not an image"])
        with pytest.raises(NotFoundError):
            client.embed_text(["x"], model="no-such-model")
        with pytest.raises(BadRequestError, match="cls"):
            client.embed_audio([testkit.wav_bytes(0.2)], pooling="cls")
        with pytest.raises(PayloadTooLargeError, match="max_body_bytes"):
            client.embed_image([testkit.png_bytes(220, 220, seed=3)])  # ~145 kB: over max_body_bytes (100 kB)
    with GrpcClient(gateway.grpc, api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.embed_text(["x"])


def test_truncate_option_over_http_and_grpc(gateway):
    """``truncate=False`` refuses an over-long text with the server's 413 on both protocols; the default
    truncates, and the same text then embeds identically over HTTP and gRPC."""
    from d2v_client import Client

    long_text = "many words " * 600  # far over the tiny model's token limit
    with Client(gateway.http, api_key=KEY) as http, GrpcClient(gateway.grpc, api_key=KEY) as grpc_client:
        for client in (http, grpc_client):
            with pytest.raises(PayloadTooLargeError, match="tokens"):
                client.embed_text([long_text], truncate=False)
        np.testing.assert_allclose(
            grpc_client.embed_text([long_text], truncate=True), http.embed_text([long_text]), atol=1e-6
        )


def test_default_targets_follow_the_environment(monkeypatch, gateway):
    monkeypatch.setenv("D2V_GRPC_URL", gateway.grpc)
    monkeypatch.setenv("D2V_SERVER_URL", gateway.http)
    with GrpcClient(api_key=KEY) as rpc, Client(api_key=KEY) as http:
        assert rpc.target == gateway.grpc
        np.testing.assert_allclose(rpc.embed_text("env"), http.embed_text("env"), atol=1e-6)
    monkeypatch.delenv("D2V_GRPC_URL")
    monkeypatch.delenv("D2V_SERVER_URL")
    with GrpcClient() as rpc, Client() as http:
        assert rpc.target == "127.0.0.1:8081" and str(http._transport.http.base_url) == "http://127.0.0.1:8080"


def test_cli_embed_grpc(gateway, capsys):
    from d2v.cli import main

    assert main(["embed", "--grpc", "--grpc-url", gateway.grpc, "--api-key", KEY, "hello", "world"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    with GrpcClient(gateway.grpc, api_key=KEY) as client:
        want = client.embed_text(["hello", "world"])
    np.testing.assert_allclose([x["embedding"] for x in lines], want, atol=1e-6)
    assert main(["embed", "--grpc", "--grpc-url", gateway.grpc, "hello"]) == 3  # no key: Unauthorized


def test_extract_over_grpc_stream_equals_http(gateway, testkit, tmp_path):
    import pyarrow.dataset as ds

    from d2v.cli import main

    manifest = tmp_path / "inputs.jsonl"
    image = tmp_path / "a.png"
    image.write_bytes(testkit.png_bytes(seed=4))
    rows = [{"id": f"t{i}", "text": f"extract row {i}"} for i in range(7)] + [{"id": "img", "path": str(image)}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = ["--engine", "server", "--api-key", KEY, "--batch-size", "5", "--no-plot", "--no-progress"]
    out_g, out_h = tmp_path / "grpc", tmp_path / "http"
    assert main(["extract", str(manifest), str(out_g), *common, "--protocol", "grpc", "--grpc-url", gateway.grpc]) == 0
    assert main(["extract", str(manifest), str(out_h), *common, "--server", gateway.http]) == 0
    got = ds.dataset(out_g / "embeddings").to_table().sort_by("id")
    want = ds.dataset(out_h / "embeddings").to_table().sort_by("id")
    assert got.column("id").to_pylist() == want.column("id").to_pylist() == sorted(r["id"] for r in rows)
    np.testing.assert_allclose(
        np.stack(got.column("embedding").to_pylist()), np.stack(want.column("embedding").to_pylist()), atol=1e-6
    )
