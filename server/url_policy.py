"""Which URLs the server may fetch: an allow-list compared on normalised URLs, and a resolved-address check.

Raw string or raw path comparisons are what SSRF tricks exploit (``/public/../admin``, ``/public/%2e%2e/``,
``/publicity`` under ``/public``, ``user@host``, ``2130706433`` for 127.0.0.1, a DNS name that resolves to
loopback). So a URL is first brought to one canonical form: scheme and host lower-cased, the host
IDNA-encoded (UTS #46, as browsers do), no userinfo, an explicit port, the path percent-decoded once,
dot-segments resolved and empty segments dropped. What cannot be brought to one unambiguous form (encoded
slashes, backslashes, ``;`` path parameters, double encoding, control characters) is refused. Paths are
compared by segments, so ``/public`` admits ``/public/cat.png`` and never ``/publicity.png``. The server
then fetches exactly the canonical URL, at the address it checked (no second DNS lookup to rebind).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import idna

from d2v.core.errors import InvalidInput

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_ENCODED_SEPARATOR = re.compile(r"%(2[Ff]|5[Cc])")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CanonicalURL:
    scheme: str
    host: str  # IDNA ASCII form, or the compressed IP literal (no brackets)
    port: int
    segments: tuple[str, ...]  # decoded path segments, dot-segments resolved
    query: str  # as sent (it is not compared)

    @property
    def ip(self) -> IPAddress | None:
        return _ip_literal(self.host)

    def path(self) -> str:
        return "/" + "/".join(quote(s, safe="") for s in self.segments)

    def target(self, address: str | None = None) -> str:
        """The URL to request; ``address`` (a resolved IP) replaces the host to pin the connection."""
        host = address or self.host
        netloc = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{netloc}:{self.port}{self.path()}" + (f"?{self.query}" if self.query else "")

    def host_header(self) -> str:
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return netloc if self.port == _DEFAULT_PORTS[self.scheme] else f"{netloc}:{self.port}"


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _canonical_host(raw: str, url: str) -> str:
    host = raw.strip("[]")
    literal = _ip_literal(host)
    if literal is not None:
        return str(literal.ipv4_mapped or literal) if isinstance(literal, ipaddress.IPv6Address) else str(literal)
    if not host or any(c in host for c in "%\\ ") or any(ord(c) < 0x21 for c in host):
        raise InvalidInput(f"URL {url!r} has an invalid host")
    try:
        return idna.encode(host.rstrip("."), uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise InvalidInput(f"URL {url!r} has an invalid host ({exc})") from None


def _canonical_segments(raw_path: str, url: str) -> tuple[str, ...]:
    if "\\" in raw_path or _ENCODED_SEPARATOR.search(raw_path):
        raise InvalidInput(f"URL {url!r}: encoded slashes and backslashes are not accepted in the path")
    if ";" in raw_path:
        raise InvalidInput(f"URL {url!r}: path parameters (';') are not accepted")
    decoded = unquote(raw_path, errors="strict")
    if _PERCENT_ESCAPE.search(decoded):
        raise InvalidInput(f"URL {url!r}: the path is percent-encoded twice")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise InvalidInput(f"URL {url!r}: control characters in the path")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return tuple(segments)


def canonicalize(url: str) -> CanonicalURL:
    """The canonical form of an http(s) URL; ``InvalidInput`` for anything ambiguous."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"URL {url!r} does not parse ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"URL {url!r}: only http and https URLs are fetched")
    if "@" in parts.netloc:
        raise InvalidInput(f"URL {url!r}: credentials in the URL (user@host) are not accepted")
    try:
        segments = _canonical_segments(parts.path, url)
    except UnicodeDecodeError:
        raise InvalidInput(f"URL {url!r}: the path is not valid percent-encoded UTF-8") from None
    return CanonicalURL(
        scheme=scheme,
        host=_canonical_host(parts.hostname or "", url),
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        segments=segments,
        query=parts.query,
    )


def _is_public(address: IPAddress) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    address = mapped or address
    return address.is_global and not address.is_multicast


class URLPolicy:
    """The allow-list, parsed once; ``match`` picks the entry a URL falls under."""

    def __init__(self, allowlist: list[str]) -> None:
        self.entries = tuple(self._entry(e) for e in allowlist)

    @staticmethod
    def _entry(entry: str) -> CanonicalURL:
        try:
            return canonicalize(entry)
        except InvalidInput as exc:
            raise ValueError(f"url_allowlist entry {entry!r} is invalid: {exc.message}") from None

    def match(self, url: CanonicalURL) -> CanonicalURL | None:
        for entry in self.entries:
            if (entry.scheme, entry.host, entry.port) == (url.scheme, url.host, url.port) and url.segments[
                : len(entry.segments)
            ] == entry.segments:
                return entry
        return None

    def check(self, url: str) -> tuple[CanonicalURL, CanonicalURL]:
        """``(canonical url, the allow-list entry it matched)``; ``InvalidInput`` when it matches none."""
        canonical = canonicalize(url)
        entry = self.match(canonical)
        if entry is None:
            raise InvalidInput("URL is not on this server's allow-list")
        return canonical, entry

    @staticmethod
    def check_addresses(entry: CanonicalURL, addresses: list[IPAddress]) -> IPAddress:
        """The address to connect to. Private, loopback and link-local addresses only where the allow-list
        entry names them: as that IP literal, or as ``localhost`` (RFC 6761: always loopback)."""
        if not addresses:
            raise InvalidInput(f"URL host {entry.host!r} does not resolve")
        for address in addresses:
            if _is_public(address):
                continue
            named = entry.ip == address or (entry.host == "localhost" and address.is_loopback)
            if not named:
                raise InvalidInput(
                    f"URL host resolves to a non-public address ({address}); "
                    "list that address in the allow-list to permit it"
                )
        return addresses[0]
