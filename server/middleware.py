"""Pure-ASGI middlewares: request metrics (outermost) and the request-body size limit, which also cancels
a request whose client disconnected.

Pure ASGI rather than ``BaseHTTPMiddleware`` so nothing buffers responses or breaks cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from d2v.core.errors import InvalidInput, PayloadTooLarge

from .error_handlers import error_response
from .metrics import Metrics

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
CLIENT_GONE = "d2v.client_gone"  # scope key: the client disconnected before the response was sent


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The route template (not the raw path) keeps label cardinality bounded.
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if scope.get(CLIENT_GONE):
                status = 499  # nginx's "client closed request": nothing was sent
            self.metrics.observe_request("http", path, str(status), time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` before any parsing: by ``Content-Length`` when declared, and by
    counting the streamed bytes (chunked uploads declare nothing, and a client may lie)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(InvalidInput("invalid Content-Length header"))(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await _run_until_disconnect(self.app, scope, b"".join(chunks), receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"request body is over the {self.max_bytes}-byte limit", code="body_too_large")
        await error_response(exc)(scope, receive, send)


async def _run_until_disconnect(app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
    """Run ``app`` on the buffered ``body`` and cancel it when the client disconnects first: its queued
    batcher items are then dropped before they reach the engine (the batcher skips cancelled items)."""
    delivered = False
    gone = asyncio.Event()

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()  # afterwards only http.disconnect can arrive, seen by the watcher below
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    task = asyncio.ensure_future(app(scope, replay, send))
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():  # the client went away (or this request was cancelled): stop the work
            scope[CLIENT_GONE] = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not task.cancelled():
        task.result()  # re-raise what the app raised
