"""What both embedding APIs share: input limits, media resolution and the embed -> shape step."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Request

from d2v.core.errors import InvalidInput, PayloadTooLarge
from d2v.runtime.postprocess import shape_vector

from ..served_model import ServedModel
from ..settings import ServerSettings


def check_count(n: int, settings: ServerSettings) -> None:
    if n == 0:
        raise InvalidInput("input is empty: send at least one item")
    if n > settings.max_items_per_request:
        raise PayloadTooLarge(
            f"{n} inputs in one request; the limit is {settings.max_items_per_request}", code="too_many_items"
        )


async def resolve_media(request: Request, values: list[str], modality: str) -> list[bytes]:
    media = request.app.state.media

    async def one(index: int, value: str) -> bytes:
        try:
            return await media.resolve(value, modality)
        except InvalidInput as exc:
            exc.message = f"input[{index}]: {exc.message}"
            exc.args = (exc.message,)
            raise

    return list(await asyncio.gather(*(one(i, v) for i, v in enumerate(values))))


async def embed_and_shape(
    model: ServedModel,
    raws: list[Any],
    *,
    pooling: str,
    top_k: int | None,
    normalize: bool,
    dimensions: int | None,
    truncate: bool | None,
) -> tuple[list[np.ndarray], list[int]]:
    """Returns the shaped vectors ([D'] or [T_i, D']) and the model tokens per item."""
    dim = model.manifest.embedding_dim
    if dimensions is not None and dimensions > dim:  # fail before spending any compute
        raise InvalidInput(f"dimensions={dimensions} is larger than the model's embedding size {dim}")
    model.check_options(pooling, top_k)
    items = await model.load_items(raws, truncate=truncate)
    results = await model.embed(items, pooling=pooling, top_k=top_k)
    model.metrics.items.labels(model.name).inc(len(results))
    vectors = [shape_vector(r.vector, dim=dim, dimensions=dimensions, normalize=normalize) for r in results]
    return vectors, [r.tokens for r in results]
