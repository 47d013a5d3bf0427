"""Discovery and operations: ``/v1/models``, ``/info`` (behind the API key), ``/livez``, ``/readyz``, ``/metrics``.

Probes and metrics stay open so orchestrators and scrapers need no key; they reveal no model data.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from d2v import __version__
from d2v.core.errors import Unavailable

from ..auth import require_api_key
from ..schemas import ModelCard, ModelList, error_responses

api = APIRouter(dependencies=[Depends(require_api_key)], tags=["discovery"])
probes = APIRouter(tags=["operations"])


@api.get("/v1/models", response_model=ModelList, responses=error_responses(401))
async def list_models(request: Request) -> ModelList:
    registry = request.app.state.registry
    return ModelList(data=[ModelCard(id=m.name, modality=m.modality, dim=m.manifest.embedding_dim) for m in registry])


@api.get("/info", responses=error_responses(401))
async def info(request: Request) -> dict:
    s = request.app.state.settings
    return {
        "version": __version__,
        "engine": s.engine,
        "ready": request.app.state.registry.ready,
        "models": [m.describe() for m in request.app.state.registry],
        "limits": {
            "max_items_per_request": s.max_items_per_request,
            "max_body_bytes": s.max_body_bytes,
            "max_batch_size": s.max_batch_size,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_samples": s.max_batch_samples,
            "max_queue": s.max_queue,
            "max_text_chars": s.max_text_chars,
            "max_image_pixels": s.max_image_pixels,
            "max_audio_sample_rate": s.max_audio_sample_rate,
            "truncate": s.truncate,
            "url_fetch": s.allow_url_fetch,
        },
        "notes": {"dimensions": "data2vec is not Matryoshka-trained: truncated vectors lose more quality"},
    }


@probes.get("/livez")
async def livez() -> dict:
    return {"status": "ok"}


@probes.get("/readyz", responses=error_responses(503))
async def readyz(request: Request) -> dict:
    state = request.app.state
    if state.draining:
        raise Unavailable("shutting down")
    waiting = [m.name for m in state.registry if not m.ready]
    if waiting:
        errors = {m.name: m.error for m in state.registry if m.error}
        detail = f"; errors: {errors}" if errors else ""
        raise Unavailable(f"not ready: warming up {waiting}{detail}", code="not_ready")
    # A remote engine (Triton) can go away after warm-up: ask it, briefly.
    checks = await asyncio.gather(
        *(asyncio.wait_for(m.engine.health(), timeout=2.0) for m in state.registry), return_exceptions=True
    )
    down = [m.name for m, ok in zip(state.registry, checks, strict=True) if ok is not True]
    if down:
        raise Unavailable(f"engine not healthy for {down}", code="engine_unavailable")
    return {"status": "ready"}


@probes.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
