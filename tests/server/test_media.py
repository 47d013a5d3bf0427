"""Media references: data URIs, base64, and URL fetching (off by default; allow-list; no redirects)."""

from __future__ import annotations

import base64

import httpx
import pytest

from d2v.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from d2v.server.media import MediaResolver, decode_data_uri, url_allowed
from d2v.server.settings import ServerSettings

pytestmark = pytest.mark.anyio


def test_data_uris():
    payload = base64.b64encode(b"\x89PNG").decode()
    assert decode_data_uri(f"data:image/png;base64,{payload}", "image") == b"\x89PNG"
    assert decode_data_uri(f"data:application/octet-stream;base64,{payload}", "audio") == b"\x89PNG"
    with pytest.raises(UnsupportedMediaType):
        decode_data_uri(f"data:text/plain;base64,{payload}", "image")
    with pytest.raises(InvalidInput):
        decode_data_uri("data:image/png,rawtext", "image")


def test_allow_list_matches_host_exactly():
    allow = ["https://media.example.com/public/"]
    assert url_allowed("https://media.example.com/public/cat.png", allow)
    assert not url_allowed("https://media.example.com.evil.net/public/cat.png", allow)
    assert not url_allowed("http://media.example.com/public/cat.png", allow)
    assert not url_allowed("https://media.example.com/private/cat.png", allow)
    assert not url_allowed("https://media.example.com:8443/public/cat.png", allow)


async def test_fetch_only_when_enabled_and_allowed():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("redirect"):
            return httpx.Response(302, headers={"location": "https://elsewhere.example/x"})
        if request.url.path.endswith("big"):
            return httpx.Response(200, content=b"x" * 5000)
        return httpx.Response(200, content=b"image-bytes")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        off = MediaResolver(ServerSettings(), client)
        with pytest.raises(InvalidInput, match="disabled"):
            await off.resolve("https://media.example.com/public/a.png", "image")
        on = MediaResolver(
            ServerSettings(
                allow_url_fetch=True, url_allowlist="https://media.example.com/public/", max_body_bytes=1000
            ),
            client,
        )
        assert await on.resolve("https://media.example.com/public/a.png", "image") == b"image-bytes"
        with pytest.raises(InvalidInput, match="allow-list"):
            await on.resolve("https://other.example.com/a.png", "image")
        with pytest.raises(InvalidInput, match="302"):
            await on.resolve("https://media.example.com/public/redirect", "image")
        with pytest.raises(PayloadTooLarge):
            await on.resolve("https://media.example.com/public/big", "image")
