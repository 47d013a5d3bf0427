"""The asyncio gRPC client: :class:`~d2v_client.GrpcClient`'s behaviour over ``grpc.aio``, awaitable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from d2v_client import _core, _grpc
from d2v_client._http import RetryPolicy, delay_or_raise
from d2v_client._methods import AsyncEmbedMethods
from d2v_client._types import Embeddings, EmbedOptions, Modality, ModelInfo, as_list
from d2v_client.async_client import gather_chunks
from d2v_client.errors import BadRequestError, D2VClientError, error_from_stream_message
from d2v_client.grpc_client import make_channel, pick_model, rpc_error


class AsyncGrpcClient(AsyncEmbedMethods):
    """An asyncio gRPC client for the d2v gateway or a Triton ensemble.

    Example::

        async with AsyncGrpcClient() as client:  # $D2V_GRPC_URL or 127.0.0.1:8081
            vecs = await client.embed_audio(["a.wav"])

    Args:
        target, api_key, timeout, max_concurrency, retry, streaming, tls, root_certificates, rng: as for
            :class:`d2v_client.GrpcClient`.
        sleep: the coroutine used between retries (injectable for tests).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        streaming: bool = False,
        tls: bool = False,
        root_certificates: bytes | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target or _grpc.default_target()
        self._channel = make_channel(grpc.aio, self.target, tls, root_certificates)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.max_concurrency = max(1, max_concurrency)
        self.retry = retry or RetryPolicy()
        self.streaming = streaming
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._gateway: bool | None = None
        self._models: dict[str, ModelInfo] | None = None

    async def __aenter__(self) -> AsyncGrpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def _call(self, method: str, request: Any, *, retry: bool = True) -> Any:
        attempt = 0
        while True:
            try:
                return await getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                err = rpc_error(exc)
            if not retry:
                raise err
            await self._sleep(delay_or_raise(self.retry, err, attempt, self._rng))
            attempt += 1

    async def ready(self) -> bool:
        """Whether ``ServerReady`` answers true (no retries)."""
        try:
            return bool((await self._call("ServerReady", service_pb2.ServerReadyRequest(), retry=False)).ready)
        except D2VClientError:
            return False

    async def is_gateway(self) -> bool:
        """Whether the server is the d2v gateway, not Triton (cached)."""
        if self._gateway is None:
            meta = await self._call("ServerMetadata", service_pb2.ServerMetadataRequest())
            self._gateway = meta.name == _grpc.GATEWAY
        return self._gateway

    async def models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """The embedding models served; see :meth:`d2v_client.GrpcClient.models`."""
        if self._models is None or refresh:
            try:
                index = await self._call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True))
                names = [m.name for m in index.models]
            except D2VClientError as exc:
                if exc.code not in ("UNIMPLEMENTED", "UNAUTHENTICATED", "PERMISSION_DENIED"):
                    raise
                names = []
            configs = [await self._config(name) for name in names]
            self._models = {m.name: m for m in configs if m is not None}
        return list(self._models.values())

    async def _config(self, name: str) -> ModelInfo | None:
        response = await self._call("ModelConfig", service_pb2.ModelConfigRequest(name=name))
        return _grpc.model_from_config(response.config)

    async def _model_for(self, modality: Modality, name: str | None) -> ModelInfo:
        await self.models()
        model = pick_model(self._models or {}, modality, name)
        if model is None:
            model = await self._config(name)
            if model is None:
                raise BadRequestError(f"model {name!r} takes no raw BYTES input: not an embedding front end")
            self._models[name] = model
            model = pick_model(self._models, modality, name)
        return model

    async def embed(self, modality: Modality, inputs: Any, **options: Any) -> Embeddings:
        """Embed inputs of one modality; ``options`` are those of :class:`~d2v_client.EmbedOptions`.

        Raises:
            D2VClientError: see :mod:`d2v_client.errors`.
        """
        opts, items = EmbedOptions(**options), as_list(inputs)
        model = await self._model_for(modality, opts.model)
        job, chunks = _grpc.plan(modality, items, opts, model, await self.is_gateway())
        if self.streaming:
            return job.assemble(await self._stream(job, list(chunks)))

        async def send(chunk: _core.Chunk) -> list[np.ndarray]:
            return job.parse(chunk, await self._call("ModelInfer", job.request(chunk)))

        return job.assemble(await gather_chunks(send, chunks, self.max_concurrency))

    async def _stream(self, job: _grpc.GrpcJob, chunks: list[_core.Chunk]) -> list[list[np.ndarray]]:
        """All chunks over one ``ModelStreamInfer``; see :meth:`d2v_client.GrpcClient._stream`."""
        results: dict[int, list[np.ndarray]] = {}
        sent: dict[str, _core.Chunk] = {}
        gate = asyncio.Semaphore(self.max_concurrency)

        async def requests() -> AsyncIterator[Any]:
            for chunk in chunks:
                await gate.acquire()
                sent[str(chunk.start)] = chunk
                yield job.request(chunk, str(chunk.start))

        call = self._stub.ModelStreamInfer(requests(), metadata=self._metadata, timeout=self.timeout * len(chunks))
        try:
            async for response in call:
                chunk = sent.pop(response.infer_response.id)
                gate.release()
                if not response.error_message:
                    results[chunk.start] = job.parse(chunk, response.infer_response)
                elif not (err := error_from_stream_message(response.error_message)).retryable:
                    raise err
        except grpc.aio.AioRpcError as exc:
            if not (err := rpc_error(exc)).retryable:
                raise err from None
        finally:
            call.cancel()
        for chunk in chunks:
            if chunk.start not in results:
                results[chunk.start] = job.parse(chunk, await self._call("ModelInfer", job.request(chunk)))
        return [results[c.start] for c in chunks]
