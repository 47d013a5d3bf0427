"""The gateway's gRPC front end (KServe v2, Triton's wire) driven by UNMODIFIED ``tritonclient.grpc`` (sync and
aio) and raw stubs, over real sockets: every modality, metadata, health, reflection, every error code, auth,
streaming order and back-pressure, and that a cancelled or expired call runs nothing on the engine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from testkit import asgi_client, free_port, live_server, make_settings, png_bytes, record_reliability, wav_bytes
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from d2v.core.contract import CLS_OUTPUT, MEAN_OUTPUT, PRIMARY_INPUT, TOKEN_MASK_OUTPUT, TOKENS_OUTPUT
from d2v.core.manifest import ModelManifest
from d2v.runtime.engines.fake import FakeEngine
from d2v.server.app import build_engines, create_app
from d2v.server.grpc.inference import STREAM_WINDOW

KEY = "grpc-key"
AUTH = {"authorization": f"Bearer {KEY}"}
METADATA = tuple(AUTH.items())
RAWS = {
    "text": [b"hello grpc", b"a longer sentence to make the batch padded", b"x"],
    "image": [png_bytes(40, 30, seed=1), png_bytes(20, 50, seed=2)],
    "audio": [wav_bytes(0.5, seed=1), wav_bytes(0.3, rate=8000, seed=2)],
}


class CountingEngine:
    """A real engine that counts the items it runs and can be held closed (``gate``) to keep work queued."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.items = 0
        self.busy = 0
        self.running = 0  # items of the batch in the engine now
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def embed(self, inputs, outputs):
        self.busy += 1
        self.running = int(inputs[PRIMARY_INPUT[self.inner.manifest.modality]].shape[0])
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.002)
            self.items += int(inputs[PRIMARY_INPUT[self.inner.manifest.modality]].shape[0])
            return await self.inner.embed(inputs, outputs)
        finally:
            self.busy -= 1


def _settings(store, port, **extra):
    limits = {"max_items_per_request": 8, "max_queue": 64, "max_body_bytes": 200_000}
    return make_settings(store, grpc_port=port, api_keys=KEY, **{**limits, **extra})


@pytest.fixture(scope="module")
def gateway(store):
    """The app under uvicorn in a thread, with gRPC on a free port (its own event loop, as in production)."""
    port = free_port()
    settings = _settings(store, port)
    engines = {e.manifest.name: CountingEngine(e) for e in build_engines(settings)}
    app = create_app(settings, engines=list(engines.values()))
    with live_server(app) as (url, _server):
        yield SimpleNamespace(url=f"127.0.0.1:{port}", http=url, engines=engines, app=app)


def _input(modality: str, raws: list[bytes], lib=grpcclient):
    tensor = lib.InferInput("raw_input", [len(raws), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[r] for r in raws], dtype=object))
    return tensor


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------ inference
@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_tritonclient_sync_and_aio_embed_every_modality(gateway, modality):
    import httpx

    name = f"tiny-{modality}"
    client = grpcclient.InferenceServerClient(gateway.url)
    result = client.infer(name, [_input(modality, RAWS[modality])], headers=AUTH)
    outputs = {o["name"] for o in result.get_response(as_json=True)["outputs"]}
    expected = {TOKENS_OUTPUT, TOKEN_MASK_OUTPUT, MEAN_OUTPUT} | ({CLS_OUTPUT} if modality != "audio" else set())
    assert outputs == expected  # no outputs named: every output of the ensemble, as Triton answers
    mean = result.as_numpy(MEAN_OUTPUT)
    tokens, mask = result.as_numpy(TOKENS_OUTPUT), result.as_numpy(TOKEN_MASK_OUTPUT)
    assert mean.shape == (len(RAWS[modality]), 16) and tokens.shape[:2] == mask.shape
    client.close()

    async def aio():
        async with aioclient.InferenceServerClient(gateway.url) as c:
            wanted = [aioclient.InferRequestedOutput(MEAN_OUTPUT)]
            params = {"normalize": True, "dimensions": 8}
            r = await c.infer(name, [_input(modality, RAWS[modality], aioclient)], outputs=wanted, headers=AUTH)
            shaped = await c.infer(
                name, [_input(modality, RAWS[modality], aioclient)], outputs=wanted, parameters=params, headers=AUTH
            )
            return r.as_numpy(MEAN_OUTPUT), shaped.as_numpy(MEAN_OUTPUT)

    aio_mean, shaped = asyncio.run(aio())
    np.testing.assert_array_equal(aio_mean, mean)
    # The HTTP API on the same model: equal vectors (normalised there by default).
    inputs = [r.decode() if modality == "text" else base64.b64encode(r).decode() for r in RAWS[modality]]
    body = {"input": inputs, "encoding_format": "float", "normalize": False, "pooling": "mean"}
    http = httpx.post(f"{gateway.http}/v1/embed/{modality}", json=body, headers=AUTH).json()
    np.testing.assert_allclose([d["embedding"] for d in http["data"]], mean, atol=1e-6, rtol=0)
    body.update(normalize=True, dimensions=8)
    http = httpx.post(f"{gateway.http}/v1/embed/{modality}", json=body, headers=AUTH).json()
    np.testing.assert_allclose([d["embedding"] for d in http["data"]], shaped, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(shaped, axis=1), 1.0, rtol=1e-5)
    for i, n in enumerate(mask.sum(axis=1)):  # padding: zeros past each item's real tokens
        assert not tokens[i, n:].any()


