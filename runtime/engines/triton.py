"""Triton engine: the same API backed by a Triton server (KServe v2) through tritonclient's asyncio clients.

Two modes, chosen by ``--triton-mode``:

- ``encoder`` (default): preprocess here (the gateway's thread pool, off Triton's GIL-bound python
  backend) and send the ONNX tensors to the encoder model, ``manifest.triton.encoder``
  (``<name>_encoder``).
- ``ensemble``: send raw bytes as ``manifest.triton.raw_input`` (BYTES [B, 1]) to the ensemble
  ``manifest.triton.ensemble`` (``<name>``: ``<name>_preprocess`` -> ``<name>_encoder``).

Both return the contract outputs (``d2v_*``). Error mapping: Triton's queue-full ("Exceeds maximum queue
size", 503 / UNAVAILABLE) -> ``Overloaded`` (429 + Retry-After); Triton unreachable -> ``Unavailable``
(503) and the client is rebuilt on the next call, so the gateway recovers without a restart once Triton
is back; invalid-argument errors (e.g. an undecodable file in the preprocess model) -> 400.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from d2v.core.contract import output_names
from d2v.core.errors import D2VError, InternalError, InvalidInput, Overloaded, Unavailable
from d2v.core.manifest import ModelManifest

from .base import Arrays, warmup_inputs

log = logging.getLogger(__name__)

_QUEUE_FULL = "exceeds maximum queue size"
_UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED", "503", "504")


def map_triton_error(status: str | None, message: str, *, model: str, url: str, retry_after: float = 1.0) -> D2VError:
    """One Triton failure (gRPC status name or HTTP status code, and its message) -> our error class."""
    status = status or ""
    lowered = message.lower()
    if _QUEUE_FULL in lowered:
        return Overloaded(f"Triton queue for {model!r} is full", retry_after=retry_after)
    if "unknown model" in lowered or "not found" in lowered or "not ready" in lowered or status.endswith("NOT_FOUND"):
        return Unavailable(f"Triton at {url} does not serve a ready model {model!r}", code="model_not_loaded")
    if status in _UNREACHABLE:
        return Unavailable(f"Triton at {url} is unavailable ({status}); retry shortly", code="backend_unavailable")
    if status in ("StatusCode.INVALID_ARGUMENT", "400"):
        return InvalidInput(f"Triton rejected the input for {model!r}: {message}")
    return InternalError(f"Triton failed on {model!r} ({status or 'unknown status'})")


def grpc_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's default channel options plus what recovery needs.

    gRPC shares subchannels between channels to the same address (a process-global pool), and a subchannel
    that failed to connect sits in exponential reconnect backoff (1 s, growing to 120 s). A client rebuilt
    after Triton went down would inherit that backoff and keep failing fast with UNAVAILABLE long after
    Triton is back. A channel-local pool gives every rebuilt client a fresh connection attempt; the short
    backoff keeps a long-lived channel from waiting minutes either.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class TritonEngine:
    kind = "triton"

    def __init__(
        self,
        manifest: ModelManifest,
        model_dir: Path,
        *,
        url: str = "127.0.0.1:8001",
        protocol: Literal["grpc", "http"] = "grpc",
        mode: Literal["encoder", "ensemble"] = "encoder",
        model_name: str | None = None,
        timeout_s: float = 30.0,
        retry_after_s: float = 1.0,
    ) -> None:
        self.manifest = manifest
        self.model_dir = Path(model_dir)
        self.url = url
        self.protocol = protocol
        self.mode = mode
        self.raw_inputs = mode == "ensemble"
        names = manifest.triton
        self.model_name = model_name or (names.ensemble if self.raw_inputs else names.encoder)
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client: Any = None
        self._lib: Any = None

    # ---------------------------------------------------------------------------------- client
    def _module(self) -> Any:
        if self._lib is None:
            try:
                if self.protocol == "grpc":
                    import tritonclient.grpc.aio as lib
                else:
                    import tritonclient.http.aio as lib
            except ImportError as exc:
                raise Unavailable(
                    f"the Triton engine needs tritonclient[{self.protocol}]: pip install 'data2vec-stack[triton]'"
                ) from exc
            self._lib = lib
        return self._lib

    def _get_client(self) -> Any:
        if self._client is None:
            lib = self._module()
            if self.protocol == "grpc":
                self._client = lib.InferenceServerClient(url=self.url, channel_args=grpc_channel_args())
            else:
                self._client = lib.InferenceServerClient(url=self.url)
        return self._client

    async def _reset(self) -> None:
        """Drop the client after a transport failure: the next call reconnects from scratch."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken channel may fail too; nothing to recover
                log.debug("closing the Triton client failed", exc_info=True)

    def _to_error(self, exc: BaseException) -> D2VError:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            return map_triton_error(
                exc.status(), exc.message() or "", model=self.model_name, url=self.url, retry_after=self.retry_after_s
            )
        # tritonclient.http.aio lets aiohttp's connection errors and timeouts through unwrapped.
        return Unavailable(
            f"Triton at {self.url} is unreachable ({type(exc).__name__}); retry shortly", code="backend_unavailable"
        )

    # ---------------------------------------------------------------------------------- engine API
    async def load(self) -> None:
        self._get_client()  # no I/O: the gateway starts even while Triton is still coming up

    async def embed(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        from tritonclient.utils import np_to_triton_dtype

        lib = self._module()
        tensors = []
        for name, array in inputs.items():
            tensor = lib.InferInput(
                name, list(array.shape), "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(np.ascontiguousarray(array) if array.dtype != object else array)
            tensors.append(tensor)
        requested = [lib.InferRequestedOutput(name) for name in outputs]
        timeout = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = await asyncio.wait_for(
                self._get_client().infer(self.model_name, tensors, outputs=requested, **timeout),
                timeout=self.timeout_s + 1.0,
            )
        except D2VError:
            raise
        except Exception as exc:  # tritonclient and aiohttp raise several unrelated types; map them all here
            error = self._to_error(exc)
            if isinstance(error, Unavailable):
                await self._reset()
            raise error from exc
        return {name: result.as_numpy(name) for name in outputs}

    async def health(self) -> bool:
        try:
            return bool(await self._get_client().is_model_ready(self.model_name))
        except Exception:  # any failure to answer means "not healthy"
            await self._reset()
            return False

    async def warmup(self) -> None:
        if not await self.health():
            raise Unavailable(f"Triton at {self.url} has no ready model {self.model_name!r}")
        if not self.raw_inputs:  # the ensemble needs real encoded files; the health check is enough there
            await self.embed(warmup_inputs(self.manifest), output_names(self.manifest.modality))

    async def close(self) -> None:
        await self._reset()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.kind,
            "triton_url": self.url,
            "protocol": self.protocol,
            "mode": self.mode,
            "triton_model": self.model_name,
        }
