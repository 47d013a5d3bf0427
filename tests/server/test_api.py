"""The HTTP API on the real ONNX Runtime engine and tiny models: every endpoint and option, three modalities."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from testkit import DIM, TEXT_MAX_LENGTH, png_bytes, wav_bytes

pytestmark = pytest.mark.anyio


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vec(item: dict) -> np.ndarray:
    emb = item["embedding"]
    if isinstance(emb, str):
        return np.frombuffer(base64.b64decode(emb), dtype="<f4").reshape(item.get("shape", [-1]))
    return np.asarray(emb, dtype=np.float32)


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# ------------------------------------------------------------------------------------------- ops
async def test_probes_models_info_metrics(client):
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {(m["id"], m["modality"], m["dim"]) for m in models["data"]} == {
        ("tiny-text", "text", DIM),
        ("tiny-audio", "audio", DIM),
        ("tiny-image", "image", DIM),
    }
    info = (await client.get("/info")).json()
    by_name = {m["name"]: m for m in info["models"]}
    assert by_name["tiny-text"]["limits"]["max_input_tokens"] == TEXT_MAX_LENGTH
    assert by_name["tiny-audio"]["limits"]["max_audio_seconds"] == 4.0
    assert by_name["tiny-image"]["limits"]["max_image_pixels"] > 0
    assert by_name["tiny-audio"]["poolings"] == ["mean", "none"]
    assert info["limits"]["max_body_bytes"] > 0 and info["limits"]["max_items_per_request"] > 0
    text = (await client.get("/metrics")).text
    assert "d2v_requests_total" in text and 'route="/info"' in text


# ---------------------------------------------------------------------------------------- openai
async def test_openai_text_float_and_base64_agree(client):
    body = {"model": "tiny-text", "input": ["hello world", "the lazy dog"]}
    floats = (await client.post("/v1/embeddings", json=body)).json()
    b64s = (await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    assert floats["object"] == "list" and floats["model"] == "tiny-text"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    for f, b in zip(floats["data"], b64s["data"], strict=True):
        assert isinstance(b["embedding"], str)
        np.testing.assert_allclose(vec(f), vec(b), rtol=1e-6)
        assert abs(np.linalg.norm(vec(f)) - 1) < 1e-5
    usage = floats["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 4 and usage["items"] == 2


async def test_openai_single_string_token_ids_and_dimensions(client):
    one = (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "hello"})).json()
    assert len(one["data"]) == 1 and len(one["data"][0]["embedding"]) == DIM
    ids = (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": [0, 40, 41, 2]})).json()
    assert ids["usage"]["prompt_tokens"] == 4
    many = (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": [[0, 40, 2], [0, 2]]})).json()
    assert many["usage"]["prompt_tokens"] == 5 and len(many["data"]) == 2
    cut = (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "hello", "dimensions": 4})).json()
    short = vec(cut["data"][0])
    assert short.shape == (4,) and abs(np.linalg.norm(short) - 1) < 1e-5
    full = vec(one["data"][0])
    np.testing.assert_allclose(short, full[:4] / np.linalg.norm(full[:4]), rtol=1e-5)
    too_big = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": "x", "dimensions": DIM + 1})
    assert_error(too_big, 400)


async def test_openai_image_and_audio_items(client):
    img = {"type": "image", "data": "data:image/png;base64," + b64(png_bytes())}
    r = await client.post("/v1/embeddings", json={"model": "tiny-image", "input": [img, b64(png_bytes(seed=1))]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2 and r.json()["usage"]["items"] == 2
    audio = {"model": "tiny-audio", "modality": "audio", "input": [b64(wav_bytes())], "encoding_format": "base64"}
    r = await client.post("/v1/embeddings", json=audio)
    assert r.status_code == 200, r.text
    assert vec(r.json()["data"][0]).shape == (DIM,)
    assert r.json()["usage"]["prompt_tokens"] == 25  # 0.5 s at 16 kHz / 320-sample frames
    wrong = await client.post("/v1/embeddings", json={"model": "tiny-image", "input": [{"type": "audio", "data": "x"}]})
    assert_error(wrong, 400)
    mismatch = await client.post("/v1/embeddings", json={"model": "tiny-text", "modality": "image", "input": "x"})
    assert_error(mismatch, 400)


async def test_openai_model_is_optional_when_one_model_serves_the_modality(client):
    named = (await client.post("/v1/embeddings", json={"model": "tiny-text", "input": ["hello"]})).json()
    unnamed = await client.post("/v1/embeddings", json={"input": ["hello"]})
    assert unnamed.status_code == 200, unnamed.text
    assert unnamed.json()["model"] == "tiny-text"
    np.testing.assert_allclose(vec(unnamed.json()["data"][0]), vec(named["data"][0]), rtol=1e-6)
    img = {"type": "image", "data": b64(png_bytes())}
    r = await client.post("/v1/embeddings", json={"input": [img]})
    assert r.status_code == 200 and r.json()["model"] == "tiny-image", r.text
    mixed = await client.post("/v1/embeddings", json={"input": ["text", img]})
    assert_error(mixed, 400)
    empty = assert_error(await client.post("/v1/embeddings", json={"input": []}), 422)
    assert empty["message"] == "invalid request: input: List should have at least 1 item after validation, not 0"


# ---------------------------------------------------------------------------------------- native
async def test_native_text_options(client):
    url = "/v1/embed/text"
    mean = (await client.post(url, json={"input": ["hello world"]})).json()
    assert mean["model"] == "tiny-text" and mean["pooling"] == "mean" and mean["dim"] == DIM
    cls = (await client.post(url, json={"input": ["hello world"], "pooling": "cls"})).json()
    assert not np.allclose(vec(mean["data"][0]), vec(cls["data"][0]))
    raw = (await client.post(url, json={"input": ["hello world"], "normalize": False})).json()
    assert raw["normalized"] is False and abs(np.linalg.norm(vec(raw["data"][0])) - 1) > 1e-3
    tokens = (await client.post(url, json={"input": ["hello world", "hi"], "pooling": "none"})).json()
    shapes = [d["shape"] for d in tokens["data"]]
    assert shapes[0][0] == tokens["data"][0]["tokens"] and shapes[0][1] == DIM
    assert shapes[0][0] > shapes[1][0]  # trimmed by d2v_token_mask, not padded to the batch
    for item in tokens["data"]:
        assert np.asarray(item["embedding"]).shape == tuple(item["shape"])
    tb64 = await client.post(url, json={"input": ["hello world"], "pooling": "none", "encoding_format": "base64"})
    np.testing.assert_allclose(vec(tb64.json()["data"][0]), np.asarray(tokens["data"][0]["embedding"]), rtol=1e-6)
    k1 = (await client.post(url, json={"input": ["hi"], "layers": 1, "normalize": False})).json()
    k3 = (await client.post(url, json={"input": ["hi"], "layers": 3, "normalize": False})).json()
    np.testing.assert_allclose(vec(k3["data"][0]), 3 * vec(k1["data"][0]), rtol=1e-5)
    assert_error(await client.post(url, json={"input": ["hi"], "layers": 9}), 400)
    dims = (await client.post(url, json={"input": "hi", "dimensions": 8, "encoding_format": "base64"})).json()
    assert vec(dims["data"][0]).shape == (8,) and dims["dim"] == 8


async def test_native_image_json_and_multipart(client):
    data = [b64(png_bytes()), "data:image/png;base64," + b64(png_bytes(seed=3))]
    j = await client.post("/v1/embed/image", json={"input": data, "pooling": "cls"})
    assert j.status_code == 200, j.text
    files = [("file", ("a.png", png_bytes(), "image/png")), ("file", ("b.png", png_bytes(seed=3), "image/png"))]
    m = await client.post("/v1/embed/image", files=files, data={"pooling": "cls", "model": "tiny-image"})
    assert m.status_code == 200, m.text
    for a, b in zip(j.json()["data"], m.json()["data"], strict=True):
        np.testing.assert_allclose(vec(a), vec(b), rtol=1e-5)
    tok = (await client.post("/v1/embed/image", files=files[:1], data={"pooling": "none"})).json()
    assert tok["data"][0]["shape"] == [16, DIM]  # (32 / 8)^2 patches


async def test_native_audio_json_and_multipart(client):
    clips = [wav_bytes(0.5), wav_bytes(1.0, rate=8000, seed=1)]  # resampled server-side
    j = await client.post("/v1/embed/audio", json={"input": [b64(c) for c in clips], "pooling": "none"})
    assert j.status_code == 200, j.text
    assert [d["shape"][0] for d in j.json()["data"]] == [25, 50]
    files = [("file", (f"{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]
    m = await client.post("/v1/embed/audio", files=files)
    assert m.status_code == 200, m.text
    assert len(m.json()["data"]) == 2 and m.json()["pooling"] == "mean"
    cls = await client.post("/v1/embed/audio", json={"input": [b64(clips[0])], "pooling": "cls"})
    assert "cls" in assert_error(cls, 400)["message"]


# ---------------------------------------------------------------------------------------- errors
async def test_bad_input_paths_use_the_error_body(client):
    assert_error(await client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model_not_found")
    assert_error(await client.post("/v1/embed/image", json={"model": "nope", "input": ["x"]}), 404)
    assert_error(await client.get("/v1/nothing"), 404, "not_found")
    assert_error(await client.get("/v1/embeddings"), 405, "method_not_allowed")
    bad_json = await client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad_json, 400, "invalid_json")
    native_bad_json = await client.post("/v1/embed/text", content=b"[", headers={"content-type": "application/json"})
    assert_error(native_bad_json, 400, "invalid_json")
    assert_error(await client.post("/v1/embeddings", json={"model": "tiny-text"}), 422, "invalid_request")  # no input
    assert_error(await client.post("/v1/embed/text", json={"input": ["x"], "pooling": "max"}), 422)
    assert_error(await client.post("/v1/embed/text", json={"input": ["x"], "bogus": 1}), 422)
    assert_error(await client.post("/v1/embed/video", json={"input": ["x"]}), 422)
    assert_error(await client.post("/v1/embed/text", content=b"hi", headers={"content-type": "text/plain"}), 415)
    files = [("file", ("a.txt", b"hello", "text/plain"))]
    assert_error(await client.post("/v1/embed/image", files=files), 415)
    assert_error(await client.post("/v1/embed/text", files=[("file", ("a", b"x", "text/plain"))]), 415)
    bad_uri = await client.post("/v1/embed/image", json={"input": ["data:audio/wav;base64,AAAA"]})
    assert_error(bad_uri, 415)
    assert_error(await client.post("/v1/embed/image", json={"input": ["%%%not base64"]}), 400)
    undecodable = await client.post("/v1/embed/image", json={"input": [b64(b"not an image at all")]})
    assert "input[0]" in assert_error(undecodable, 415)["message"]
    empty_text = assert_error(await client.post("/v1/embed/text", json={"input": ["a", ""]}), 422)
    assert empty_text["message"] == "invalid request: input.1: String should have at least 1 character"
    assert_error(await client.post("/v1/embed/text", json={"input": []}), 422)
    assert_error(await client.post("/v1/embeddings", json={"model": "tiny-text", "input": []}), 422)
    url = await client.post("/v1/embed/image", json={"input": ["https://example.com/cat.png"]})
    assert "disabled" in assert_error(url, 400)["message"]
    bad_ids = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": [0, 99999]})
    assert_error(bad_ids, 400)


async def test_text_truncation_default_and_opt_out(client):
    long_text = "hello world " * 200
    ok = (await client.post("/v1/embed/text", json={"input": [long_text]})).json()
    assert ok["usage"]["prompt_tokens"] == TEXT_MAX_LENGTH
    refused = await client.post("/v1/embed/text", json={"input": [long_text], "truncate": False})
    assert "input[0]" in assert_error(refused, 413)["message"]
    refused = await client.post("/v1/embeddings", json={"model": "tiny-text", "input": long_text, "truncate": False})
    assert_error(refused, 413)
