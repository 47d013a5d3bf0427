"""The per-modality methods every client has, written once: ``embed_text``, ``embed_image``, ``embed_audio``
(the modality names) on top of each client's ``embed(modality, inputs, **options)``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from d2v_client._types import Embeddings, Pooling


class EmbedMethods:
    """For the blocking clients (:class:`~d2v_client.Client`, :class:`~d2v_client.GrpcClient`)."""

    def embed(self, modality: str, inputs: Any, **options: Any) -> Embeddings:
        raise NotImplementedError

    def embed_text(
        self,
        texts: str | Iterable[str],
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed strings.

        Returns:
            ``np.ndarray [N, D]`` float32, or for ``pooling="none"`` one ``[T_i, D]`` array per input.

        Raises:
            BadRequestError: a non-string input or one the server rejects (with the server's message).
            AuthenticationError, OverloadedError, ServerError, D2VConnectionError: see :mod:`d2v_client.errors`.
        """
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
        return self.embed("text", texts, **opts)

    def embed_image(
        self,
        images: Any,
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed images given as paths, encoded bytes, PIL images or ``HxWxC`` uint8 arrays (one or a list).

        Raises:
            BadRequestError: an unreadable path, an unsupported input, or one the server rejects.
            AuthenticationError, OverloadedError, ServerError, D2VConnectionError: see :mod:`d2v_client.errors`.
        """
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
        return self.embed("image", images, **opts)

    def embed_audio(
        self,
        audio: Any,
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed audio given as paths, encoded file bytes or ``(samples, sample_rate)`` pairs (one or a list).

        Raises:
            BadRequestError: an unreadable path, an unsupported input, or one the server rejects.
            AuthenticationError, OverloadedError, ServerError, D2VConnectionError: see :mod:`d2v_client.errors`.
        """
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
        return self.embed("audio", audio, **opts)


class AsyncEmbedMethods:
    """For the asyncio clients (:class:`~d2v_client.AsyncClient`, :class:`~d2v_client.AsyncGrpcClient`)."""

    async def embed(self, modality: str, inputs: Any, **options: Any) -> Embeddings:
        raise NotImplementedError

    async def embed_text(
        self,
        texts: str | Iterable[str],
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed strings; see :meth:`d2v_client.Client.embed_text`."""
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
        return await self.embed("text", texts, **opts)

    async def embed_image(
        self,
        images: Any,
        *,
        model: str | None = None,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        layers: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed images; see :meth:`d2v_client.Client.embed_image`."""
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
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
        truncate: bool | None = None,
    ) -> Embeddings:
        """Embed audio; see :meth:`d2v_client.Client.embed_audio`."""
        opts = dict(
            model=model, pooling=pooling, normalize=normalize, dimensions=dimensions, layers=layers, truncate=truncate
        )
        return await self.embed("audio", audio, **opts)
