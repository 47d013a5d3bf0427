"""Error mapping and retries with backoff + jitter honouring Retry-After (injected sleep: no real waiting)."""

from __future__ import annotations

import random

import httpx
import pytest

from d2v_client import (
    AuthenticationError,
    BadRequestError,
    Client,
    D2VConnectionError,
    D2VTimeoutError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
)
from d2v_client.errors import error_from_response, parse_retry_after


def make_client(server, sleeps, **kw) -> Client:
    return Client("http://d2v.test", transport=httpx.MockTransport(server), sleep=sleeps, rng=random.Random(0), **kw)


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (415, BadRequestError),
        (422, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (429, OverloadedError),
        (500, ServerError),
        (503, ServiceUnavailableError),
    ],
)
def test_status_maps_to_typed_error_with_server_message(fake_server, sleeps, status, cls):
    fake_server.script = [fake_server.error(status, "the server's reason")] * 10
    with make_client(fake_server, sleeps, retry=RetryPolicy(max_retries=1)) as client, pytest.raises(cls) as info:
        client.embed_text(["x"])
    err = info.value
    assert err.message == "the server's reason" and err.status == status and err.code == f"c{status}"
    assert err.type == "some_type" and "the server's reason" in str(err)
    assert len(sleeps) == (1 if cls.retryable else 0)


def test_bad_request_is_not_retried(fake_server, sleeps):
    fake_server.script = [fake_server.error(400)]
    with make_client(fake_server, sleeps) as client, pytest.raises(BadRequestError):
        client.embed_text(["x"])
    assert sleeps == [] and len(fake_server.requests) == 2  # /info + one attempt


def test_429_then_success_honours_retry_after(fake_server, sleeps):
    fake_server.script = [fake_server.error(429, retry_after="3"), fake_server.error(503, retry_after="1")]
    policy = RetryPolicy(backoff_base=0.5)
    with make_client(fake_server, sleeps, retry=policy) as client:
        out = client.embed_text(["x"])
    assert out.shape == (1, 8)
    assert len(sleeps) == 2
    assert 3.0 <= sleeps[0] <= 3.5 and 1.0 <= sleeps[1] <= 1.5  # Retry-After plus at most backoff_base of jitter


def test_exponential_backoff_with_jitter_without_retry_after(fake_server, sleeps):
    fake_server.script = [fake_server.error(503)] * 5
    policy = RetryPolicy(max_retries=5, backoff_base=1.0, max_backoff=8.0)
    with make_client(fake_server, sleeps, retry=policy) as client:
        client.embed_text(["x"])
    caps = [1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(sleeps) == 5 and all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 5  # jittered, not a fixed schedule


def test_retries_exhausted_raises_last_error(fake_server, sleeps):
    fake_server.script = [fake_server.error(429, "busy", retry_after="0")] * 10
    client = make_client(fake_server, sleeps, retry=RetryPolicy(max_retries=3))
    with client, pytest.raises(OverloadedError, match="busy") as info:
        client.embed_text(["x"])
    assert info.value.retry_after == 0.0 and len(sleeps) == 3


def test_retry_after_is_capped(fake_server, sleeps):
    fake_server.script = [fake_server.error(429, retry_after="9999")]
    with make_client(fake_server, sleeps, retry=RetryPolicy(max_retry_after=10, backoff_base=0.1)) as client:
        client.embed_text(["x"])
    assert 10 <= sleeps[0] <= 10.1


def test_x_should_retry_false_stops_retries(fake_server, sleeps):
    resp = fake_server.error(503)
    resp.headers["x-should-retry"] = "false"
    fake_server.script = [resp]
    with make_client(fake_server, sleeps) as client, pytest.raises(ServiceUnavailableError):
        client.embed_text(["x"])
    assert sleeps == []


def test_connection_errors_are_retried(fake_server, sleeps):
    failures = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]

    def flaky(request: httpx.Request) -> None:
        if request.url.path != "/info" and failures:
            raise failures.pop(0)

    fake_server.on_request = flaky
    with make_client(fake_server, sleeps) as client:
        assert client.embed_text(["x"]).shape == (1, 8)
    assert len(sleeps) == 2


def test_connection_error_types_after_retries(sleeps):
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out")

    client = make_client(down, sleeps, retry=RetryPolicy(max_retries=2))
    with client, pytest.raises(D2VTimeoutError) as info:
        client.info()
    assert isinstance(info.value, D2VConnectionError) and info.value.status is None and len(sleeps) == 2


def test_non_json_error_body_keeps_text(sleeps):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway from proxy")

    with make_client(handler, sleeps) as client, pytest.raises(ServerError, match="bad gateway from proxy"):
        client.info()


def test_error_body_shapes():
    assert error_from_response(400, {"error": "kserve style"}).message == "kserve style"
    assert error_from_response(404, {"detail": "Not Found"}).message == "Not Found"
    assert error_from_response(500, None).message == "HTTP 500"
    assert error_from_response(418, {}).__class__ is BadRequestError


def test_parse_retry_after_formats():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_api_key_is_sent_as_bearer(fake_server, sleeps):
    with make_client(fake_server, sleeps, api_key="s3cret") as client:
        client.info()
    assert fake_server.requests[0].headers["authorization"] == "Bearer s3cret"