def test_pooling_parameter_token_ids_and_layers(gateway):
    client = grpcclient.InferenceServerClient(gateway.url)
    raw = _input("text", RAWS["text"][:2])
    none = client.infer("tiny-text", [raw], parameters={"pooling": "none"}, headers=AUTH)
    assert [o["name"] for o in none.get_response(as_json=True)["outputs"]] == [TOKENS_OUTPUT, TOKEN_MASK_OUTPUT]
    cls = client.infer("tiny-text", [raw], parameters={"pooling": "cls"}, headers=AUTH)
    assert [o["name"] for o in cls.get_response(as_json=True)["outputs"]] == [CLS_OUTPUT]
    # Pre-tokenised rows (the OpenAI token-id form): input_ids INT64 [B, T] + attention_mask for ragged rows.
    ids = np.array([[0, 10, 11, 2, 1], [0, 12, 2, 1, 1]], dtype=np.int64)
    mask = (ids != 1).astype(np.int64)
    tensors = [
        grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
        grpcclient.InferInput("attention_mask", list(mask.shape), "INT64"),
    ]
    tensors[0].set_data_from_numpy(ids)
    tensors[1].set_data_from_numpy(mask)
    by_ids = client.infer("tiny-text", tensors, headers=AUTH)
    assert by_ids.as_numpy(TOKEN_MASK_OUTPUT).sum(axis=1).tolist() == [4, 3]
    single = grpcclient.InferInput("input_ids", [1, 3], "INT64")
    single.set_data_from_numpy(ids[1:, :3])
    np.testing.assert_allclose(
        client.infer("tiny-text", [single], headers=AUTH).as_numpy(MEAN_OUTPUT)[0],
        by_ids.as_numpy(MEAN_OUTPUT)[1],
        atol=1e-6,
    )
    # layers (the tiny text graph scales its tokens by K, observable from outside)
    one = client.infer("tiny-text", [raw], parameters={"layers": 1}, headers=AUTH).as_numpy(MEAN_OUTPUT)
    three = client.infer("tiny-text", [raw], parameters={"layers": 3}, headers=AUTH).as_numpy(MEAN_OUTPUT)
    np.testing.assert_allclose(three, 3 * one, rtol=1e-5)
    client.close()


# ------------------------------------------------------------------------------------- metadata, health
def test_metadata_config_and_probes(gateway):
    client = grpcclient.InferenceServerClient(gateway.url)
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    assert client.is_model_ready("tiny-audio") and not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(headers=AUTH, as_json=True)
    assert server["name"] == "d2v" and "model_configuration" in server["extensions"]
    for modality in ("text", "image", "audio"):
        manifest = ModelManifest.load(gateway.app.state.settings.store / f"tiny-{modality}")
        meta = client.get_model_metadata(f"tiny-{modality}", headers=AUTH, as_json=True)
        assert meta["inputs"] == [{"name": "raw_input", "datatype": "BYTES", "shape": ["-1", "1"]}]
        assert [o["name"] for o in meta["outputs"]] == list(manifest.outputs)
        config = client.get_model_config(f"tiny-{modality}", headers=AUTH, as_json=True)["config"]
        assert config["max_batch_size"] == 8  # the manifest's 64, capped by max_items_per_request
        assert config["parameters"]["modality"]["string_value"] == modality
        assert config["input"] == [{"name": "raw_input", "data_type": "TYPE_STRING", "dims": ["1"]}]
    index = client.get_model_repository_index(headers=AUTH, as_json=True)
    assert sorted(m["name"] for m in index["models"]) == ["tiny-audio", "tiny-image", "tiny-text"]
    client.close()


