"""HTTP transport: one request with retries, exponential backoff and full jitter, sync and async.

Retried: 429 and 503 (waiting at least the server's ``Retry-After``) and connection failures or timeouts
(embedding is idempotent). Never retried: bad input, auth, other server errors, or a response carrying
``x-should-retry: false``. The sleep function and the random source are injectable, so tests take no
real time.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from d2v_client._version import __version__
from d2v_client.errors import D2VClientError, D2VConnectionError, D2VTimeoutError, error_from_response


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Attempt ``n`` (0-based) waits ``uniform(0, min(max_backoff, backoff_base * 2**n))`` (full jitter), or,
    when the server sent ``Retry-After``, that many seconds (capped at ``max_retry_after``) plus up to
    ``backoff_base`` of jitter so that clients told the same value do not return in lockstep.
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) + rng.uniform(0.0, self.backoff_base)
        return rng.uniform(0.0, min(self.max_backoff, self.backoff_base * (2**attempt)))


def delay_or_raise(policy: RetryPolicy, err: D2VClientError, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after attempt ``attempt`` (0-based) failed with ``err``, before the next one.

    Raises:
        D2VClientError: ``err`` itself, when it is not retryable or the retries are spent.
    """
    if not err.retryable or attempt >= policy.max_retries:
        raise err
    return policy.delay(attempt, err.retry_after, rng)


SERVER_URL_ENV = "D2V_SERVER_URL"
DEFAULT_SERVER_URL = "http://127.0.0.1:8080"  # d2v serve's default HTTP port


def default_base_url() -> str:
    """``$D2V_SERVER_URL``, else ``http://127.0.0.1:8080``; read when a client is built, never at import."""
    return os.environ.get(SERVER_URL_ENV) or DEFAULT_SERVER_URL


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"user-agent": f"d2v-client/{__version__}", "accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _transport_error(exc: httpx.TransportError, url: str) -> D2VConnectionError:
    cls = D2VTimeoutError if isinstance(exc, httpx.TimeoutException) else D2VConnectionError
    return cls(f"{type(exc).__name__} talking to {url}: {exc}")


def _decode(response: httpx.Response) -> Any:
    """The JSON body of a response.

    Raises:
        D2VClientError: a non-2xx status (typed), or a 2xx body that is not JSON.
    """
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body, response.headers)
    if isinstance(body, str):
        raise D2VClientError(f"expected a JSON body from {response.request.url}, got: {body[:200]!r}")
    return body


class SyncTransport:
    """Blocking requests with retries over one ``httpx.Client`` (thread-safe; shared by worker threads)."""

    def __init__(
        self,
        http: httpx.Client,
        retry: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.retry = retry
        self.sleep = sleep
        self.rng = rng or random.Random()

    def request(self, method: str, path: str, *, json: Any = None, files: Any = None, data: Any = None) -> Any:
        """Send, retrying transient failures; return the decoded JSON body.

        Raises:
            D2VClientError: the typed error of the last attempt.
        """
        attempt = 0
        while True:
            try:
                return _decode(self.http.request(method, path, json=json, files=files, data=data))
            except httpx.TransportError as exc:
                err: D2VClientError = _transport_error(exc, str(self.http.base_url.join(path)))
            except D2VClientError as exc:
                err = exc
            self.sleep(delay_or_raise(self.retry, err, attempt, self.rng))
            attempt += 1

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    """The asyncio twin of :class:`SyncTransport` over one ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        retry: RetryPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.retry = retry
        self.sleep = sleep
        self.rng = rng or random.Random()

    async def request(
        self, method: str, path: str, *, json: Any = None, files: Any = None, data: Mapping[str, Any] | None = None
    ) -> Any:
        """Send, retrying transient failures; return the decoded JSON body.

        Raises:
            D2VClientError: the typed error of the last attempt.
        """
        attempt = 0
        while True:
            try:
                return _decode(await self.http.request(method, path, json=json, files=files, data=data))
            except httpx.TransportError as exc:
                err: D2VClientError = _transport_error(exc, str(self.http.base_url.join(path)))
            except D2VClientError as exc:
                err = exc
            await self.sleep(delay_or_raise(self.retry, err, attempt, self.rng))
            attempt += 1

    async def aclose(self) -> None:
        await self.http.aclose()
