"""The SDK and ``d2v embed`` against the real server app (ONNX Runtime on tiny models) under uvicorn."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from d2v_client import AsyncClient, BadRequestError, Client, OverloadedError, RetryPolicy


def test_sdk_all_modalities(live_gateway, testkit):
    with Client(live_gateway) as client:
        assert {m.modality for m in client.info().models} == {"text", "image", "audio"}
        text = client.embed_text(["hello world", "embedding servers"])
        image = client.embed_image([testkit.png_bytes(seed=1), testkit.png_bytes(seed=2)])
        audio = client.embed_audio([testkit.wav_bytes(seed=1)])
        tokens = client.embed_text(["hello world"], pooling="none")
        short = client.embed_text(["hello"], dimensions=4)
    for out, n in ((text, 2), (image, 2), (audio, 1)):
        assert out.shape == (n, testkit.DIM) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert tokens[0].ndim == 2 and tokens[0].shape[1] == testkit.DIM
    assert short.shape == (1, 4) and np.isclose(np.linalg.norm(short), 1.0, rtol=1e-5)


def test_sdk_chunking_matches_single_requests(live_gateway):
    texts = [f"sentence number {i}" for i in range(75)]  # over the models' 32-item batch limit
    with Client(live_gateway, max_concurrency=3) as client:
        chunked = client.embed_text(texts)
        singles = np.concatenate([client.embed_text([t]) for t in texts[:5]])
    assert chunked.shape == (75, 16)
    np.testing.assert_allclose(chunked[:5], singles, rtol=1e-5, atol=1e-6)


def test_sdk_multipart_and_async(live_gateway, testkit, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(testkit.png_bytes(seed=3))
    with Client(live_gateway, upload="multipart") as client:
        multipart = client.embed_image([path])
    with Client(live_gateway) as client:
        base64_ = client.embed_image([path])

    async def run():
        async with AsyncClient(live_gateway) as client:
            return await client.embed_image([path]), await client.embed_audio([testkit.wav_bytes()])

    aimg, aaud = asyncio.run(run())
    np.testing.assert_allclose(multipart, base64_, rtol=1e-5)
    np.testing.assert_allclose(aimg, base64_, rtol=1e-5)
    assert aaud.shape == (1, 16)


def test_sdk_surfaces_server_message(live_gateway):
    with Client(live_gateway) as client, pytest.raises(BadRequestError) as info:
        client.embed_image([b"definitely not an image"])
    assert info.value.status == 415 and "image" in info.value.message


@pytest.fixture
def overloaded_gateway(testkit, model_store):
    """A server whose engine answers ``Overloaded`` (-> 429 + Retry-After) for its first two batches."""
    from d2v.core.errors import Overloaded
    from d2v.core.manifest import ModelManifest
    from d2v.runtime.engines.fake import FakeEngine
    from d2v.server.app import create_app

    class Flaky(FakeEngine):
        failures = 0

        def _run_sync(self, inputs, outputs):
            if self.failures > 0:
                self.failures -= 1
                raise Overloaded("engine queue is full", retry_after=2)
            return super()._run_sync(inputs, outputs)

    engine = Flaky(ModelManifest.load(model_store / "tiny-text"), model_store / "tiny-text")
    with testkit.live_server(create_app(testkit.make_settings(model_store), engines=[engine])) as (url, _):
        yield url, engine


def test_sdk_retries_a_server_forced_to_429(overloaded_gateway):
    url, engine = overloaded_gateway
    sleeps: list[float] = []
    engine.failures = 2
    with Client(url, sleep=sleeps.append) as client:
        out = client.embed_text(["hello"])
    assert out.shape == (1, 16) and len(sleeps) == 2 and all(s >= 2.0 for s in sleeps)  # Retry-After honoured
    engine.failures = 10
    client = Client(url, sleep=sleeps.append, retry=RetryPolicy(max_retries=1))
    with client, pytest.raises(OverloadedError, match="engine queue is full") as info:
        client.embed_text(["hello"])
    assert info.value.status == 429 and info.value.retry_after == 2.0


def test_cli_embed(live_gateway, testkit, tmp_path, capsys):
    from d2v.cli import main

    assert main(["embed", "--server", live_gateway, "text", "hello", "world"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["input"] for x in lines] == ["hello", "world"] and len(lines[0]["embedding"]) == 16
    img = tmp_path / "a.png"
    img.write_bytes(testkit.png_bytes())
    wav = tmp_path / "a.wav"
    wav.write_bytes(testkit.wav_bytes())
    out = tmp_path / "v.npy"
    assert main(["embed", "--server", live_gateway, "--image", str(img), "--image", str(img), "-o", str(out)]) == 0
    assert np.load(out).shape == (2, 16)
    assert main(["embed", "--server", live_gateway, "--audio", str(wav), "--dimensions", "8"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == 8
    assert main(["embed", "--server", live_gateway, "--image", str(tmp_path / "missing.png")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_embed_unreachable_server(capsys):
    from d2v.cli import main

    start = time.monotonic()
    code = main(["embed", "--server", "http://127.0.0.1:9", "--timeout", "1", "--retries", "0", "hi"])
    assert code != 0 and "127.0.0.1:9" in capsys.readouterr().err
    assert time.monotonic() - start < 10
