"""The one place errors become protocol answers: HTTP responses ``{"error": {"message", "type", "code"}}``
(``error_response``) and gRPC statuses (``grpc_status``), both from the same ``d2v.core.errors`` classes.

Domain errors carry their HTTP status; FastAPI's own validation errors and Starlette's 404/405 are
translated into the same hierarchy first, so no route needs a try/except. gRPC: bad input of any kind
(413 included: the message names the limit) -> INVALID_ARGUMENT, unknown model -> NOT_FOUND, missing or
wrong key -> UNAUTHENTICATED, queue full -> RESOURCE_EXHAUSTED with a ``retry-after`` trailer (seconds),
warming up / draining / backend down -> UNAVAILABLE, a deadline that passed in the queue -> DEADLINE_EXCEEDED;
a ``d2v-error-code`` trailer carries the error's ``code`` (e.g. ``payload_too_large``), as the HTTP body does.
"""

from __future__ import annotations

import logging
import math

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from d2v.core.errors import (
    D2VError,
    InternalError,
    InvalidInput,
    NotFound,
    Overloaded,
    Unauthorized,
    Unavailable,
    UnprocessableInput,
)

log = logging.getLogger(__name__)


def error_response(exc: D2VError) -> JSONResponse:
    headers: dict[str, str] = {}
    retry = retry_after_seconds(exc) if exc.status in (429, 503) else None
    if retry is not None:
        headers["Retry-After"] = retry
    elif exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)


def retry_after_seconds(exc: D2VError) -> str | None:
    """The ``Retry-After`` (HTTP header / gRPC trailer) an error carries, in whole seconds."""
    if isinstance(exc, Overloaded):
        return str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unavailable):
        return "1"
    return None


# Most specific class first: NotFound is an InvalidInput, so it must be matched before it.
_GRPC_CODES: tuple[tuple[type[D2VError], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """``(code, details, trailing metadata)`` for any exception a gRPC handler lets through."""
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded", ()
    if not isinstance(exc, D2VError):
        log.error("unhandled error in a gRPC call", exc_info=exc)
        exc = InternalError("internal server error")
    code = next((c for cls, c in _GRPC_CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    trailer = [("d2v-error-code", exc.code)]  # the same machine-readable code the HTTP body carries
    retry = retry_after_seconds(exc)
    if retry is not None:
        trailer.append(("retry-after", retry))
    return code, exc.message, tuple(trailer)


def validation_error(errors: list[dict]) -> InvalidInput:
    """Pydantic errors -> 400 for unparseable JSON, 422 for a well-formed body with wrong fields."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return InvalidInput("request body is not valid JSON", code="invalid_json")
    errors = _one_per_union(errors)
    parts = []
    for error in errors[:3]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return UnprocessableInput("invalid request: " + "; ".join(parts) + more, code="invalid_request")


def _one_per_union(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a union (``input``: a string, token ids or a list) fails once per
    member; report it once: from the members that got furthest into the value (the deepest location), the
    complaint most of them share, at the field plus the item index (member names dropped)."""
    by_field: dict[tuple, list[dict]] = {}
    for error in errors:
        loc = tuple(p for p in error.get("loc", ()) if p != "body")
        by_field.setdefault(loc[:1], []).append({**error, "loc": loc})
    out = []
    for field, group in by_field.items():
        if len(group) > 1 and all(len(e["loc"]) > 1 for e in group):
            depth = max(len(e["loc"]) for e in group)
            deepest = [e for e in group if len(e["loc"]) == depth]
            messages = [e.get("msg", "invalid") for e in deepest]
            chosen = next(e for e in deepest if e.get("msg", "invalid") == max(messages, key=messages.count))
            index = tuple(p for p in chosen["loc"][1:] if isinstance(p, int))
            out.append({"loc": field + index, "msg": chosen.get("msg", "invalid")})
        else:
            out.extend(group)
    return out


def _status_error(status: int, message: str, code: str) -> InvalidInput:
    exc = NotFound(message, code=code) if status == 404 else InvalidInput(message, code=code)
    exc.status = status  # e.g. 405: an HTTP-level status without its own domain class
    return exc


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(D2VError)
    async def _domain(request: Request, exc: D2VError) -> JSONResponse:
        if exc.status >= 500 and request.url.path != "/readyz":
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = _status_error(404, f"no route {request.url.path}", "not_found")
        elif exc.status_code == 405:
            err = _status_error(
                405, f"method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
            )
        else:
            err = _status_error(exc.status_code, str(exc.detail), "http_error")
        response = error_response(err)
        response.headers.update(exc.headers or {})  # e.g. 405's Allow (RFC 9110 requires it)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The one catch-all: log the traceback, answer with a summary that leaks no internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalError("internal server error"))
