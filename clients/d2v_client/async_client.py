"""The asyncio client: same behaviour as :class:`d2v_client.Client`, awaitable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import numpy as np

from d2v_client import _core
from d2v_client._http import AsyncTransport, RetryPolicy, default_base_url, default_headers
from d2v_client._methods import AsyncEmbedMethods
from d2v_client._types import Embeddings, EmbedOptions, Modality, ServerInfo, UploadMode, as_list
from d2v_client.errors import NotFoundError


class AsyncClient(AsyncEmbedMethods):
    """An asyncio client for the data2vec embedding server.

    Chunking, bounded concurrency (an ``asyncio.Semaphore`` of ``max_concurrency``), retries and errors
    are those of :class:`d2v_client.Client`. Use ``async with``, or call :meth:`aclose`.

    Example::

        async with AsyncClient() as client:  # $D2V_SERVER_URL or http://127.0.0.1:8080
            vecs = await client.embed_image(["a.png", "b.jpg"])

    Args:
        base_url, api_key, timeout, max_concurrency, retry, upload, rng: as for :class:`d2v_client.Client`.
        transport: an ``httpx`` async transport (tests: ``httpx.MockTransport`` or ``httpx.ASGITransport``).
        sleep: the coroutine used between retries (injectable for tests).
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        http = httpx.AsyncClient(
            base_url=base_url or default_base_url(),
            headers=default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )
        self._transport = AsyncTransport(http, retry or RetryPolicy(), sleep=sleep, rng=rng)
        self.max_concurrency = max(1, max_concurrency)
        self.upload = upload
        self._info: ServerInfo | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    async def info(self, *, refresh: bool = False) -> ServerInfo:
        """``GET /info`` (cached); empty info when the server has none.

        Raises:
            D2VClientError: the server could not be reached or answered with an error other than 404.
        """
        if self._info is None or refresh:
            try:
                self._info = ServerInfo.from_json(await self._transport.request("GET", "/info"))
            except NotFoundError:
                self._info = ServerInfo()
        return self._info

    async def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the entries of its ``data`` list.

        Raises:
            D2VClientError: on any failure.
        """
        return list((await self._transport.request("GET", "/v1/models")).get("data", []))

    async def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 2xx (no retries)."""
        try:
            return (await self._transport.http.get("/readyz")).is_success
        except httpx.HTTPError:
            return False

    async def embed(self, modality: Modality, inputs: Any, **options: Any) -> Embeddings:
        """Embed inputs of one modality; ``options`` are those of :class:`EmbedOptions`.

        Raises:
            D2VClientError: see the ``embed_*`` methods.
        """
        opts, items = EmbedOptions(**options), as_list(inputs)
        job, chunks = _core.plan_embed(modality, items, opts, await self.info(), self.upload == "multipart")

        async def send(chunk: _core.Chunk) -> list[np.ndarray]:
            req = job.request(chunk)
            body = await self._transport.request("POST", req.path, json=req.json, files=req.files, data=req.data)
            return job.parse(chunk, body)

        parts = await gather_chunks(send, chunks, self.max_concurrency)
        return job.assemble(list(parts))


async def gather_chunks(
    send: Callable[[_core.Chunk], Awaitable[list[np.ndarray]]], chunks: Iterable[_core.Chunk], max_concurrency: int
) -> list[list[np.ndarray]]:
    """Every chunk through ``send`` with at most ``max_concurrency`` in flight; results in chunk order (shared
    by the HTTP and gRPC asyncio clients). Inputs are all encoded before the first request goes out."""
    gate = asyncio.Semaphore(max_concurrency)

    async def bounded(chunk: _core.Chunk) -> list[np.ndarray]:
        async with gate:
            return await send(chunk)

    tasks = [asyncio.ensure_future(bounded(c)) for c in list(chunks)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
