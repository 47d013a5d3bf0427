"""``inference.GRPCInferenceService`` (KServe v2, Triton's wire) over the app's served models.

The same objects serve HTTP: the registry's ``ServedModel`` (preprocessing pool, dynamic batcher, engine),
the settings' limits, the API keys (``authorization: Bearer <key>`` metadata) and the Prometheus metrics
(``protocol="grpc"``, route = method, status = the status code's name). Errors are mapped once, in
``error_handlers.grpc_status``. ``RepositoryIndex`` lists the served models; the methods this gateway has
no use for (repository load / unload, shared memory, statistics, trace, logging) answer UNIMPLEMENTED, from
the generated base class.

Deadlines: the time left on the call bounds the whole request, and the batcher drops its items if the
deadline passes while they are queued; a cancelled call cancels its items the same way, so neither ever
reaches the engine. ``ModelStreamInfer`` answers in request order and keeps at most ``STREAM_WINDOW``
requests of one stream in flight: it stops reading the stream beyond that, so gRPC flow control slows
the sender down (back-pressure) instead of the gateway buffering without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from d2v.core.errors import D2VError, InvalidInput, NotFound, PayloadTooLarge, Unavailable

from ..auth import check_bearer
from ..error_handlers import grpc_status
from ..routes.common import check_count
from ..served_model import ServedModel
from . import model_info
from .tensors import InferOptions, decode_inputs, encode_response, wanted_outputs

STREAM_WINDOW = 16  # requests of one ModelStreamInfer call in flight at once
_OPEN = frozenset({"ServerLive", "ServerReady", "ModelReady"})  # probes: no API key, as /livez and /readyz


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``state`` is the FastAPI app's ``state``: registry, settings, metrics, api_keys, draining."""

    def __init__(self, state: Any) -> None:
        self.state = state

    # --------------------------------------------------------------------------------------- plumbing
    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        check_bearer(header if isinstance(header, str) else None, self.state.api_keys)

    async def _unary(self, method: str, context: grpc.aio.ServicerContext, handler: Callable[[], Awaitable[Any]]):
        """Run one unary handler: key check, metrics, and every exception mapped to its status."""
        start = time.perf_counter()
        status = "OK"
        try:
            if method not in _OPEN:
                self._authorize(context)
            return await handler()
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:
            code, details, trailer = grpc_status(exc)
            status = code.name
            await context.abort(code, details, trailing_metadata=trailer)
        finally:
            self.state.metrics.observe_request("grpc", method, status, time.perf_counter() - start)

    def _model(self, name: str, version: str = "") -> ServedModel:
        model = self.state.registry.get(name)
        if version not in ("", model_info.VERSION):
            raise NotFound(f"Request for unknown model: {name!r} version {version} is not found")
        return model

    def _ready_model(self, name: str, version: str) -> ServedModel:
        if self.state.draining:
            raise Unavailable("shutting down")
        model = self._model(name, version)
        return self.state.registry.resolve(model.modality, model.name)  # Unavailable while warming up

    # ------------------------------------------------------------------------------------ health, metadata
    async def ServerLive(self, request, context):
        return await self._unary("ServerLive", context, self._live)

    async def _live(self) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        async def ready() -> service_pb2.ServerReadyResponse:
            return service_pb2.ServerReadyResponse(ready=self.state.registry.ready and not self.state.draining)

        return await self._unary("ServerReady", context, ready)

    async def ModelReady(self, request, context):
        async def ready() -> service_pb2.ModelReadyResponse:
            try:  # an unknown model is "not ready", as Triton answers
                model = self._model(request.name, request.version)
            except NotFound:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=model.ready and not self.state.draining)

        return await self._unary("ModelReady", context, ready)

    async def ServerMetadata(self, request, context):
        return await self._unary("ServerMetadata", context, self._server_metadata)

    async def _server_metadata(self) -> service_pb2.ServerMetadataResponse:
        return model_info.server_metadata()

    async def ModelMetadata(self, request, context):
        async def metadata() -> service_pb2.ModelMetadataResponse:
            return model_info.model_metadata(self._model(request.name, request.version))

        return await self._unary("ModelMetadata", context, metadata)

    async def ModelConfig(self, request, context):
        async def config() -> service_pb2.ModelConfigResponse:
            return model_info.model_config(self._model(request.name, request.version))

        return await self._unary("ModelConfig", context, config)

    async def RepositoryIndex(self, request, context):
        """The served models (read-only: repository load / unload stay UNIMPLEMENTED), as Triton lists them."""

        async def index() -> service_pb2.RepositoryIndexResponse:
            entry = service_pb2.RepositoryIndexResponse.ModelIndex
            models = [
                entry(name=m.name, version=model_info.VERSION, state="READY" if m.ready else "UNAVAILABLE")
                for m in self.state.registry
            ]
            return service_pb2.RepositoryIndexResponse(
                models=[m for m in models if m.state == "READY" or not request.ready]
            )

        return await self._unary("RepositoryIndex", context, index)

    # ------------------------------------------------------------------------------------------ inference
    def _deadline(self, context: grpc.aio.ServicerContext, options: InferOptions) -> float | None:
        """The monotonic time after which nobody waits: the call's deadline or Triton's ``timeout`` (µs)."""
        left = context.time_remaining()
        if options.timeout_us is not None:
            left = min(left, options.timeout_us / 1e6) if left is not None else options.timeout_us / 1e6
        return None if left is None else time.monotonic() + max(0.0, left)

    async def infer(self, request: service_pb2.ModelInferRequest, deadline: float | None, options: InferOptions):
        """One ModelInferRequest -> ModelInferResponse (raises ``D2VError`` / ``TimeoutError``)."""
        settings = self.state.settings
        model = self._ready_model(request.model_name, request.model_version)
        size = request.ByteSize()
        if size > settings.max_body_bytes:
            raise PayloadTooLarge(f"request is {size} bytes; the limit is {settings.max_body_bytes} (max_body_bytes)")
        raws = decode_inputs(request, model)
        check_count(len(raws), settings)
        names = wanted_outputs(request, model, options)
        dim = model.manifest.embedding_dim
        if options.dimensions is not None and options.dimensions > dim:
            raise InvalidInput(f"dimensions={options.dimensions} is larger than the model's embedding size {dim}")
        model.check_options("mean", options.layers)
        # Counted against the model's in-flight bounds before decoding, as the HTTP routes are.
        with model.admission.admit(len(raws), size):
            async with asyncio.timeout_at(_loop_time(deadline)):
                items = await model.load_items(raws, truncate=options.truncate)
                results = await model.infer(items, tuple(names), top_k=options.layers, deadline=deadline)
        model.metrics.items.labels(model.name).inc(len(results))
        return encode_response(request, model, names, results, options)

    async def ModelInfer(self, request, context):
        async def run() -> service_pb2.ModelInferResponse:
            options = InferOptions.from_parameters(request.parameters)
            return await self.infer(request, self._deadline(context, options), options)

        return await self._unary("ModelInfer", context, run)

    async def _stream_one(self, request, context) -> service_pb2.ModelStreamInferResponse:
        start = time.perf_counter()
        status = "OK"
        try:
            options = InferOptions.from_parameters(request.parameters)
            response = await self.infer(request, self._deadline(context, options), options)
            return service_pb2.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:
            # A stream answers errors per request (Triton's error_message); the code leads the message so
            # clients can tell an overload from bad input.
            code, details, trailer = grpc_status(exc)
            status = code.name
            retry = dict(trailer).get("retry-after")
            hint = f" (retry after {retry} s)" if retry and code == grpc.StatusCode.RESOURCE_EXHAUSTED else ""
            error = f"{code.name}: {details}{hint}"
            return service_pb2.ModelStreamInferResponse(
                error_message=error, infer_response=service_pb2.ModelInferResponse(id=request.id)
            )
        finally:
            self.state.metrics.observe_request("grpc", "ModelStreamInfer", status, time.perf_counter() - start)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        try:
            self._authorize(context)
        except D2VError as exc:
            code, details, trailer = grpc_status(exc)
            self.state.metrics.observe_request("grpc", "ModelStreamInfer", code.name, 0.0)
            await context.abort(code, details, trailing_metadata=trailer)
        window: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_WINDOW)  # taken before a request is read, given back once answered

        requests = aiter(request_iterator)

        async def read() -> None:
            while True:
                await slots.acquire()  # a full window stops the reading: gRPC flow control pushes back
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    break
                window.put_nowait(asyncio.ensure_future(self._stream_one(request, context)))
            window.put_nowait(None)

        async def next_task() -> asyncio.Future | None:
            getter = asyncio.ensure_future(window.get())
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
            if not window.empty():
                return window.get_nowait()
            reader.result()  # the request stream broke: raise its error
            return None

        reader = asyncio.ensure_future(read())
        try:
            while (task := await next_task()) is not None:
                response = await task
                slots.release()
                yield response
        finally:
            reader.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def _loop_time(deadline: float | None) -> float | None:
    """A ``time.monotonic()`` deadline on the event loop's clock (``asyncio.timeout_at`` wants that)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
