"""``POST /v1/embeddings``: OpenAI-compatible (the openai SDK works against it, base64 by default).

Extensions: ``modality`` (the modality of string inputs; it must match the model's), media items
``{"type": "image"|"audio", "data": ...}`` in ``input``, and ``truncate: false``. Vectors are the model's
default pooling, always L2-normalised (as OpenAI's are). ``usage.prompt_tokens`` counts model tokens:
text tokens, audio frames or image patches.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from d2v.core.errors import InvalidInput
from d2v.runtime.postprocess import encode

from ..auth import require_api_key
from ..schemas import EMBED_ERRORS, EmbeddingsRequest, EmbeddingsResponse, MediaItem
from ..served_model import TokenIds
from .common import check_count, embed_and_shape, resolve_media

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["openai"])


def _flatten(body: EmbeddingsRequest) -> list[Any]:
    """``input`` as a list of str / TokenIds / MediaItem, in request order."""
    value = body.input
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [TokenIds(list(value))]
    if value and all(isinstance(v, list) for v in value):
        return [TokenIds(list(v)) for v in value]
    return list(value)


def _infer_modality(items: list[Any]) -> str:
    """Without ``model`` or ``modality``: media items name theirs; strings and token ids are text."""
    if not items:
        raise InvalidInput("input is empty: send at least one item")
    kinds = {item.type if isinstance(item, MediaItem) else "text" for item in items}
    if len(kinds) != 1:
        raise InvalidInput(f"input mixes modalities {sorted(kinds)}; send one modality per request")
    return kinds.pop()


async def _raws(request: Request, items: list[Any], modality: str) -> list[Any]:
    raws: list[Any] = [None] * len(items)
    media_index, media_values = [], []
    for i, item in enumerate(items):
        if isinstance(item, MediaItem):
            if item.type != modality:
                raise InvalidInput(f"input[{i}] is {item.type} but the model embeds {modality}")
            item = item.data
        if isinstance(item, str) and modality != "text":
            media_index.append(i)
            media_values.append(item)
        else:
            raws[i] = item
    for i, data in zip(media_index, await resolve_media(request, media_values, modality), strict=True):
        raws[i] = data
    return raws


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=EMBED_ERRORS)
async def create_embeddings(body: EmbeddingsRequest, request: Request) -> JSONResponse:
    state = request.app.state
    items = _flatten(body)
    if body.model is not None:
        model = state.registry.get(body.model)
        if body.modality is not None and body.modality != model.modality:
            raise InvalidInput(f"model {body.model!r} embeds {model.modality}, not {body.modality}")
        modality = model.modality
    else:
        modality = body.modality or _infer_modality(items)
    model = state.registry.resolve(modality, body.model)  # readiness check
    check_count(len(items), state.settings)
    with model.admission.admit(len(items), len(await request.body())):  # before any decoding
        raws = await _raws(request, items, model.modality)
        vectors, tokens = await embed_and_shape(
            model,
            raws,
            pooling=model.manifest.pooling,
            top_k=None,
            normalize=True,
            dimensions=body.dimensions,
            truncate=body.truncate,
        )
    total = sum(tokens)
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model.name,
        "usage": {"prompt_tokens": total, "total_tokens": total, "items": len(vectors)},
    }
    # Built directly: validating thousands of floats through pydantic again would only cost time.
    return JSONResponse(payload)
