"""Admission control: a request is counted against its model's bounds *before* its inputs are decoded.

The batcher's queue bound only sees decoded items, so under a flood of large images every refused request
would already have burnt a preprocessing thread on decoding. Here each model counts what it has in flight,
from admission to response: requests (TEI's ``--max-concurrent-requests`` is the anchor), items and request
bytes. A request that would cross a bound is refused at once with ``Overloaded`` (429 + Retry-After / gRPC
RESOURCE_EXHAUSTED) while it is still undecoded bytes. Everything runs on the event loop: no lock needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from d2v.core.errors import Overloaded


@dataclass(frozen=True)
class AdmissionLimits:
    max_requests: int = 512  # requests in flight per model (TEI's max-concurrent-requests default)
    max_items: int = 1024  # items in flight per model (the batcher's queue bound)
    max_bytes: int = 256 * 1024 * 1024  # request bytes in flight per model


class Admission:
    def __init__(
        self,
        name: str,
        limits: AdmissionLimits,
        *,
        retry_after_s: float = 1.0,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.retry_after_s = retry_after_s
        self._on_refuse = on_refuse or (lambda reason: None)
        self.requests = self.items = self.bytes = 0

    def _refusal(self, items: int, nbytes: int) -> tuple[str, str] | None:
        """``(bound, message)`` for the first bound this request would cross, else None."""
        lim = self.limits
        if self.requests + 1 > lim.max_requests:
            return "requests", f"{self.requests} requests in flight (limit {lim.max_requests})"
        if self.items + items > lim.max_items:
            return "items", f"{self.items} items in flight, {items} more asked (limit {lim.max_items})"
        if self.bytes + nbytes > lim.max_bytes:
            return "bytes", f"{self.bytes} request bytes in flight, {nbytes} more asked (limit {lim.max_bytes})"
        return None

    @contextlib.contextmanager
    def admit(self, items: int, nbytes: int) -> Iterator[None]:
        """Hold ``items`` and ``nbytes`` of this model's bounds for the body of the ``with``."""
        refusal = self._refusal(items, nbytes)
        if refusal is not None:
            bound, message = refusal
            self._on_refuse(bound)
            raise Overloaded(f"model {self.name!r} is at capacity: {message}", retry_after=self.retry_after_s)
        self.requests, self.items, self.bytes = self.requests + 1, self.items + items, self.bytes + nbytes
        try:
            yield
        finally:
            self.requests, self.items, self.bytes = self.requests - 1, self.items - items, self.bytes - nbytes

    def describe(self) -> dict[str, int]:
        lim = self.limits
        return {"max_requests": lim.max_requests, "max_items": lim.max_items, "max_bytes": lim.max_bytes}
