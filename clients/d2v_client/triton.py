"""Optional transport: KServe v2 gRPC straight to a Triton ensemble, skipping the HTTP gateway.

Needs the ``triton`` extra (``pip install 'd2v-client[triton]'``). The ensemble exported by ``d2v export
--triton`` is named after the model and takes raw request bytes in ``raw_input`` (BYTES ``[B, 1]``: UTF-8
text or encoded image/audio files); preprocessing runs inside Triton. It answers the ONNX outputs
``d2v_mean_embedding`` / ``d2v_cls_embedding`` ``[B, D]`` and ``d2v_token_embeddings`` ``[B, T, D]`` with
``d2v_token_mask``. Pooling selection, L2 normalisation and ``dimensions`` are applied here, as the gateway
would. Example::

    from d2v_client.triton import TritonClient

    with TritonClient("127.0.0.1:8001", model="d2v-text") as client:
        vecs = client.embed_text(["hello", "world"])
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from d2v_client._encode import audio_bytes, image_bytes
from d2v_client._http import RetryPolicy, delay_or_raise
from d2v_client._types import Embeddings, Modality, Pooling, as_list
from d2v_client.errors import (
    BadRequestError,
    D2VClientError,
    D2VConnectionError,
    D2VTimeoutError,
    NotFoundError,
    OverloadedError,
    ServerError,
    ServiceUnavailableError,
)

TOKENS_OUTPUT = "d2v_token_embeddings"
TOKEN_MASK_OUTPUT = "d2v_token_mask"
POOLED_OUTPUTS = {"mean": "d2v_mean_embedding", "cls": "d2v_cls_embedding"}

_INSTALL_HINT = "the Triton transport needs tritonclient: pip install 'd2v-client[triton]'"

# gRPC status name (as in tritonclient's ``InferenceServerException.status()``) -> SDK error class.
_GRPC_STATUS: dict[str, type[D2VClientError]] = {
    "INVALID_ARGUMENT": BadRequestError,
    "NOT_FOUND": NotFoundError,
    "RESOURCE_EXHAUSTED": OverloadedError,
    "UNAVAILABLE": ServiceUnavailableError,
    "DEADLINE_EXCEEDED": D2VTimeoutError,
    "CANCELLED": D2VConnectionError,
}


def _grpc_module() -> tuple[Any, type[Exception]]:
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return grpcclient, InferenceServerException


# Triton reports a full dynamic-batching queue as UNAVAILABLE with this message: it is an overload (as the
# gateway's 429), not an outage.
_QUEUE_FULL = "exceeds maximum queue size"


def map_triton_error(exc: Exception) -> D2VClientError:
    """The typed SDK error for a ``tritonclient`` exception (status ``StatusCode.X`` or ``X``)."""
    status = str(getattr(exc, "status", lambda: None)() or "")
    name = status.rsplit(".", 1)[-1].upper()
    message = getattr(exc, "message", lambda: None)() or str(exc)
    cls = OverloadedError if _QUEUE_FULL in str(message).lower() else _GRPC_STATUS.get(name, ServerError)
    return cls(str(message), code=name or None)


def _channel_args(grpc: Any) -> list[tuple[str, Any]]:
    """tritonclient's default options plus a short reconnect backoff.

    After a failed connection attempt gRPC waits before trying again (1 s, growing to 120 s by default) and
    fails every call fast with UNAVAILABLE meanwhile, so the retries would all be spent while Triton is
    already back. Capping the backoff at 1 s keeps the retry policy in charge of the waiting.
    """
    return [
        ("grpc.max_send_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def finish(pooled: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Truncate to ``dimensions`` and L2-normalise, as the gateway does (truncate, then re-normalise)."""
    out = np.asarray(pooled, dtype=np.float32)
    if dimensions:
        out = out[..., :dimensions]
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


