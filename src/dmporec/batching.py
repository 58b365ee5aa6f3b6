"""The request queue of `dmporec serve`: concurrent ranking requests are scored together.

Every /v1/rank request goes on one asyncio queue; a single worker takes the first waiting request,
waits up to `batch_wait_ms` for more (unless `max_batch` are already there), and scores up to
`max_batch` requests in one `Ranker.rank` call, in a thread so the event loop keeps accepting
requests meanwhile. At most `max_queue` requests wait (clients that left do not count); one more
raises QueueFull with a Retry-After estimated from the recent batch times. A request whose client
hangs up while it waits is dropped before it reaches the model (`unless_disconnected`).
"""

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request

from dmporec.ranker import Ranker
from dmporec.ranking import RankRequest


class QueueFull(Exception):
    """The ranking queue is full; `retry_after` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


async def unless_disconnected(request: Request, work: Awaitable[Any], poll_s: float = 0.02) -> Any:
    """The result of `work`, or None once the client has gone (the work is cancelled: a queued
    ranking request is then dropped before it reaches the model)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll_s)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None


class Batcher:
    """One queue, one worker: concurrent ranking requests are scored together (see the module docstring)."""

    def __init__(
        self, ranker: Ranker, max_batch: int, batch_wait_ms: float, max_queue: int = 64
    ) -> None:
        self.ranker, self.max_batch, self.wait_s = ranker, max_batch, batch_wait_ms / 1000
        self.max_queue = max_queue
        self.batches = self.requests = self.dropped = 0
        self._waiting: set[asyncio.Future] = set()  # queued requests whose clients still wait
        self.batch_s = 1.0  # running mean of a batch's scoring time, for Retry-After
        self._queue: asyncio.Queue[tuple[RankRequest, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()  # bounded by `waiting`: live requests only
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def rank(self, request: RankRequest) -> list[float]:
        if self._queue is None:
            raise RuntimeError("the batcher is not running (app started without its lifespan?)")
        if len(self._waiting) >= self.max_queue:  # clients that left do not count
            raise QueueFull(self.retry_after())
        future = asyncio.get_running_loop().create_future()
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)  # answered, or its client left
        self._queue.put_nowait((request, future))
        return await future

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its batches times the mean batch time."""
        assert self._queue is not None
        return max(1, math.ceil(len(self._waiting) / self.max_batch * self.batch_s))

    async def _next_batch(self) -> list[tuple[RankRequest, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        if self.max_batch > 1 and self._queue.qsize() < self.max_batch - 1 and self.wait_s > 0:
            await asyncio.sleep(self.wait_s)  # let concurrent requests join this forward pass
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        for _, f in batch:
            self._waiting.discard(f)  # at the model now: no longer waiting
        kept = [(r, f) for r, f in batch if not f.cancelled()]  # skip clients that left
        self.dropped += len(batch) - len(kept)
        return kept

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                scores = await asyncio.to_thread(self.ranker.rank, [r for r, _ in batch])
            except Exception as e:  # every waiting request gets the error, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batch_s = 0.8 * self.batch_s + 0.2 * (time.perf_counter() - start)
            self.batches += 1
            self.requests += len(batch)
            for (_, future), s in zip(batch, scores, strict=True):
                if not future.done():
                    future.set_result(s)
