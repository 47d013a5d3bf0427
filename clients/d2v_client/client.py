"""The blocking client."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
import numpy as np

from d2v_client import _core
from d2v_client._http import RetryPolicy, SyncTransport, default_base_url, default_headers
from d2v_client._methods import EmbedMethods
from d2v_client._types import Embeddings, EmbedOptions, Modality, ServerInfo, UploadMode, as_list
from d2v_client.errors import NotFoundError


class Client(EmbedMethods):
    """A blocking client for the data2vec embedding server.

    Large inputs are cut into requests that respect the server's ``/info`` limits and sent with at most
    ``max_concurrency`` requests in flight; 429/503 and connection failures are retried with exponential
    backoff and jitter, honouring ``Retry-After``. Use it as a context manager, or call :meth:`close`.

    Example::

        with Client() as client:                                   # $D2V_SERVER_URL or http://127.0.0.1:8080
            vecs = client.embed_text(["hello", "world"])          # np.ndarray [2, D], float32
            toks = client.embed_text(["hello"], pooling="none")   # [np.ndarray [T, D]]

    Args:
        base_url: the server; default: ``$D2V_SERVER_URL`` (read here, at construction), else
            ``http://127.0.0.1:8080`` (``d2v serve``'s default).
        api_key: sent as ``Authorization: Bearer <key>``.
        timeout: per-request timeout in seconds.
        max_concurrency: requests in flight at once for one call.
        retry: the retry policy (``RetryPolicy(max_retries=0)`` disables retries).
        upload: ``"base64"`` (JSON with data URIs, the default) or ``"multipart"`` for image/audio.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport`` or an ASGI transport).
        sleep: the sleep function used between retries (injectable for tests).
        rng: the random source of the jitter.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        upload: UploadMode = "base64",
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        http = httpx.Client(
            base_url=base_url or default_base_url(),
            headers=default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self._transport = SyncTransport(http, retry or RetryPolicy(), sleep=sleep, rng=rng)
        self.max_concurrency = max(1, max_concurrency)
        self.upload = upload
        self._info: ServerInfo | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._transport.close()

    # -- server metadata -------------------------------------------------------------------------------------

    def info(self, *, refresh: bool = False) -> ServerInfo:
        """``GET /info`` (cached). A server without ``/info`` yields empty info and the SDK's default limits.

        Raises:
            D2VClientError: the server could not be reached or answered with an error other than 404.
        """
        with self._lock:
            if self._info is None or refresh:
                try:
                    self._info = ServerInfo.from_json(self._transport.request("GET", "/info"))
                except NotFoundError:
                    self._info = ServerInfo()
            return self._info

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the entries of its ``data`` list (each names its ``modality``).

        Raises:
            D2VClientError: on any failure.
        """
        return list(self._transport.request("GET", "/v1/models").get("data", []))

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 2xx (no retries)."""
        try:
            return self._transport.http.get("/readyz").is_success
        except httpx.HTTPError:
            return False

    # -- embedding -------------------------------------------------------------------------------------------

    def embed(self, modality: Modality, inputs: Any, **options: Any) -> Embeddings:
        """Embed inputs of one modality; ``options`` are those of :class:`EmbedOptions`.

        Raises:
            D2VClientError: see the ``embed_*`` methods.
        """
        opts, items = EmbedOptions(**options), as_list(inputs)
        job, chunks = _core.plan_embed(modality, items, opts, self.info(), self.upload == "multipart")
        return job.assemble(self._run_chunks(job, chunks))

    def _send(self, job: _core.EmbedJob, chunk: _core.Chunk) -> list[np.ndarray]:
        req = job.request(chunk)
        body = self._transport.request("POST", req.path, json=req.json, files=req.files, data=req.data)
        return job.parse(chunk, body)

    def _run_chunks(self, job: _core.EmbedJob, chunks: Iterable[_core.Chunk]) -> list[list[np.ndarray]]:
        return run_chunks(lambda chunk: self._send(job, chunk), chunks, self.max_concurrency, self._executor)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="d2v-client")
            return self._pool


def run_chunks(
    send: Callable[[_core.Chunk], list[np.ndarray]],
    chunks: Iterable[_core.Chunk],
    max_concurrency: int,
    executor: Callable[[], ThreadPoolExecutor],
) -> list[list[np.ndarray]]:
    """Send chunks with at most ``max_concurrency`` in flight (threads of ``executor()``); inputs are encoded
    only as slots free up. Returns the results in chunk order (shared by the HTTP and gRPC clients)."""
    results: dict[int, list[np.ndarray]] = {}
    pending: dict[Future[list[np.ndarray]], int] = {}

    def collect() -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            results[pending.pop(fut)] = fut.result()

    try:
        for chunk in chunks:
            if max_concurrency == 1:
                results[chunk.start] = send(chunk)
                continue
            while len(pending) >= max_concurrency:
                collect()
            pending[executor().submit(send, chunk)] = chunk.start
        while pending:
            collect()
    finally:
        for fut in pending:
            fut.cancel()
    return [results[k] for k in sorted(results)]
