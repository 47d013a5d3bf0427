"""Media references: data URIs, base64, and URL fetching (off by default; allow-list; no redirects)."""

from __future__ import annotations

import base64
import ipaddress

import httpx
import pytest

from d2v.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from d2v.server.media import MediaResolver, decode_data_uri
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


PUBLIC = ipaddress.ip_address("93.184.215.14")


async def _public_dns(host: str, port: int) -> list:
    return [PUBLIC]


async def test_fetch_only_when_enabled_and_allowed():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("redirect"):
            return httpx.Response(302, headers={"location": "https://elsewhere.example/x"})
        if request.url.path.endswith("big"):
            return httpx.Response(200, content=b"x" * 5000)
        return httpx.Response(200, content=b"image-bytes")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        off = MediaResolver(ServerSettings(), client, resolve=_public_dns)
        with pytest.raises(InvalidInput, match="disabled"):
            await off.resolve("https://media.example.com/public/a.png", "image")
        on = MediaResolver(
            ServerSettings(
                allow_url_fetch=True, url_allowlist="https://media.example.com/public/", max_body_bytes=1000
            ),
            client,
            resolve=_public_dns,
        )
        assert await on.resolve("https://media.example.com/public/a.png", "image") == b"image-bytes"
        # pinned to the checked address; the Host header and TLS name stay the URL's host
        assert seen[-1].url.host == str(PUBLIC) and seen[-1].headers["host"] == "media.example.com"
        assert seen[-1].extensions["sni_hostname"] == "media.example.com"
        with pytest.raises(InvalidInput, match="allow-list"):
            await on.resolve("https://other.example.com/a.png", "image")
        with pytest.raises(InvalidInput, match="302"):
            await on.resolve("https://media.example.com/public/redirect", "image")
        with pytest.raises(PayloadTooLarge):
            await on.resolve("https://media.example.com/public/big", "image")
