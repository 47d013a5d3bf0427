"""The app factory: ``create_app(settings, engines=None)``.

Startup: discover models and build their engines (here, so a bad store fails before uvicorn binds) ->
lifespan: load engines and start batchers (fail fast), then the gRPC server (``grpc_port``; 0 = off) over
the same models -> warm-up in the background (``/readyz`` and gRPC health turn ready when every model is
warm; ``/livez`` answers at once). Shutdown: uvicorn stops accepting and lets in-flight HTTP requests
finish (``graceful_timeout_s``), then the lifespan marks the app draining, stops gRPC (in-flight calls get
``graceful_timeout_s`` too), drains the batchers and closes the engines. Everything lives on
``app.state``; there are no module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from d2v import __version__
from d2v.core.errors import D2VError, Unavailable
from d2v.runtime.engines import EmbeddingEngine, build_engine
from d2v.runtime.store import discover

from .error_handlers import install_error_handlers
from .media import MediaResolver, fetch_client
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, MetricsMiddleware
from .registry import ModelRegistry
from .routes import native, openai, ops
from .served_model import ServedModel
from .settings import SETTINGS_ENV, ServerSettings

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0


async def _warm_up(model: ServedModel, warmup: bool) -> None:
    """Warm one model; a remote engine that is down (``Unavailable``) is retried until it comes up."""
    delay = 0.2
    while True:
        try:
            if warmup:
                await model.warmup()
            elif await model.engine.health():
                model.ready = True
            else:
                raise Unavailable(f"engine for {model.name!r} is not healthy yet")
            model.error = None
            log.info("model %r ready (%s)", model.name, model.engine.kind)
            return
        except Unavailable as exc:
            model.error = exc.message
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
        except D2VError as exc:  # a permanent problem (bad graph, wrong shapes): report, do not spin
            model.error = exc.message
            log.error("warm-up of %r failed: %s", model.name, exc.message)
            return


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: ServerSettings = state.settings
    http_client = None
    if settings.allow_url_fetch:
        http_client = fetch_client()
    state.media = MediaResolver(settings, http_client)
    started: list[ServedModel] = []
    try:
        for model in state.registry:
            await model.start()
            started.append(model)
        if settings.grpc_port:
            from .grpc.server import GrpcServer

            state.grpc = GrpcServer(state)
            await state.grpc.start()
        state.warmup_task = asyncio.gather(*(_warm_up(m, settings.warmup) for m in state.registry))
        yield
    finally:
        state.draining = True
        if state.grpc is not None:
            await state.grpc.stop(settings.graceful_timeout_s)
        if state.warmup_task is not None:
            state.warmup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.warmup_task
        for model in started:
            await model.stop()  # drains whatever is still queued
        if http_client is not None:
            await http_client.aclose()
        state.pool.shutdown(wait=False, cancel_futures=True)


def build_engines(settings: ServerSettings) -> list[EmbeddingEngine]:
    return [
        build_engine(manifest, path, settings.engine_config())
        for manifest, path in discover(settings.store, settings.models)
    ]


def create_app(settings: ServerSettings | None = None, engines: Sequence[EmbeddingEngine] | None = None) -> FastAPI:
    """``engines`` overrides discovery (tests, embedding the server in another process)."""
    settings = settings or ServerSettings()
    engines = list(engines) if engines is not None else build_engines(settings)
    metrics = Metrics()
    pool = ThreadPoolExecutor(
        max_workers=settings.preprocess_workers or min(8, os.cpu_count() or 1), thread_name_prefix="d2v-preprocess"
    )
    registry = ModelRegistry([ServedModel(engine, settings, pool, metrics) for engine in engines])

    app = FastAPI(title="d2v embeddings", version=__version__, lifespan=_lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.api_keys = settings.api_key_values()
    app.state.draining = False
    app.state.warmup_task = None
    app.state.grpc = None  # the GrpcServer while it runs
    app.state.media = MediaResolver(settings)

    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # added last = outermost: sees every response
    app.include_router(openai.router)
    app.include_router(native.router)
    app.include_router(ops.api)
    app.include_router(ops.probes)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker rebuilds the parent's settings from one variable."""
    raw = os.environ.get(SETTINGS_ENV)
    # Through __init__ (not model_validate_json) so D2V_API_KEYS, kept out of the JSON, is read too.
    settings = ServerSettings(**json.loads(raw)) if raw else ServerSettings()
    return create_app(settings)
