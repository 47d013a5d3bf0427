"""Optional Bearer API keys, for both front ends (the HTTP ``Authorization`` header, the gRPC ``authorization``
metadata). Constant-time comparison against every key, and one message for every failure (missing header,
wrong scheme, wrong key), so a caller cannot learn which part was wrong."""

from __future__ import annotations

import hmac

from fastapi import Request

from d2v.core.errors import Unauthorized


def check_bearer(header: str | None, keys: list[bytes]) -> None:
    """Raise ``Unauthorized`` unless ``header`` is ``Bearer <one of keys>``; a no-op without keys."""
    if not keys:
        return
    scheme, _, token = (header or "").partition(" ")
    presented = token.strip().encode() if scheme.lower() == "bearer" else b""
    # No early exit: compare with every key so timing does not reveal how many keys exist or which matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented, key)
    if not ok or not presented:
        raise Unauthorized("invalid or missing API key")


def require_api_key(request: Request) -> None:
    """FastAPI dependency on the API routers."""
    check_bearer(request.headers.get("authorization"), request.app.state.api_keys)
