"""The SDK's typed error hierarchy, and the one place HTTP and gRPC failures are mapped onto it.

Every error the SDK raises is a :class:`D2VClientError`. Server errors carry the server's own message,
``type`` and ``code`` from its ``{"error": {"message", "type", "code"}}`` body::

    D2VClientError
    ├── BadRequestError            400, 404, 413, 415, 422: the input is wrong; do not retry
    │   ├── NotFoundError          404 (unknown model, endpoint)
    │   └── PayloadTooLargeError   413 (over a server limit)
    ├── AuthenticationError        401, 403
    ├── OverloadedError            429 (retryable; ``retry_after`` from the header)
    ├── ServerError                other 5xx
    │   └── ServiceUnavailableError  503 (retryable)
    └── D2VConnectionError         no HTTP response at all (retryable)
        └── D2VTimeoutError

gRPC status codes map the same way (:func:`error_from_grpc`): INVALID_ARGUMENT -> BadRequestError
(PayloadTooLargeError when the ``d2v-error-code`` trailer names a limit), NOT_FOUND -> NotFoundError,
UNAUTHENTICATED -> AuthenticationError, RESOURCE_EXHAUSTED -> OverloadedError (``retry-after`` trailer),
UNAVAILABLE -> ServiceUnavailableError (Triton's "exceeds maximum queue size" -> OverloadedError),
DEADLINE_EXCEEDED -> D2VTimeoutError, CANCELLED -> D2VConnectionError, anything else -> ServerError.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


class D2VClientError(Exception):
    """Base class of every SDK error.

    Attributes:
        message: the server's message (or the SDK's, for local failures).
        status: the HTTP status, or ``None`` when no response arrived.
        type: the server's error ``type`` (OpenAI style), when given.
        code: the server's machine-readable ``code``, when given.
        retryable: whether the SDK retries this error on its own.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}" if self.status else self.message


class BadRequestError(D2VClientError):
    """The request or one of its inputs was rejected (400/404/413/415/422). Retrying will not help."""


class NotFoundError(BadRequestError):
    """An unknown model or endpoint (404)."""


class PayloadTooLargeError(BadRequestError):
    """An input or the request body is over one of the server's limits (413)."""


class AuthenticationError(D2VClientError):
    """A missing or wrong API key (401/403)."""


class OverloadedError(D2VClientError):
    """The server's queue is full (429); ``retry_after`` holds its ``Retry-After`` in seconds."""

    retryable = True


class ServerError(D2VClientError):
    """The server failed (5xx)."""


class ServiceUnavailableError(ServerError):
    """The server or its backend is not ready (503); retryable."""

    retryable = True


class D2VConnectionError(D2VClientError):
    """No HTTP response: connection refused or reset, DNS failure, protocol error. Retryable."""

    retryable = True


class D2VTimeoutError(D2VConnectionError):
    """The request timed out (connect, read, write or pool)."""


_BY_STATUS: dict[int, type[D2VClientError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    429: OverloadedError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> D2VClientError:
    """Build the typed error for a non-2xx response.

    Args:
        status: the HTTP status code.
        body: the decoded JSON body (``{"error": {...}}``, the KServe ``{"error": "..."}``, or anything else)
            or the raw text when the body was not JSON.
        headers: the response headers (``Retry-After`` is read from them).
    """
    message, err_type, code = _error_fields(body, status)
    retry_after = parse_retry_after((headers or {}).get("retry-after"))
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequestError if 400 <= status < 500 else ServerError
    err = cls(message, status=status, type=err_type, code=code, retry_after=retry_after)
    if headers is not None and str(headers.get("x-should-retry", "")).lower() == "false":
        err.retryable = False
    return err


def _error_fields(body: Any, status: int) -> tuple[str, str | None, str | None]:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message") or inner.get("detail") or f"HTTP {status}"
            code = inner.get("code")
            return str(message), inner.get("type"), None if code is None else str(code)
        if isinstance(inner, str):
            return inner, None, None
        if "detail" in body:  # a framework default (e.g. FastAPI's 404 {"detail": "Not Found"})
            return str(body["detail"]), None, None
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None, None
    return f"HTTP {status}", None, None


# gRPC status name -> SDK error class (the gateway's mapping, server/error_handlers.py, read backwards).
_BY_GRPC_CODE: dict[str, type[D2VClientError]] = {
    "INVALID_ARGUMENT": BadRequestError,
    "OUT_OF_RANGE": BadRequestError,
    "FAILED_PRECONDITION": BadRequestError,
    "NOT_FOUND": NotFoundError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": AuthenticationError,
    "RESOURCE_EXHAUSTED": OverloadedError,
    "UNAVAILABLE": ServiceUnavailableError,
    "DEADLINE_EXCEEDED": D2VTimeoutError,
    "CANCELLED": D2VConnectionError,
}
#: ``d2v-error-code`` values of the gateway's "over a limit" errors.
_LIMIT_CODES = frozenset({"payload_too_large", "input_too_long", "too_many_items", "body_too_large"})
_QUEUE_FULL = "exceeds maximum queue size"  # Triton's full dynamic-batching queue: an overload, not an outage
_TOO_BIG = "larger than max"  # gRPC's own message-size refusal (RESOURCE_EXHAUSTED, before the handler)


def error_from_grpc(code: str, details: str, trailers: Mapping[str, str] | None = None) -> D2VClientError:
    """Build the typed error for a failed gRPC call.

    Args:
        code: the status code's name (``"INVALID_ARGUMENT"``; ``"StatusCode.X"`` works too).
        details: the status message.
        trailers: the trailing metadata (``retry-after``, ``d2v-error-code`` from the gateway).
    """
    name = code.rsplit(".", 1)[-1].upper()
    trailers = trailers or {}
    server_code = trailers.get("d2v-error-code")
    cls = _BY_GRPC_CODE.get(name, ServerError)
    lowered = details.lower()
    if cls is BadRequestError and server_code in _LIMIT_CODES or cls is OverloadedError and _TOO_BIG in lowered:
        cls = PayloadTooLargeError
    elif cls is ServiceUnavailableError and _QUEUE_FULL in lowered:
        cls = OverloadedError
    retry_after = parse_retry_after(trailers.get("retry-after"))
    return cls(details or name, type=name, code=server_code or name, retry_after=retry_after)


def error_from_stream_message(message: str) -> D2VClientError:
    """A ``ModelStreamInfer`` per-request error (only a message on the wire). The gateway starts it with the
    status name (``"RESOURCE_EXHAUSTED: ..."``); Triton's plain messages become :class:`ServerError`, or
    :class:`BadRequestError` for its input checks."""
    head, sep, rest = message.partition(": ")
    if sep and head in _BY_GRPC_CODE:
        return error_from_grpc(head, rest)
    lowered = message.lower()
    if _QUEUE_FULL in lowered:
        return OverloadedError(message, code="RESOURCE_EXHAUSTED")
    if "unknown model" in lowered:
        return NotFoundError(message, code="NOT_FOUND")
    if "unexpected inference" in lowered or "preprocessing" in lowered or "batch-size" in lowered:
        return BadRequestError(message, code="INVALID_ARGUMENT")
    return ServerError(message)
