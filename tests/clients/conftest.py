"""Fixtures for the SDK and extraction tests: a scriptable in-memory server behind ``httpx.MockTransport``."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

DIMS = 8


def vector_for(item: str, dims: int = DIMS) -> np.ndarray:
    """The deterministic vector the fake server returns for one wire-form input."""
    seed = int.from_bytes(hashlib.sha256(item.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


@dataclass
class FakeServer:
    """Answers /info and /v1/embed/{modality}; ``script`` holds canned responses consumed before normal ones."""

    limits: dict[str, Any] = field(default_factory=lambda: {"max_batch_size": 4, "max_payload_bytes": 1 << 20})
    dims: int = DIMS
    script: list[httpx.Response] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    on_request: Callable[[httpx.Request], None] | None = None

    vector = staticmethod(vector_for)

    @staticmethod
    def error(status: int, message: str = "nope", retry_after: str | None = None) -> httpx.Response:
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        body = {"error": {"message": message, "type": "some_type", "code": f"c{status}"}}
        return httpx.Response(status, json=body, headers=headers)

    def info(self) -> dict[str, Any]:
        models = [{"name": f"tiny-{m}", "modality": m, "dims": self.dims} for m in ("text", "image", "audio")]
        return {"models": models, "limits": self.limits}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.on_request:
            self.on_request(request)
        if request.url.path == "/info":
            return httpx.Response(200, json=self.info())
        if self.script:
            return self.script.pop(0)
        if request.url.path.startswith("/v1/embed/"):
            body = json.loads(request.content)
            self.bodies.append(body)
            data = []
            for i, item in enumerate(body["input"]):
                vec = vector_for(item, self.dims)
                if body.get("pooling") == "none":
                    toks = np.stack([vec] * (1 + len(item) % 3))
                    emb = base64.b64encode(toks.astype("<f4").tobytes()).decode()
                    data.append({"index": i, "embedding": emb, "shape": list(toks.shape)})
                elif body.get("encoding_format") == "float":
                    data.append({"index": i, "embedding": vec.tolist()})
                else:
                    data.append({"index": i, "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()})
            data.reverse()  # the client must order by index
            return httpx.Response(200, json={"object": "list", "model": body.get("model", "m"), "data": data})
        return httpx.Response(
            404, json={"error": {"message": "no route", "type": "invalid_request_error", "code": "nf"}}
        )


@pytest.fixture
def fake_server() -> FakeServer:
    return FakeServer()


class Sleeps(list):
    """A recording sleep function (sync and async) so retry tests take no real time."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


# ------------------------------------------------------------------------------------- the real server
@pytest.fixture(scope="session")
def testkit():
    pytest.importorskip("d2v.server.app")
    pytest.importorskip("onnxruntime")
    import testkit as kit

    return kit


@pytest.fixture(scope="session")
def model_store(testkit, tmp_path_factory):
    """A model store holding tiny-text, tiny-image and tiny-audio."""
    root = tmp_path_factory.mktemp("store")
    for modality in ("text", "image", "audio"):
        testkit.write_model(root, modality)
    return root


@pytest.fixture(scope="session")
def live_gateway(testkit, model_store):
    """The real server app (ONNX Runtime on the tiny models) under uvicorn on 127.0.0.1:<free port>."""
    from d2v.server.app import create_app

    with testkit.live_server(create_app(testkit.make_settings(model_store))) as (url, _server):
        yield url