class TritonClient:
    """Embeddings from a Triton ensemble over KServe v2 gRPC.

    Args:
        url: Triton's gRPC endpoint, ``host:port``.
        model: the ensemble name (the exported model's name).
        raw_input: the ensemble's BYTES input.
        max_batch_size: items per request; default: the ensemble's ``max_batch_size`` from its config.
        timeout: per-request client timeout in seconds.
        retry: retries on RESOURCE_EXHAUSTED / UNAVAILABLE / deadline errors, with backoff and jitter.
        client: an already built ``tritonclient.grpc.InferenceServerClient`` (tests inject a fake).

    Raises:
        ImportError: tritonclient is not installed (the message says what to install).
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        model: str,
        raw_input: str = "raw_input",
        max_batch_size: int | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._grpc, self._triton_error = _grpc_module()
        self._client = client or self._grpc.InferenceServerClient(url=url, channel_args=_channel_args(self._grpc))
        self.model = model
        self.raw_input = raw_input
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._max_batch = max_batch_size
        self._sleep = sleep
        self._rng = rng or random.Random()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()

    def max_batch_size(self) -> int:
        """The ensemble's ``max_batch_size`` (read once from its config; 1 when it does not batch).

        Raises:
            D2VClientError: Triton is unreachable or does not know the model.
        """
        if self._max_batch is None:
            config = self._call(lambda: self._client.get_model_config(self.model, as_json=True))
            config = config.get("config", config)
            self._max_batch = max(1, int(config.get("max_batch_size", 0) or 1))
        return self._max_batch

    def embed_text(self, texts: str | Iterable[str], **options: Any) -> Embeddings:
        """Embed strings; options as for :meth:`embed`.

        Raises:
            D2VClientError: see :meth:`embed`.
        """
        return self.embed("text", texts, **options)

    def embed_images(self, images: Any, **options: Any) -> Embeddings:
        """Embed images (paths, encoded bytes, PIL images); options as for :meth:`embed`.

        Raises:
            D2VClientError: see :meth:`embed`.
        """
        return self.embed("image", images, **options)

    def embed_audio(self, audio: Any, **options: Any) -> Embeddings:
        """Embed audio (paths, encoded bytes, ``(samples, rate)``); options as for :meth:`embed`.

        Raises:
            D2VClientError: see :meth:`embed`.
        """
        return self.embed("audio", audio, **options)

    def embed(
        self,
        modality: Modality,
        inputs: Any,
        *,
        pooling: Pooling = "mean",
        normalize: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Embed inputs of one modality.

        Returns:
            ``[N, D]`` float32, or for ``pooling="none"`` one ``[T_i, D]`` array per input (padding removed).

        Raises:
            BadRequestError: an unreadable input, or one Triton rejects (INVALID_ARGUMENT).
            OverloadedError, ServiceUnavailableError: after the retries are spent.
            ServerError: any other Triton failure.
        """
        if pooling not in ("mean", "cls", "none"):
            raise BadRequestError(f"pooling must be mean, cls or none, got {pooling!r}")
        raw = [self._raw(modality, item) for item in as_list(inputs)]
        step = self.max_batch_size() if raw else 1
        parts: list[Any] = []
        for start in range(0, len(raw), step):
            parts.extend(self._infer(raw[start : start + step], pooling))
        if pooling == "none":
            return [finish(t, False, dimensions) for t in parts]
        if not parts:
            return np.zeros((0, dimensions or 0), dtype=np.float32)
        return finish(np.stack(parts), normalize, dimensions)

    @staticmethod
    def _raw(modality: Modality, item: Any) -> bytes:
        if modality == "text":
            if not isinstance(item, str):
                raise BadRequestError(f"text inputs must be str, got {type(item).__name__}")
            return item.encode("utf-8")
        return image_bytes(item) if modality == "image" else audio_bytes(item)

    def _infer(self, batch: list[bytes], pooling: Pooling) -> list[np.ndarray]:
        grpc = self._grpc
        tensor = grpc.InferInput(self.raw_input, [len(batch), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(batch, dtype=object).reshape(-1, 1))
        names = [TOKENS_OUTPUT, TOKEN_MASK_OUTPUT] if pooling == "none" else [POOLED_OUTPUTS[pooling]]
        outputs = [grpc.InferRequestedOutput(n) for n in names]
        result = self._call(
            lambda: self._client.infer(self.model, [tensor], outputs=outputs, client_timeout=self.timeout)
        )
        if pooling != "none":
            return list(result.as_numpy(names[0]).astype(np.float32, copy=False))
        tokens, mask = result.as_numpy(TOKENS_OUTPUT), result.as_numpy(TOKEN_MASK_OUTPUT)
        return [tokens[i, mask[i].astype(bool)] for i in range(len(batch))]

    def _call(self, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except self._triton_error as exc:
                err = map_triton_error(exc)
            self._sleep(delay_or_raise(self.retry, err, attempt, self._rng))  # gRPC errors carry no Retry-After
            attempt += 1
