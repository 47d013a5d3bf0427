"""The blocking client against an in-memory server (httpx.MockTransport): decoding, chunking, options."""

from __future__ import annotations

import io
import json
import wave

import httpx
import numpy as np
import pytest

from d2v_client import BadRequestError, Client, RetryPolicy
from d2v_client._encode import sniff_mime


def make_client(server, **kw) -> Client:
    return Client("http://d2v.test", transport=httpx.MockTransport(server), **kw)


def test_embed_text_decodes_base64_in_order(fake_server):
    texts = ["a", "bb", "ccc"]
    with make_client(fake_server) as client:
        out = client.embed_text(texts)
    assert out.dtype == np.float32 and out.shape == (3, fake_server.dims)
    np.testing.assert_array_equal(out, np.stack([fake_server.vector(t) for t in texts]))
    body = fake_server.bodies[0]
    assert body["encoding_format"] == "base64" and body["input"] == texts
    assert fake_server.requests[-1].url.path == "/v1/embed/text"


def test_single_string_and_float_format(fake_server):
    with make_client(fake_server) as client:
        one = client.embed("text", "solo", encoding_format="float")
    np.testing.assert_allclose(one[0], fake_server.vector("solo"))


def test_options_are_sent_only_when_set(fake_server):
    with make_client(fake_server) as client:
        client.embed_text(["x"], model="tiny-text", pooling="cls", normalize=False, dimensions=4, layers=2)
        client.embed_text(["y"])
    first, second = fake_server.bodies
    assert first == {
        "input": ["x"],
        "model": "tiny-text",
        "pooling": "cls",
        "normalize": False,
        "dimensions": 4,
        "layers": 2,
        "encoding_format": "base64",
    }
    assert set(second) == {"input", "encoding_format"}


def test_token_level_returns_one_array_per_input(fake_server):
    with make_client(fake_server) as client:
        toks = client.embed_text(["a", "bb", "ccc", "dddd", "e"], pooling="none")
    assert isinstance(toks, list) and len(toks) == 5
    assert [t.shape for t in toks] == [(2, 8), (3, 8), (1, 8), (2, 8), (2, 8)]
    np.testing.assert_array_equal(toks[1][0], fake_server.vector("bb"))


@pytest.mark.parametrize("max_batch, n, expected", [(4, 10, [4, 4, 2]), (3, 3, [3]), (100, 7, [7])])
def test_chunks_to_max_batch_from_info(fake_server, max_batch, n, expected):
    fake_server.limits = {"max_batch_size": max_batch}
    texts = [f"t{i}" for i in range(n)]
    with make_client(fake_server, max_concurrency=3) as client:
        out = client.embed_text(texts)
    assert sorted(len(b["input"]) for b in fake_server.bodies) == sorted(expected)
    np.testing.assert_array_equal(out, np.stack([fake_server.vector(t) for t in texts]))  # order kept


def test_chunks_to_payload_limit(fake_server):
    fake_server.limits = {"max_batch_size": 1000, "max_payload_bytes": 1024 + 250}
    texts = ["x" * 100 for _ in range(5)]  # ~104 bytes each on the wire: two per request
    with make_client(fake_server) as client:
        out = client.embed_text(texts)
    assert [len(b["input"]) for b in fake_server.bodies] == [2, 2, 1]
    assert out.shape == (5, 8)


def test_per_model_limits_override_server_limits(fake_server):
    fake_server.limits = {"max_batch_size": 100}
    info = fake_server.info()
    info["models"][0]["limits"] = {"max_batch_size": 2}
    fake_server.info = lambda: info
    with make_client(fake_server) as client:
        client.embed_text(["a", "b", "c"])
    assert [len(b["input"]) for b in fake_server.bodies] == [2, 1]


def test_info_is_fetched_once(fake_server):
    with make_client(fake_server) as client:
        client.embed_text(["a"])
        client.embed_text(["b"])
        assert client.info().limits.max_batch_size == 4
        assert client.info().model_for("image").name == "tiny-image"
    assert [r.url.path for r in fake_server.requests].count("/info") == 1


