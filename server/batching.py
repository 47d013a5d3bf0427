"""The dynamic batcher: a plain asyncio class, independent of FastAPI and of any engine.

Requests ``submit()`` decoded items; one loop per model merges items from concurrent requests into
engine batches and resolves each item's future, so results map back to requests in order.

- Bounded queue: a submission that would overflow ``max_queue`` fails fast with ``Overloaded`` (HTTP 429
  + Retry-After) instead of queueing work nobody will wait for.
- A batch forms when ``max_batch_size`` items are queued or ``max_wait_s`` after the oldest one arrived.
- Length bucketing: the loop takes a window of up to ``window_factor * max_batch_size`` queued items,
  sorts them by cost (tokens / samples) and cuts batches under both ``max_batch_size`` and a padded-cost
  budget (``longest * n <= max_batch_cost``), so short inputs are not padded to the longest one in the
  queue. The whole window runs before the next one is taken, so a long item is never starved.
- Items whose request went away never reach the engine: a cancelled request (gRPC cancel, HTTP client
  disconnect) cancels its item futures, and an item past its request's ``deadline`` (gRPC deadline) fails
  with ``TimeoutError``; both are dropped when the window is taken and again right before each batch runs.
- Items only share a batch when their ``key`` matches (e.g. the same ``layers`` override).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from d2v.core.errors import D2VError, InternalError, Overloaded, Unavailable

log = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Pending:
    item: Any
    cost: int
    key: Hashable
    future: asyncio.Future
    deadline: float | None = None  # time.monotonic() after which nobody waits for the result
    enqueued: float = field(default_factory=time.monotonic)

    def live(self, now: float) -> bool:
        """Still wanted; an expired item is failed here, so its request sees ``TimeoutError`` at once."""
        if self.future.done():  # cancelled by a request that went away
            return False
        if self.deadline is not None and now >= self.deadline:
            self.future.set_exception(TimeoutError("the request's deadline passed while it was queued"))
            return False
        return True


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        name: str = "model",
        max_batch_size: int = 32,
        max_batch_cost: int | None = None,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        retry_after_s: float = 1.0,
        window_factor: int = 4,
        on_batch: Callable[[int, int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        """``run_batch(key, items) -> results`` (same length and order); ``on_batch(size, padded_cost)``,
        ``on_depth(queued_items)`` and ``on_drop(items)`` (cancelled / expired, never run) are observability
        hooks (Prometheus in the app)."""
        self._run_batch = run_batch
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_cost = max_batch_cost
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.window = max(1, window_factor) * max_batch_size
        self._on_batch = on_batch or (lambda size, cost: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._on_drop = on_drop or (lambda items: None)
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued (graceful drain), then end the loop."""
        self._stopping = True
        self._arrived.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(
        self, items: Sequence[Any], costs: Sequence[int], key: Hashable = None, *, deadline: float | None = None
    ) -> list[Any]:
        """The results of ``items``, in order. ``deadline`` (``time.monotonic()``): items still queued then
        are dropped and the call raises ``TimeoutError``."""
        if self._stopping or self._task is None:
            raise Unavailable(f"model {self.name!r} is not accepting requests (starting or shutting down)")
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(
                f"model {self.name!r} is overloaded: {len(self._queue)} items queued (limit {self.max_queue})",
                retry_after=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        pending = [
            _Pending(item, int(cost), key, loop.create_future(), deadline)
            for item, cost in zip(items, costs, strict=True)
        ]
        self._queue.extend(pending)
        self._on_depth(len(self._queue))
        self._arrived.set()
        # gather cancels the item futures if this request is cancelled; the loop then skips them.
        # return_exceptions: every item future's exception is retrieved (no "never retrieved" noise).
        results = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    # ------------------------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill()
            window = self._take_window()
            self._on_depth(len(self._queue))
            for key, batch in self._plan(window):
                await self._execute(key, batch)

    async def _fill(self) -> None:
        """Wait until a full batch is queued or the oldest item has waited ``max_wait_s``."""
        deadline = self._queue[0].enqueued + self.max_wait_s
        while len(self._queue) < self.max_batch_size and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_window(self) -> list[_Pending]:
        window: list[_Pending] = []
        dropped = 0
        now = time.monotonic()
        while self._queue and len(window) < self.window:
            pending = self._queue.popleft()
            if pending.live(now):
                window.append(pending)
            else:
                dropped += 1
        if dropped:
            self._on_drop(dropped)
        return window

    def _plan(self, window: list[_Pending]) -> list[tuple[Hashable, list[_Pending]]]:
        """Group by key, sort by cost, cut under the size and padded-cost budgets."""
        groups: dict[Hashable, list[_Pending]] = {}
        for pending in window:
            groups.setdefault(pending.key, []).append(pending)
        batches: list[tuple[Hashable, list[_Pending]]] = []
        for key, members in groups.items():
            members.sort(key=lambda p: p.cost)
            current: list[_Pending] = []
            for pending in members:
                # Sorted ascending, so this item is the longest: padded cost = its cost * batch size.
                padded = pending.cost * (len(current) + 1)
                over_cost = self.max_batch_cost is not None and padded > self.max_batch_cost
                if current and (len(current) >= self.max_batch_size or over_cost):
                    batches.append((key, current))
                    current = []
                current.append(pending)
            if current:
                batches.append((key, current))
        return batches

    async def _execute(self, key: Hashable, batch: list[_Pending]) -> None:
        now = time.monotonic()  # earlier batches of the window ran meanwhile: check again
        live = [p for p in batch if p.live(now)]
        if len(live) < len(batch):
            self._on_drop(len(batch) - len(live))
        if not live:
            return
        self._on_batch(len(live), max(p.cost for p in live) * len(live))
        try:
            results = await self._run_batch(key, [p.item for p in live])
        except D2VError as exc:
            error: BaseException = exc
        except Exception as exc:  # an engine bug must fail these requests, not kill the loop for all others
            log.exception("batch of %d items failed on model %r", len(live), self.name)
            error = InternalError(f"inference failed on model {self.name!r}")
            error.__cause__ = exc
        else:
            for pending, result in zip(live, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
            return
        for pending in live:
            if not pending.future.done():
                pending.future.set_exception(error)
