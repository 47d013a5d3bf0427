"""The blocking gRPC client: KServe v2 (Triton's wire) to the d2v gateway or straight to a Triton ensemble.

Needs the ``grpc`` extra (``pip install 'd2v-client[grpc]'``: grpcio and tritonclient's message modules).
Same methods, options, chunking (the shared planner, by the model's ``max_batch_size``) and retries as the
HTTP :class:`~d2v_client.Client`: RESOURCE_EXHAUSTED (honouring the ``retry-after`` trailer), UNAVAILABLE,
timeouts and dropped connections are retried with backoff and jitter.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from d2v_client import _core, _grpc
from d2v_client._http import RetryPolicy, delay_or_raise
from d2v_client._methods import EmbedMethods
from d2v_client._types import Embeddings, EmbedOptions, Modality, ModelInfo, as_list
from d2v_client.client import run_chunks
from d2v_client.errors import BadRequestError, D2VClientError, NotFoundError, error_from_grpc, error_from_stream_message


def rpc_error(exc: grpc.RpcError) -> D2VClientError:
    """The typed SDK error of a failed call (sync and asyncio calls both carry code, details, trailers)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return error_from_grpc(code.name if code else "UNKNOWN", details, _grpc.trailers(trailing))


def pick_model(models: dict[str, ModelInfo], modality: Modality, name: str | None) -> ModelInfo | None:
    """The model named ``name`` (``None``: not listed) or the only one serving ``modality``.

    Raises:
        BadRequestError: the model embeds another modality, or several serve it and none was named.
        NotFoundError: nothing serves ``modality``.
    """
    if name is not None:
        model = models.get(name)
        if model is not None and model.modality != modality:
            raise BadRequestError(f"model {name!r} embeds {model.modality}, not {modality}")
        return model
    candidates = [m for m in models.values() if m.modality == modality]
    if not candidates:
        raise NotFoundError(f"no model serves {modality} here; available: {sorted(models)}")
    if len(candidates) > 1:
        raise BadRequestError(f"several models serve {modality} ({sorted(m.name for m in candidates)}): pass model=")
    return candidates[0]


def make_channel(module: Any, target: str, tls: bool, root_certificates: bytes | None) -> Any:
    """A channel of ``module`` (``grpc`` or ``grpc.aio``): TLS when asked or when roots are given."""
    if tls or root_certificates:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return module.secure_channel(target, creds, options=_grpc.channel_options())
    return module.insecure_channel(target, options=_grpc.channel_options())


