"""Container health check: exit 0 when ``URL`` (default ``http://127.0.0.1:8080/livez``) answers 2xx.

The slim Python image has no curl, so Docker's HEALTHCHECK runs this with the image's interpreter.
Standard library only. Proxies are bypassed on purpose: an ``HTTP_PROXY`` set for outbound traffic
must not route a loopback probe through the proxy.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/livez"


def check(url: str, timeout: float = 4.0) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: HTTP {response.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(check(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL))
