"""Turn request media references (base64, ``data:`` URIs, allow-listed URLs) into bytes.

Only bytes ever reach the preprocessors: they also accept filesystem paths, and a request string must
never be able to make the server read a local file.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import anyio
import httpx

from d2v.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

from .settings import ServerSettings
from .url_policy import IPAddress, URLPolicy

HostResolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidInput(f"URL host {host!r} does not resolve") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def fetch_client() -> httpx.AsyncClient:
    """The client URL inputs are fetched with: no proxies from the environment (a proxy would connect to a
    host the policy never checked), no redirects (set per request), TLS verified against the URL's host."""
    return httpx.AsyncClient(trust_env=False)


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


class MediaResolver:
    def __init__(
        self,
        settings: ServerSettings,
        client: httpx.AsyncClient | None = None,
        resolve: HostResolver = resolve_host,
    ) -> None:
        self.settings = settings
        self._client = client
        self._policy = URLPolicy(settings.url_allowlist)
        self._resolve = resolve

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
        canonical, entry = self._policy.check(url)
        address = canonical.ip
        if address is None:
            address = self._policy.check_addresses(entry, await self._resolve(canonical.host, canonical.port))
        # Connect to the checked address (no second lookup to rebind); Host header and TLS SNI/verification
        # stay the URL's host. No redirects: a redirect could leave the allow-list.
        request = self._client.build_request(
            "GET",
            canonical.target(str(address)),
            headers={"host": canonical.host_header()},
            extensions={"sni_hostname": canonical.host},
            timeout=s.url_fetch_timeout_s,
        )
        try:
            resp = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                if resp.status_code != 200:
                    raise InvalidInput(f"fetching the URL returned HTTP {resp.status_code}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > s.max_body_bytes:
                        raise PayloadTooLarge(f"URL content is over {s.max_body_bytes} bytes")
                    chunks.append(chunk)
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise InvalidInput(f"cannot fetch the URL: {type(exc).__name__}") from None
        return b"".join(chunks)