class GrpcClient(EmbedMethods):
    """A blocking gRPC client for the d2v gateway (``d2v serve``, port 8081) or a Triton ensemble.

    Example::

        with GrpcClient() as client:                      # $D2V_GRPC_URL or 127.0.0.1:8081
            vecs = client.embed_text(["hello", "world"])  # np.ndarray [2, D], float32
        with GrpcClient("127.0.0.1:8001") as triton:      # Triton's gRPC port, the same code
            vecs = triton.embed_image(["a.png"])

    Args:
        target: ``host:port``; default ``$D2V_GRPC_URL`` (read here), else ``127.0.0.1:8081``.
        api_key: sent as ``authorization: Bearer <key>`` metadata.
        timeout: per-call deadline in seconds.
        max_concurrency: calls in flight at once for one ``embed``.
        retry: the retry policy (``RetryPolicy(max_retries=0)`` disables retries).
        streaming: send the chunks of each ``embed`` over one ``ModelStreamInfer`` stream (at most
            ``max_concurrency`` unanswered); chunks that fail retryably are sent again by unary calls.
        tls, root_certificates: use a TLS channel (PEM roots; default: the system's).
        sleep, rng: the sleep function and random source of the retries (injectable for tests).
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
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target or _grpc.default_target()
        self._channel = make_channel(grpc, self.target, tls, root_certificates)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout
        self.max_concurrency = max(1, max_concurrency)
        self.retry = retry or RetryPolicy()
        self.streaming = streaming
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._gateway: bool | None = None
        self._models: dict[str, ModelInfo] | None = None

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the worker threads and the channel."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._channel.close()

    # -- calls -----------------------------------------------------------------------------------------------

    def _call(self, method: str, request: Any, *, retry: bool = True) -> Any:
        attempt = 0
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                err = rpc_error(exc)
            if not retry:
                raise err
            self._sleep(delay_or_raise(self.retry, err, attempt, self._rng))
            attempt += 1

    def ready(self) -> bool:
        """Whether ``ServerReady`` answers true (no retries)."""
        try:
            return bool(self._call("ServerReady", service_pb2.ServerReadyRequest(), retry=False).ready)
        except D2VClientError:
            return False

    def is_gateway(self) -> bool:
        """Whether the server is the d2v gateway (``ServerMetadata``), not Triton (cached)."""
        if self._gateway is None:
            meta = self._call("ServerMetadata", service_pb2.ServerMetadataRequest())
            self._gateway = meta.name == _grpc.GATEWAY
        return self._gateway

    def models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """The embedding models served (``RepositoryIndex`` + ``ModelConfig``; Triton's pipeline steps are left
        out). A server that does not list its repository yields none: pass ``model=`` then."""
        with self._lock:
            if self._models is None or refresh:
                try:
                    index = self._call("RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True))
                    names = [m.name for m in index.models]
                except D2VClientError as exc:
                    if exc.code not in ("UNIMPLEMENTED", "UNAUTHENTICATED", "PERMISSION_DENIED"):
                        raise
                    names = []
                configs = [self._config(name) for name in names]
                self._models = {m.name: m for m in configs if m is not None}
            return list(self._models.values())

    def _config(self, name: str) -> ModelInfo | None:
        response = self._call("ModelConfig", service_pb2.ModelConfigRequest(name=name))
        return _grpc.model_from_config(response.config)

    def _model_for(self, modality: Modality, name: str | None) -> ModelInfo:
        self.models()
        model = pick_model(self._models or {}, modality, name)
        if model is None:  # named but not listed (e.g. a Triton without repository access): ask directly
            model = self._config(name)
            if model is None:
                raise BadRequestError(f"model {name!r} takes no raw BYTES input: not an embedding front end")
            self._models[name] = model
            model = pick_model(self._models, modality, name)
        return model

    # -- embedding -------------------------------------------------------------------------------------------

    def embed(self, modality: Modality, inputs: Any, **options: Any) -> Embeddings:
        """Embed inputs of one modality; ``options`` are those of :class:`~d2v_client.EmbedOptions`.

        Raises:
            D2VClientError: see :mod:`d2v_client.errors`.
        """
        opts, items = EmbedOptions(**options), as_list(inputs)
        model = self._model_for(modality, opts.model)
        job, chunks = _grpc.plan(modality, items, opts, model, self.is_gateway())
        if self.streaming:
            return job.assemble(self._stream(job, list(chunks)))

        def send(chunk: _core.Chunk) -> list[np.ndarray]:
            return job.parse(chunk, self._call("ModelInfer", job.request(chunk)))

        return job.assemble(run_chunks(send, chunks, self.max_concurrency, self._executor))

    def _stream(self, job: _grpc.GrpcJob, chunks: list[_core.Chunk]) -> list[list[np.ndarray]]:
        """All chunks over one ``ModelStreamInfer``; unanswered or retryably failed ones again by unary calls."""
        results: dict[int, list[np.ndarray]] = {}
        sent: dict[str, _core.Chunk] = {}
        gate = threading.Semaphore(self.max_concurrency)
        stop = threading.Event()

        def requests() -> Iterator[Any]:  # runs in gRPC's thread; the gate keeps the stream's window bounded
            for chunk in chunks:
                while not gate.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                sent[str(chunk.start)] = chunk
                yield job.request(chunk, str(chunk.start))

        call = self._stub.ModelStreamInfer(requests(), metadata=self._metadata, timeout=self.timeout * len(chunks))
        try:
            for response in call:
                chunk = sent.pop(response.infer_response.id)
                gate.release()
                if not response.error_message:
                    results[chunk.start] = job.parse(chunk, response.infer_response)
                elif not (err := error_from_stream_message(response.error_message)).retryable:
                    raise err
        except grpc.RpcError as exc:
            if not (err := rpc_error(exc)).retryable:
                raise err from None
        finally:
            stop.set()
            call.cancel()
        for chunk in chunks:
            if chunk.start not in results:
                results[chunk.start] = job.parse(chunk, self._call("ModelInfer", job.request(chunk)))
        return [results[c.start] for c in chunks]

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="d2v-grpc-client")
            return self._pool
