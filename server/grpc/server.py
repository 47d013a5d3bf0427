"""The gateway's gRPC server (``grpc.aio``): KServe v2 inference, ``grpc.health.v1`` and server reflection.

Started and stopped by the app's lifespan next to the HTTP app, in the same event loop, over the same
``app.state`` (models, batchers, limits, keys, metrics). It binds ``settings.host:settings.grpc_port``
(TLS with ``grpc_tls_cert`` / ``grpc_tls_key``). Messages up to twice ``max_body_bytes`` are read, so an
oversized request is answered INVALID_ARGUMENT naming the limit; beyond that gRPC itself refuses it
(RESOURCE_EXHAUSTED "larger than max") before any parsing.

Health (no API key, as the HTTP probes): ``""`` and ``inference.GRPCInferenceService`` are SERVING when
every model is ready and its engine healthy, each model name when that model is, ``liveness`` while the
process runs; all turn NOT_SERVING when draining. Kubernetes' native gRPC probes use ``liveness`` and ``""``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from d2v.core.errors import ConfigError

from .inference import InferenceService

log = logging.getLogger(__name__)

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # inference.GRPCInferenceService
LIVENESS = "liveness"
HEALTH_POLL_S = 0.5
_ENGINE_CHECK_S = 2.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.settings = state.settings
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._sync: asyncio.Task | None = None
        self._statuses: dict[str, int] = {}

    def _credentials(self) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.grpc_tls_cert is None:
            return None
        try:
            pair = (s.grpc_tls_key.read_bytes(), s.grpc_tls_cert.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the gRPC TLS certificate or key: {exc}") from None
        return grpc.ssl_server_credentials([pair])

    async def start(self) -> None:
        limit = 2 * self.settings.max_body_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)]
        server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(self.state), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        credentials = self._credentials()
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise ConfigError(f"cannot bind gRPC to {address}: {exc}") from None
        await server.start()
        self._server = server
        await self.health.set(LIVENESS, _SERVING)
        await self._update()
        self._sync = asyncio.create_task(self._sync_health(), name="d2v-grpc-health")
        log.info("gRPC (KServe v2%s) on %s", ", TLS" if credentials else "", address)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING everywhere first, then stop accepting and give in-flight calls ``grace`` seconds."""
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # ------------------------------------------------------------------------------------------ health
    async def _engine_ok(self, model: Any) -> bool:
        try:
            return bool(await asyncio.wait_for(model.engine.health(), _ENGINE_CHECK_S))
        except Exception:  # any failure to answer means "not healthy"
            return False

    async def _update(self) -> None:
        models = list(self.state.registry)
        draining = self.state.draining
        ready = [m for m in models if m.ready and not draining]
        healthy = dict(zip([m.name for m in ready], await asyncio.gather(*map(self._engine_ok, ready)), strict=True))
        per_model = {m.name: healthy.get(m.name, False) for m in models}
        overall = bool(models) and all(per_model.values())
        wanted = {"": overall, SERVICE: overall, **per_model}
        for name, ok in wanted.items():
            status = _SERVING if ok else _NOT_SERVING
            if self._statuses.get(name) != status:
                self._statuses[name] = status
                await self.health.set(name, status)

    async def _sync_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            try:
                await self._update()
            except Exception:  # health reporting must never take the server down
                log.exception("updating gRPC health failed")
