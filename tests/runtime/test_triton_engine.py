"""Triton engine: error mapping (unit), recovery after Triton comes back (a stub at the tritonclient
boundary), and the real tritonclient against a port where no Triton listens. Real-Triton end-to-end
tests live with the repository generator (marker ``triton``)."""

from __future__ import annotations

import pytest
from testkit import asgi_client, free_port, make_settings
from tritonclient.utils import InferenceServerException

from d2v.core.errors import InternalError, InvalidInput, Overloaded, Unavailable
from d2v.core.manifest import ModelManifest
from d2v.runtime.engines.fake import FakeEngine
from d2v.runtime.engines.triton import TritonEngine, map_triton_error
from d2v.server.app import create_app

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", Overloaded),
        ("503", "Exceeds maximum queue size", Overloaded),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", Unavailable),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", Unavailable),
        ("400", "Request for unknown model: 'x' is not found", Unavailable),
        ("StatusCode.INVALID_ARGUMENT", "cannot decode image", InvalidInput),
        ("500", "segfault in backend", InternalError),
    ],
)
def test_error_mapping(status, message, expected):
    error = map_triton_error(status, message, model="m", url="u", retry_after=2.0)
    assert type(error) is expected
    if expected is Overloaded:
        assert error.retry_after == 2.0
    if expected is InternalError:
        assert "segfault" not in error.message  # internals stay in the logs


class StubTriton:
    """Stands in for ``tritonclient.grpc.aio``; ``state`` is what Triton is doing right now."""

    def __init__(self, engine: FakeEngine) -> None:
        self.state = "up"
        self.engine = engine
        self.clients = 0
        self.seen_models: list[str] = []
        stub = self

        class InferInput:
            def __init__(self, name, shape, datatype):
                self.name, self.shape, self.datatype = name, shape, datatype

            def set_data_from_numpy(self, array):
                self.array = array

        class InferRequestedOutput:
            def __init__(self, name):
                self.name = name

        class Result:
            def __init__(self, values):
                self.values = values

            def as_numpy(self, name):
                return self.values[name]

        class Client:
            def __init__(self, url, **kwargs):
                stub.clients += 1
                stub.client_kwargs = kwargs

            async def infer(self, model_name, inputs, outputs, **kwargs):
                stub.seen_models.append(model_name)
                if stub.state == "down":
                    raise InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
                if stub.state == "full":
                    raise InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
                arrays = {t.name: t.array for t in inputs}
                return Result(stub.engine._run_sync(arrays, [o.name for o in outputs]))

            async def is_model_ready(self, name):
                if stub.state == "down":
                    raise InferenceServerException("unreachable", "StatusCode.UNAVAILABLE")
                return True

            async def close(self):
                pass

        self.InferInput, self.InferRequestedOutput, self.InferenceServerClient = (
            InferInput,
            InferRequestedOutput,
            Client,
        )


def triton_engine(store, **kwargs) -> tuple[TritonEngine, StubTriton]:
    path = store / "tiny-text"
    manifest = ModelManifest.load(path)
    engine = TritonEngine(manifest, path, retry_after_s=3, **kwargs)
    stub = StubTriton(FakeEngine(manifest, path))
    engine._lib = stub
    return engine, stub


async def test_gateway_maps_triton_states_and_recovers(store):
    engine, stub = triton_engine(store)
    app = create_app(make_settings(store, models=["tiny-text"]), engines=[engine])
    async with asgi_client(app) as client:
        body = {"model": "tiny-text", "input": "hello"}
        assert (await client.post("/v1/embeddings", json=body)).status_code == 200
        assert stub.seen_models[-1] == "tiny-text_encoder"
        stub.state = "full"
        full = await client.post("/v1/embeddings", json=body)
        assert full.status_code == 429 and full.headers["retry-after"] == "3"
        stub.state = "down"
        down = await client.post("/v1/embeddings", json=body)
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable"
        assert (await client.get("/readyz")).status_code == 503
        clients_before = stub.clients
        stub.state = "up"  # Triton is back: no gateway restart needed
        assert (await client.post("/v1/embeddings", json=body)).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert stub.clients > clients_before  # the broken client was replaced
    # a rebuilt gRPC client must not inherit the old channel's reconnect backoff (shared subchannel pool)
    assert ("grpc.use_local_subchannel_pool", 1) in stub.client_kwargs["channel_args"]


async def test_ensemble_mode_sends_raw_bytes(store):
    engine, stub = triton_engine(store, mode="ensemble")
    assert engine.raw_inputs and engine.model_name == "tiny-text"
    captured = {}

    async def infer(model_name, inputs, outputs, **kwargs):
        captured.update({t.name: (t.datatype, t.array) for t in inputs})
        raise InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")

    app = create_app(make_settings(store, models=["tiny-text"]), engines=[engine])
    async with asgi_client(app) as client:
        engine._get_client().infer = infer
        resp = await client.post("/v1/embed/text", json={"input": ["héllo", "x"]})
        assert resp.status_code == 429
    datatype, array = captured["raw_input"]
    assert datatype == "BYTES" and array.shape == (2, 1)
    assert set(array[:, 0]) == {b"x", "héllo".encode()}  # in batcher order (by length)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_real_client_against_no_server(store, protocol):
    path = store / "tiny-text"
    engine = TritonEngine(
        ModelManifest.load(path), path, url=f"127.0.0.1:{free_port()}", protocol=protocol, timeout_s=5
    )
    await engine.load()
    try:
        assert await engine.health() is False
        with pytest.raises(Unavailable) as info:
            await engine.warmup()
        assert "127.0.0.1" in info.value.message
        from d2v.runtime.engines.base import warmup_inputs

        with pytest.raises(Unavailable):
            await engine.embed(warmup_inputs(engine.manifest), ["d2v_mean_embedding"])
    finally:
        await engine.close()
