"""The URL allow-list on normalised URLs, and a real local web server that must only ever see allowed paths."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from testkit import record_reliability

from d2v.core.errors import InvalidInput
from d2v.server.media import MediaResolver, fetch_client
from d2v.server.settings import ServerSettings
from d2v.server.url_policy import URLPolicy, canonicalize

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize(
    ("url", "segments"),
    [
        ("http://H/public/cat.png", ("public", "cat.png")),
        ("HTTP://h:80/public/./cat.png", ("public", "cat.png")),
        ("http://h/public//cat.png", ("public", "cat.png")),
        ("http://h/a/../public/cat.png", ("public", "cat.png")),
        ("http://h/public/%63at.png", ("public", "cat.png")),
        ("http://h/public/%2e%2e/admin", ("admin",)),
        ("http://h/../../public", ("public",)),
        ("http://h", ()),
    ],
)
def test_paths_are_decoded_and_dot_segments_resolved(url, segments):
    assert canonicalize(url).segments == segments


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("http://EXAMPLE.com./x", "example.com", 80),
        ("https://ｅxample.com/x", "example.com", 443),  # full-width e: UTS #46 maps it
        ("http://bücher.example/x", "xn--bcher-kva.example", 80),
        ("http://[::1]:8080/x", "::1", 8080),
        ("http://[0:0::1]/x", "::1", 80),
        ("http://[::ffff:127.0.0.1]/x", "127.0.0.1", 80),
    ],
)
def test_hosts_are_normalised(url, host, port):
    canonical = canonicalize(url)
    assert (canonical.host, canonical.port) == (host, port)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://user:pw@h/public/x", "credentials"),
        ("http://h@evil.example/public/x", "credentials"),
        ("http://h/public%2fx", "encoded slashes"),
        ("http://h/public%5C..%5Cadmin", "encoded slashes"),
        ("http://h/public\\..\\admin", "backslashes"),
        ("http://h/public/%252e%252e/admin", "twice"),
        ("http://h/public;x=1/../admin", "path parameters"),
        ("http://h/public/%00", "control"),
        ("http://h/public/%ff", "UTF-8"),
        ("ftp://h/public/x", "only http"),
        ("file:///etc/passwd", "only http"),
        ("http://h:99999/x", "does not parse"),
        ("http://[::1/x", "does not parse"),
    ],
)
def test_ambiguous_urls_are_refused(url, why):
    with pytest.raises(InvalidInput, match=why):
        canonicalize(url)


def test_allow_list_compares_whole_segments_host_port_and_scheme():
    policy = URLPolicy(["https://media.example.com/public"])
    policy.check("https://media.example.com/public/cat.png")
    policy.check("https://MEDIA.example.com:443/public")
    for url in (
        "https://media.example.com/publicity.png",
        "https://media.example.com/public/../admin/x.png",
        "https://media.example.com/public/%2e%2e/admin/x.png",
        "https://media.example.com.evil.net/public/cat.png",
        "http://media.example.com/public/cat.png",
        "https://media.example.com:8443/public/cat.png",
        "https://media.example.com/Public/cat.png",
    ):
        with pytest.raises(InvalidInput, match="allow-list"):
            policy.check(url)


def test_bad_allow_list_entries_stop_start_up():
    with pytest.raises(ValueError, match="credentials"):
        ServerSettings(allow_url_fetch=True, url_allowlist="http://u:p@h/x")


def test_non_public_addresses_need_the_allow_list_to_name_them():
    named = URLPolicy(["http://127.0.0.1:81/public", "http://localhost/public", "http://media.test/public"])
    ip_entry, localhost_entry, dns_entry = named.entries
    assert named.check_addresses(ip_entry, [LOOPBACK]) == LOOPBACK
    assert named.check_addresses(localhost_entry, [LOOPBACK, ipaddress.ip_address("::1")]) == LOOPBACK
    for private in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "::ffff:10.0.0.1"):
        with pytest.raises(InvalidInput, match="non-public"):
            named.check_addresses(dns_entry, [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address(private)])
    with pytest.raises(InvalidInput, match="does not resolve"):
        named.check_addresses(dns_entry, [])


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.paths.append((self.path, self.headers.get("host")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"bytes of " + self.path.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _resolver(table: dict[str, list]):
    async def resolve(host: str, port: int) -> list:
        return table.get(host, [])

    return resolve


@pytest.mark.anyio
async def test_a_real_server_only_sees_allowed_paths(web_server):
    port = web_server.server_address[1]
    settings = ServerSettings(
        allow_url_fetch=True, url_allowlist=f"http://127.0.0.1:{port}/public,http://localhost:{port}/named"
    )
    dns = _resolver({"localhost": [LOOPBACK], "rebind.test": [LOOPBACK]})
    async with fetch_client() as client:
        media = MediaResolver(settings, client, resolve=dns)
        base = f"http://127.0.0.1:{port}"
        hostile = [
            f"{base}/public/../admin/secret.png",
            f"{base}/public/%2e%2e/admin/secret.png",
            f"{base}/publicity.png",
            f"{base}/public/%252e%252e/admin/secret.png",
            f"{base}/public;x/../admin/secret.png",
            f"{base}/public%2f..%2fadmin/secret.png",
            f"http://x@127.0.0.1:{port}/public/a.png",
            f"http://[::ffff:7f00:1]:{port}/admin/secret.png",
            f"http://2130706433:{port}/public/a.png",
            f"http://rebind.test:{port}/public/a.png",
        ]
        for url in hostile:
            with pytest.raises(InvalidInput):
                await media.resolve(url, "image")
        assert await media.resolve(f"{base}/public//./cat.png", "image") == b"bytes of /public/cat.png"
        assert await media.resolve(f"{base}/public/a%20b.png?x=1", "image") == b"bytes of /public/a%20b.png?x=1"
        assert await media.resolve(f"http://LOCALHOST:{port}/named/a.png", "image") == b"bytes of /named/a.png"
    assert web_server.paths == [
        ("/public/cat.png", f"127.0.0.1:{port}"),
        ("/public/a%20b.png?x=1", f"127.0.0.1:{port}"),
        ("/named/a.png", f"localhost:{port}"),
    ]
    record_reliability(
        "URL allow-list (SSRF)",
        tried=f"{len(hostile)} hostile URLs (dot segments, %2e%2e, /publicity, double encoding, ;params, %2f, "
        "userinfo, IPv4-mapped IPv6, decimal IP, a name resolving to loopback) and 3 allowed ones",
        faults="a real local web server behind the allow-list, with an /admin path",
        outcome="every hostile URL refused with a 400 before any connection; the server saw only allowed paths",
        figures=f"{len(web_server.paths)} requests reached the web server, all under the allow-list",
    )
