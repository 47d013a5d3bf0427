"""DynamicBatcher on its own: merging, ordering, bucketing, budgets, keys, backpressure, drain, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from d2v.core.errors import InvalidInput, Overloaded, Unavailable
from d2v.server.batching import DynamicBatcher

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[tuple[object, list]] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, key, items):
        self.batches.append((key, list(items)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return [f"{key}:{item}" for item in items]


async def test_concurrent_submissions_merge_and_map_back_in_order():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=16, max_wait_s=0.05)
    await batcher.start()
    results = await asyncio.gather(*(batcher.submit([f"r{i}a", f"r{i}b"], [1, 1]) for i in range(4)))
    await batcher.stop()
    assert results == [[f"None:r{i}a", f"None:r{i}b"] for i in range(4)]
    assert len(run.batches) == 1 and len(run.batches[0][1]) == 8


async def test_length_bucketing_and_padded_cost_budget():
    run = Recorder()
    # budget 40 padded tokens: [2,2,3] -> 9; adding 10 would make 40 (ok) ... sorted costs cut by the budget
    batcher = DynamicBatcher(run, max_batch_size=8, max_batch_cost=40, max_wait_s=0.05)
    await batcher.start()
    items = ["long1", "s1", "long2", "s2", "mid"]
    costs = [20, 2, 20, 2, 5]
    results = await batcher.submit(items, costs)
    await batcher.stop()
    assert results == [f"None:{i}" for i in items]  # order of the request, whatever the batching
    batches = [b for _, b in run.batches]
    assert batches == [["s1", "s2", "mid"], ["long1", "long2"]]  # similar lengths share a batch


async def test_max_batch_size_and_keys_split_batches():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_s=0.05)
    await batcher.start()
    a, b = await asyncio.gather(
        batcher.submit(["a1", "a2", "a3"], [1, 1, 1], key="A"), batcher.submit(["b1"], [1], key="B")
    )
    await batcher.stop()
    assert a == ["A:a1", "A:a2", "A:a3"] and b == ["B:b1"]
    assert sorted(len(items) for _, items in run.batches) == [1, 1, 2]
    assert all(len({key}) == 1 for key, _ in run.batches)


async def test_full_queue_is_rejected_fast():
    run = Recorder(delay=0.2)
    batcher = DynamicBatcher(run, max_batch_size=1, max_queue=2, max_wait_s=0, window_factor=1, retry_after_s=3)
    await batcher.start()
    first = asyncio.create_task(batcher.submit(["x"], [1]))
    await asyncio.sleep(0.05)  # x is in the engine
    second = asyncio.create_task(batcher.submit(["y", "z"], [1, 1]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(["w"], [1])
    assert info.value.retry_after == 3
    assert await first == ["None:x"] and await second == ["None:y", "None:z"]
    await batcher.stop()


async def test_errors_fail_only_their_batch():
    run = Recorder(fail=InvalidInput("bad"))
    batcher = DynamicBatcher(run, max_wait_s=0)
    await batcher.start()
    with pytest.raises(InvalidInput):
        await batcher.submit(["a", "b"], [1, 1])
    run.fail = RuntimeError("bug")
    with pytest.raises(Exception) as info:
        await batcher.submit(["c"], [1])
    assert info.value.status == 500  # InternalError, and the loop survives
    run.fail = None
    assert await batcher.submit(["d"], [1]) == ["None:d"]
    await batcher.stop()


async def test_stop_drains_queue_then_refuses():
    run = Recorder(delay=0.05)
    batcher = DynamicBatcher(run, max_batch_size=1, max_wait_s=0, window_factor=1)
    await batcher.start()
    pending = [asyncio.create_task(batcher.submit([i], [1])) for i in range(3)]
    await asyncio.sleep(0.01)
    await batcher.stop()
    assert [await p for p in pending] == [["None:0"], ["None:1"], ["None:2"]]
    with pytest.raises(Unavailable):
        await batcher.submit(["late"], [1])


async def test_cancelled_requests_are_skipped():
    run = Recorder(delay=0.1)
    batcher = DynamicBatcher(run, max_batch_size=1, max_wait_s=0, window_factor=1)
    await batcher.start()
    first = asyncio.create_task(batcher.submit(["first"], [1]))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher.submit(["gone"], [1]))
    await asyncio.sleep(0.01)
    gone.cancel()  # the client disconnected while queued
    assert await first == ["None:first"]
    await batcher.stop()
    assert [items for _, items in run.batches] == [["first"]]