def test_health_service_and_reflection(gateway):
    with grpc.insecure_channel(gateway.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", "liveness", "tiny-text", "tiny-audio"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


# -------------------------------------------------------------------------------------------- errors
def _status(call) -> tuple[grpc.StatusCode, str, dict]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details(), dict(err.value.trailing_metadata() or ())


def _request(model="tiny-text", raws=(b"hi",), **params):
    req = service_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name="raw_input", datatype="BYTES", shape=[len(raws), 1])
    req.raw_input_contents.append(b"".join(len(r).to_bytes(4, "little") + r for r in raws))
    for key, value in params.items():
        if isinstance(value, str):
            req.parameters[key].string_param = value
        elif isinstance(value, bool):
            req.parameters[key].bool_param = value
        else:
            req.parameters[key].int64_param = value
    return req


def test_every_error_code_from_real_calls(gateway):
    with grpc.insecure_channel(gateway.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def infer(req, metadata=METADATA):
            return lambda: stub.ModelInfer(req, metadata=metadata, timeout=10)

        code, details, _ = _status(infer(_request(model="no-such-model")))
        assert code == grpc.StatusCode.NOT_FOUND and "no-such-model" in details
        code, details, _ = _status(
            lambda: stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="tiny-text", version="7"), metadata=METADATA
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", f"Basic {KEY}"),)):
            code, details, _ = _status(infer(_request(), metadata))
            assert code == grpc.StatusCode.UNAUTHENTICATED and details == "invalid or missing API key"
        code, _, _ = _status(lambda: stub.ServerMetadata(service_pb2.ServerMetadataRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, details, _ = _status(infer(_request(model="tiny-image", raws=(b"not an image",))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "input[0]" in details
        code, details, _ = _status(infer(_request(pooling="max")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "pooling" in details
        code, details, _ = _status(infer(_request(dimensions="8")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "integer" in details
        wrong = _request(model="tiny-audio", raws=(wav_bytes(0.2),))
        wrong.outputs.add(name=CLS_OUTPUT)
        code, details, _ = _status(infer(wrong))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unexpected inference output" in details
        # too large: items per request, and the whole message, each naming its limit
        code, details, trailers = _status(infer(_request(raws=[b"x"] * 9)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 8" in details
        assert trailers["d2v-error-code"] == "too_many_items"
        long_text = _request(raws=[b"words " * 200], truncate=False)  # the tiny tokenizer keeps 32 tokens
        code, details, trailers = _status(infer(long_text))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 32" in details
        assert trailers["d2v-error-code"] == "payload_too_large"
        assert stub.ModelInfer(_request(raws=[b"words " * 200]), metadata=METADATA)  # truncated by default
        code, details, trailers = _status(infer(_request(raws=[b"y" * 150_000, b"z" * 100_000])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "200000 (max_body_bytes)" in details
        assert trailers["d2v-error-code"] == "payload_too_large"


def test_overload_is_resource_exhausted_with_retry_after(gateway):
    engine = gateway.engines["tiny-text"]
    engine.gate.clear()

    async def run():
        async with grpc.aio.insecure_channel(gateway.url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            first = asyncio.ensure_future(stub.ModelInfer(_request(), metadata=METADATA))
            await _until(lambda: engine.busy == 1)  # the engine holds the first request
            fill = [
                asyncio.ensure_future(stub.ModelInfer(_request(raws=[b"q"] * 8), metadata=METADATA)) for _ in range(8)
            ]
            model = gateway.app.state.registry.get("tiny-text")
            await _until(lambda: model.batcher.depth == 64)  # max_queue
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ModelInfer(_request(), metadata=METADATA)
            engine.gate.set()
            await asyncio.gather(first, *fill)
            return err.value

    try:
        err = asyncio.run(run())
    finally:
        engine.gate.set()
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in err.details()
    assert dict(err.trailing_metadata())["retry-after"] == "1"


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_starting_and_draining_are_unavailable(store):
    gate = asyncio.Event()
    path = store / "tiny-text"
    engine = FakeEngine(ModelManifest.load(path), path, warmup_gate=gate)
    port = free_port()
    app = create_app(_settings(store, port, models=["tiny-text"]), engines=[engine])
    async with asgi_client(app, ready=False), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_request(), metadata=METADATA)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in err.value.details()
        assert not (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready
        gate.set()
        await _until_async(stub)
        app.state.draining = True  # what the lifespan sets first on shutdown
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(_request(), metadata=METADATA)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
        app.state.draining = False


async def _until_async(stub, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------- cancellation, deadlines
def test_cancelled_and_expired_calls_never_reach_the_engine(gateway):
    engine = gateway.engines["tiny-text"]
    model = gateway.app.state.registry.get("tiny-text")
    before_items = engine.items
    engine.gate.clear()

    async def run():
        async with aioclient.InferenceServerClient(gateway.url) as client:
            holder = asyncio.ensure_future(
                client.infer("tiny-text", [_input("text", [b"runs"], aioclient)], headers=AUTH)
            )
            await _until(lambda: engine.busy == 1)
            with pytest.raises(InferenceServerException) as expired:  # queued behind the held batch, then expires
                await client.infer(
                    "tiny-text", [_input("text", [b"a", b"b"], aioclient)], headers=AUTH, client_timeout=0.3
                )
            cancelled = asyncio.ensure_future(
                client.infer("tiny-text", [_input("text", [b"c", b"d", b"e"], aioclient)], headers=AUTH)
            )
            await _until(lambda: model.batcher.depth >= 3)
            cancelled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled
            await asyncio.sleep(0.2)  # the server sees the cancellation
            engine.gate.set()
            await holder
            # the next request runs alone: nothing of the dropped ones joins its batch
            await client.infer("tiny-text", [_input("text", [b"after"], aioclient)], headers=AUTH)
            return expired.value

    try:
        expired = asyncio.run(run())
    finally:
        engine.gate.set()
    assert "DEADLINE_EXCEEDED" in str(expired.status())
    assert engine.items - before_items == 2  # "runs" and "after": the 5 cancelled / expired items never ran
    import httpx

    metrics = httpx.get(f"{gateway.http}/metrics").text
    assert 'd2v_dropped_items_total{model="tiny-text"} 5.0' in metrics
    assert 'protocol="grpc",route="ModelInfer",status="OK"' in metrics
    assert 'protocol="grpc",route="ModelInfer",status="UNAUTHENTICATED"' in metrics


# -------------------------------------------------------------------------------------------- streaming
def test_stream_answers_in_order_and_pushes_back(gateway):
    engine = gateway.engines["tiny-text"]
    model = gateway.app.state.registry.get("tiny-text")
    engine.gate.clear()
    total = 4 * STREAM_WINDOW
    depths = []

    async def run():
        async with grpc.aio.insecure_channel(gateway.url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def requests():
                for i in range(total):
                    req = _request(raws=[f"stream item {i}".encode()])
                    req.id = str(i)
                    yield req

            call = stub.ModelStreamInfer(requests(), metadata=METADATA)

            async def answers() -> list[tuple[str, str]]:
                return [(r.infer_response.id, r.error_message) async for r in call]

            reading = asyncio.ensure_future(answers())
            read = lambda: engine.running + model.batcher.depth  # noqa: E731 (requests of one item each)
            await _until(lambda: engine.busy == 1 and read() == STREAM_WINDOW)
            await asyncio.sleep(0.3)  # give an unbounded server every chance to read (and queue) more
            depths.append(read())
            engine.gate.set()
            return await reading

    try:
        answers = asyncio.run(run())
    finally:
        engine.gate.set()
    # the window in the engine or queued, the remainder left unread in the stream
    assert depths == [STREAM_WINDOW]
    assert answers == [(str(i), "") for i in range(total)]


def test_stream_reports_errors_per_request_and_keeps_going(gateway):
    client = grpcclient.InferenceServerClient(gateway.url)
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)), headers=AUTH)
    client.async_stream_infer("tiny-image", [_input("image", [b"broken"])], request_id="bad")
    client.async_stream_infer("tiny-image", [_input("image", RAWS["image"][:1])], request_id="good")
    client.stop_stream()
    client.close()
    (bad_result, bad_error), (good_result, good_error) = results
    assert bad_error is not None and bad_error.message().startswith("INVALID_ARGUMENT: input[0]")
    assert good_error is None and good_result.as_numpy(MEAN_OUTPUT).shape == (1, 16)


def test_http_client_disconnect_also_drops_its_queued_items(gateway):
    """The batcher's cancellation serves HTTP too: 50 clients hang up while their items are queued behind a
    held batch (one text each: the fixture's queue holds 64 items); the engine sees none of them."""
    import httpx

    engine = gateway.engines["tiny-text"]
    model = gateway.app.state.registry.get("tiny-text")
    before = engine.items
    engine.gate.clear()
    holder = threading.Thread(
        target=httpx.post,
        args=(f"{gateway.http}/v1/embed/text",),
        kwargs={"json": {"input": ["held"]}, "headers": AUTH, "timeout": 60},
    )
    leavers = 50
    try:
        holder.start()
        _wait(lambda: engine.busy == 1)

        def hang_up(i: int) -> None:
            body = {"input": [f"gone {i}"]}
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(f"{gateway.http}/v1/embed/text", json=body, headers=AUTH, timeout=5.0)

        threads = [threading.Thread(target=hang_up, args=(i,)) for i in range(leavers)]
        for thread in threads:
            thread.start()
        _wait(lambda: model.batcher.depth == leavers)
        dropped = _dropped(gateway) or 0.0
        for thread in threads:
            thread.join()  # every client timed out and closed its connection
        _wait(lambda: model.admission.requests == 1)  # the server noticed: only "held" is still in flight
    finally:
        engine.gate.set()
        holder.join()
    _wait(lambda: model.batcher.depth == 0 and engine.busy == 0)  # whatever was still queued has run by now
    assert engine.items - before == 1  # only "held" ran
    assert _dropped(gateway) == dropped + leavers
    record_reliability(
        "Cancellation on client disconnect (HTTP)",
        tried=f"{leavers} requests queued behind a held batch",
        faults="every client times out and closes its connection while its items wait",
        outcome="their queued items are dropped; the engine never sees them",
        figures=f"{leavers} items dropped (d2v_dropped_items_total), 0 of them run; the held request ran",
    )


def _dropped(gateway) -> float | None:
    import httpx

    for line in httpx.get(f"{gateway.http}/metrics").text.splitlines():
        if line.startswith('d2v_dropped_items_total{model="tiny-text"}'):
            return float(line.split()[-1])
    return None


def _self_signed(tmp_path) -> tuple[bytes, object, object]:
    """A certificate for 127.0.0.1 (openssl), as the PEM bytes a client trusts and the two server files."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert.read_bytes(), cert, key


def test_tls_port_serves_tritonclient_and_the_sdk_and_refuses_plaintext(store, tmp_path):
    from d2v_client import D2VClientError, GrpcClient

    roots, cert, key = _self_signed(tmp_path)
    port = free_port()
    settings = _settings(store, port, grpc_tls_cert=cert, grpc_tls_key=key)
    with live_server(create_app(settings)):
        target = f"127.0.0.1:{port}"
        client = grpcclient.InferenceServerClient(target, ssl=True, root_certificates=str(cert))
        result = client.infer("tiny-text", [_input("text", [b"over tls"])], headers=AUTH)
        assert result.as_numpy(MEAN_OUTPUT).shape == (1, 16)
        client.close()
        with GrpcClient(target, api_key=KEY, root_certificates=roots) as sdk:
            assert sdk.embed_text(["over tls"]).shape == (1, 16)
        with GrpcClient(target, api_key=KEY) as plain, pytest.raises(D2VClientError):  # no TLS: refused
            plain.embed_text(["x"])
