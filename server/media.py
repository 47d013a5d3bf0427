"""Turn request media references (base64, ``data:`` URIs, allow-listed URLs) into bytes.

Only bytes ever reach the preprocessors: they also accept filesystem paths, and a request string must
never be able to make the server read a local file.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

import httpx

from d2v.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

from .settings import ServerSettings


def _b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not valid base64 (send base64, a data: URI or an allow-listed URL)") from None


def decode_data_uri(uri: str, modality: str) -> bytes:
    """``data:<mime>[;params];base64,<payload>``; the MIME type must belong to the modality."""
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise InvalidInput("malformed data: URI (no ',')")
    parts = header.split(";")
    mime = parts[0].strip().lower()
    if mime and not (mime.startswith(f"{modality}/") or mime == "application/octet-stream"):
        raise UnsupportedMediaType(f"data: URI has media type {mime!r}; expected {modality}/*")
    if "base64" not in (p.strip().lower() for p in parts[1:]):
        raise InvalidInput("only base64 data: URIs are accepted")
    return _b64decode(payload, "data: URI payload")


def url_allowed(url: str, allowlist: list[str]) -> bool:
    """Same scheme, exact host and port, and a path prefix: a plain string prefix would let
    ``https://good.example.com.evil.net`` through."""
    target = urlsplit(url)
    for entry in allowlist:
        allowed = urlsplit(entry)
        if (
            target.scheme == allowed.scheme
            and target.hostname == allowed.hostname
            and target.port == allowed.port
            and target.path.startswith(allowed.path or "/")
        ):
            return True
    return False


class MediaResolver:
    def __init__(self, settings: ServerSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._client = client

    async def resolve(self, value: str, modality: str) -> bytes:
        if value.startswith("data:"):
            return decode_data_uri(value, modality)
        if value.startswith(("http://", "https://")):
            return await self._fetch(value)
        return _b64decode(value, f"{modality} input")

    async def _fetch(self, url: str) -> bytes:
        s = self.settings
        if not s.allow_url_fetch or self._client is None:
            raise InvalidInput("URL inputs are disabled on this server; send base64 or a data: URI")
        if not url_allowed(url, s.url_allowlist):
            raise InvalidInput("URL is not on this server's allow-list")
        try:
            # No redirects: a redirect could leave the allow-list.
            async with self._client.stream("GET", url, follow_redirects=False, timeout=s.url_fetch_timeout_s) as resp:
                if resp.status_code != 200:
                    raise InvalidInput(f"fetching the URL returned HTTP {resp.status_code}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > s.max_body_bytes:
                        raise PayloadTooLarge(f"URL content is over {s.max_body_bytes} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise InvalidInput(f"cannot fetch the URL: {type(exc).__name__}") from None
        return b"".join(chunks)
