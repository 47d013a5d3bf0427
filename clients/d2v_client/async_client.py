"""The asyncio client: same behaviour as :class:`d2v_client.Client`, awaitable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import numpy as np

from d2v_client import _core
from d2v_client._http import AsyncTransport, RetryPolicy, default_headers
from d2v_client._types import Embeddings, EmbedOptions, Modality, Pooling, ServerInfo, UploadMode, as_list
from d2v_client.errors import NotFoundError


class AsyncClient:
    """An asyncio client for the data2vec embedding server.

    Chunking, bounded concurrency (an ``asyncio.Semaphore`` of ``max_concurrency``), retries and errors
    are those of :class:`d2v_client.Client`. Use ``async with``, or call :meth:`aclose`.

    Example::

        async with AsyncClient("http://127.0.0.1:8000") as client:
            vecs = await client.embed_images(["a.png", "b.jpg"])

    Args:
        base_url, api_key, timeout, max_concurrency, retry, upload, rng: as for :class:`d2v_client.Client`.
        transport: an ``httpx`` async transport (tests: ``httpx.MockTransport`` or ``httpx.ASGITransport``).
        sleep: the coroutine used between retries (injectable for tests).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
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
            base_url=base_url, headers=default_headers(api_key), timeout=timeout, transport=transport
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

    async def embed_text(
        self,
        texts: str | Iterable[str],
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
    ) -> Embeddings:
        """Embed strings; see :meth:`d2v_client.Client.embed_text`.

        Raises:
            D2VClientError: see :mod:`d2v_client.errors`.
        """
        opts = dict(model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers)
        return await self.embed("text", texts, **opts)

    async def embed_images(
        self,
        images: Any,
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
    ) -> Embeddings:
        """Embed images; see :meth:`d2v_client.Client.embed_images`.

        Raises:
            D2VClientError: see :mod:`d2v_client.errors`.
        """
        opts = dict(model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers)
        return await self.embed("image", images, **opts)

    async def embed_audio(
        self,
        audio: Any,
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
    ) -> Embeddings:
        """Embed audio; see :meth:`d2v_client.Client.embed_audio`.

        Raises:
            D2VClientError: see :mod:`d2v_client.errors`.
        """
        opts = dict(model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers)
        return await self.embed("audio", audio, **opts)

    async def embed(self, modality: Modality, inputs: Any, **options: Any) -> Embeddings:
        """Embed inputs of one modality; ``options`` are those of :class:`EmbedOptions`.

        Raises:
            D2VClientError: see the ``embed_*`` methods.
        """
        opts, items = EmbedOptions(**options), as_list(inputs)
        job, chunks = _core.plan_embed(modality, items, opts, await self.info(), self.upload == "multipart")
        gate = asyncio.Semaphore(self.max_concurrency)

        async def send(chunk: _core.Chunk) -> list[np.ndarray]:
            async with gate:
                req = job.request(chunk)
                body = await self._transport.request("POST", req.path, json=req.json, files=req.files, data=req.data)
                return job.parse(chunk, body)

        all_chunks = list(chunks)  # encode every input before the first request goes out
        tasks = [asyncio.ensure_future(send(c)) for c in all_chunks]
        try:
            parts = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return job.assemble(list(parts))