def test_missing_info_falls_back_to_defaults():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/info":
            return httpx.Response(404, json={"detail": "Not Found"})
        n = len(json.loads(request.content)["input"])
        return httpx.Response(200, json={"data": [{"index": i, "embedding": [1.0, 0.0]} for i in range(n)]})

    with make_client(handler) as client:
        out = client.embed_text([str(i) for i in range(70)])
    assert out.shape == (70, 2) and calls.count("/v1/embed/text") == 2  # default max batch 64


def test_empty_input_makes_no_embed_request(fake_server):
    with make_client(fake_server) as client:
        out = client.embed_text([])
    assert out.shape == (0, 8)
    assert all(r.url.path == "/info" for r in fake_server.requests)


def test_images_travel_as_data_uris(fake_server, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    path = tmp_path / "a.png"
    path.write_bytes(png)
    with make_client(fake_server) as client:
        out = client.embed_image([path, str(path), png])
    uris = fake_server.bodies[0]["input"]
    assert out.shape == (3, 8) and len(set(uris)) == 1
    assert uris[0].startswith("data:image/png;base64,")


def test_pil_image_and_array_inputs(fake_server):
    Image = pytest.importorskip("PIL.Image")
    img = Image.new("RGB", (5, 4), (255, 0, 0))
    with make_client(fake_server) as client:
        out = client.embed_image([img, np.zeros((4, 5, 3), dtype=np.uint8)])
    assert out.shape == (2, 8)
    assert all(u.startswith("data:image/png;base64,") for u in fake_server.bodies[0]["input"])


def test_audio_array_is_sent_as_float_wav(fake_server):
    samples = np.sin(np.linspace(0, 10, 1600)).astype(np.float32)
    with make_client(fake_server) as client:
        client.embed_audio((samples, 16000))
    uri = fake_server.bodies[0]["input"][0]
    assert uri.startswith("data:audio/wav;base64,")
    import base64

    raw = base64.b64decode(uri.split(",", 1)[1])
    assert sniff_mime(raw) == "audio/wav"
    sf = pytest.importorskip("soundfile")
    decoded, rate = sf.read(io.BytesIO(raw), dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(decoded, samples)


def test_wav_file_path_is_read(fake_server, tmp_path):
    path = tmp_path / "a.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\x00\x01" * 800)
    with make_client(fake_server) as client:
        assert client.embed_audio(str(path)).shape == (1, 8)


def test_bad_inputs_fail_locally(fake_server, tmp_path):
    with make_client(fake_server) as client:
        with pytest.raises(BadRequestError, match="text inputs must be str"):
            client.embed_text(["ok", 3])
        with pytest.raises(BadRequestError, match="cannot read"):
            client.embed_image([tmp_path / "missing.png"])
        with pytest.raises(BadRequestError, match="unsupported audio input"):
            client.embed_audio([1.5])
    assert not fake_server.bodies


def test_multipart_upload(tmp_path):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json={"models": [], "limits": {"max_batch_size": 2}})
        seen.setdefault("bodies", []).append(request.content)
        seen["ctype"] = request.headers["content-type"]
        n = request.content.count(b'name="file"')
        return httpx.Response(200, json={"data": [{"index": i, "embedding": [float(i)]} for i in range(n)]})

    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n1234")
    with make_client(handler, upload="multipart") as client:
        out = client.embed_image([path, path, path], normalize=False)
    assert seen["ctype"].startswith("multipart/form-data") and len(seen["bodies"]) == 2
    assert b'filename="x.png"' in seen["bodies"][0] and b"image/png" in seen["bodies"][0]
    assert b'name="normalize"\r\n\r\nfalse' in seen["bodies"][0]
    assert out[:, 0].tolist() == [0.0, 1.0, 0.0]


def test_wrong_count_in_response_is_an_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"data": []})

    with make_client(handler, retry=RetryPolicy(max_retries=0)) as client, pytest.raises(Exception, match="expected 1"):
        client.embed_text(["a"])
