"""The model queue of `dmporec serve`: requests waiting together are scored in one forward pass.

Each model call of a request is a Job: a RankRequest and the ordered pairs to ask (all of them for
/v1/rank; the pivot pairs of a /v1/recommend rerank). Jobs wait in one queue, first come first
served; a single worker takes the first, waits up to `batch_wait_ms` for company (unless
`max_batch` are already there), and scores up to `max_batch` jobs holding at most `max_prompts`
prompts (the largest request a client may send) in one `Ranker.answers` call, on the batcher's
own thread so the event loop keeps accepting requests. One thread, always the same: with model
calls on asyncio.to_thread's shared pool a request of 3 candidates took 0.65-0.76 s at the model
instead of 0.52-0.61 s (SmolLM2 on 2 cores; benchmarks/serve_load.py). There each job's prompts are one or more prompt trees
(scoring.Group) and the trees of all its jobs share the forward passes (ranking.pair_answers).
Jobs built with different prompt-tree sizes (`group_tokens`) are scored in calls of their own,
and so is a job over several trees that ranking.goes_alone scores alone anyway (its history is
then encoded once, not once a tree): batched with others it would gain nothing and wait for them
(four /v1/recommend reranks of 13-15 trees each: 24.0 s together, 20.4 s one at a time).

503 with Retry-After (QueueFull): when `max_queue` jobs already wait (clients that left do not
count), and for a job that has waited `deadline_s` without reaching the model (it is dropped, not
scored). Retry-After is the queued prompts times the recent seconds per prompt. A job whose client
hangs up while it waits is dropped too (`unless_disconnected`).

What a batch gains on a CPU is small: the forward passes are compute-bound (the GEMMs of one
request's ~500-token prompt tree already run at ~290 GFLOP/s on 2 cores, about 3/4 of their fp32
peak), so batching saves only what is paid per pass (Python and kernel launches, the shared chat
header): 602 -> 487 ms a 3-candidate request at the model, one at a time -> 8 together; through
the server 1.1-1.2x the requests/s of one client at 4-8 (benchmarks/serve_load.py). On a GPU
one request's tree leaves most of the device idle and the batch should pay more (not measured).
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from starlette.requests import Request

from dmporec.ranker import Ranker
from dmporec.ranking import (
    GROUP_TOKENS,
    RankRequest,
    candidate_scores_from_pairs,
    goes_alone,
    ordered_pairs,
)

# Seconds a request may wait in the queue before it is answered 503 (`dmporec serve --deadline-s`).
DEADLINE_S = 30.0


class QueueFull(Exception):
    """The model queue is full, or a request waited past its deadline; `retry_after` seconds is
    a fair wait."""

    def __init__(self, retry_after: int, why: str = "") -> None:
        super().__init__(f"the server is busy{why}; retry after {retry_after} s")
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


@dataclass(eq=False)
class Job:
    """One model call waiting for a batch."""

    request: RankRequest
    pairs: Sequence[tuple[int, int]]
    group_tokens: int  # the prompt-tree size it asks for (`max_group_tokens`)
    alone: bool  # scored in a call of its own (ranking.goes_alone)
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    expired: bool = False  # dropped at its deadline

    @property
    def prompts(self) -> int:
        return len(self.pairs)


class Batcher:
    """One queue, one worker: jobs waiting together are scored together (see the module docstring)."""

    def __init__(
        self,
        ranker: Ranker,
        max_batch: int,
        batch_wait_ms: float,
        max_queue: int = 64,
        *,
        deadline_s: float = DEADLINE_S,
        max_prompts: int = 380,
    ) -> None:
        self.ranker, self.max_batch, self.wait_s = ranker, max_batch, batch_wait_ms / 1000
        self.max_queue, self.deadline_s, self.max_prompts = max_queue, deadline_s, max_prompts
        self.batches = self.requests = self.dropped = self.expired = 0
        self.sizes: Counter[int] = Counter()  # jobs per scored batch -> how many such batches
        self.prompt_s = 0.1  # running mean of the seconds one prompt takes, for Retry-After
        self._waiting: set[asyncio.Future] = set()  # queued jobs whose clients still wait
        self._queue: deque[Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._model_thread: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, "dmporec-model")
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=False)

    async def rank(self, request: RankRequest) -> list[float]:
        """Scores of the request's candidates, as `Ranker.rank` gives them (every ordered pair)."""
        n = len(request.candidates)
        first, second = await self.answers(request, ordered_pairs(n))
        return [1.0] if n == 1 else candidate_scores_from_pairs(n, first, second)

    async def answers(
        self,
        request: RankRequest,
        pairs: Sequence[tuple[int, int]],
        group_tokens: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(first_logps, second_logps) of the request's ordered `pairs` (`Ranker.answers`), once
        a batch has taken them; QueueFull when the queue is full or the deadline passes first."""
        if self._arrived is None:
            raise RuntimeError("the batcher is not running (app started without its lifespan?)")
        if len(self._waiting) >= self.max_queue:  # clients that left do not count
            raise QueueFull(self.retry_after())
        tokens = group_tokens or GROUP_TOKENS
        # Tokenizing: off the event loop (the encoder caches it for the model call).
        try:
            alone = bool(pairs) and await asyncio.to_thread(
                lambda: goes_alone(self.ranker.encoder.groups(request, tokens, pairs))
            )
        except asyncio.CancelledError:  # the client left already
            self.dropped += 1
            raise
        future = asyncio.get_running_loop().create_future()
        job = Job(request, pairs, tokens, alone, future)
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)  # answered, or its client left
        self._queue.append(job)
        self._arrived.set()
        try:
            await asyncio.wait({future}, timeout=self.deadline_s)
        except asyncio.CancelledError:  # the client left: drop the job
            future.cancel()
            raise
        if future in self._waiting:  # not at the model yet
            job.expired = True
            future.cancel()
            self.expired += 1
            raise QueueFull(
                self.retry_after(), f": this request waited {self.deadline_s:g} s for the model"
            )
        return await future  # at the model: its answer is on the way

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its prompts times the recent time a
        prompt takes."""
        prompts = sum(job.prompts for job in self._queue if job.future in self._waiting)
        return max(1, math.ceil(prompts * self.prompt_s))

    async def _next_batch(self) -> list[Job]:
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        company = self.max_batch > 1 and len(self._queue) < self.max_batch and self.wait_s > 0
        if company and not self._queue[0].alone:
            await asyncio.sleep(self.wait_s)  # let concurrent requests join this forward pass
        batch: list[Job] = []
        prompts = 0
        while self._queue and len(batch) < self.max_batch:
            job = self._queue[0]
            if job.future.done():  # its client left, or its deadline passed: not scored
                self._queue.popleft()
                self.dropped += not job.expired
                continue
            if batch and (
                batch[0].alone
                or job.alone
                or job.group_tokens != batch[0].group_tokens
                or prompts + job.prompts > self.max_prompts
            ):
                break
            batch.append(self._queue.popleft())
            prompts += job.prompts
        for job in batch:
            self._waiting.discard(job.future)  # at the model now: no longer waiting
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                answers = await asyncio.get_running_loop().run_in_executor(
                    self._model_thread,
                    functools.partial(
                        self.ranker.answers,
                        [job.request for job in batch],
                        [job.pairs for job in batch],
                        max_group_tokens=batch[0].group_tokens,
                    ),
                )
            except Exception as e:  # every waiting request gets the error, the worker goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            prompts = sum(job.prompts for job in batch)
            if prompts:
                seconds = (time.perf_counter() - start) / prompts
                self.prompt_s = 0.8 * self.prompt_s + 0.2 * seconds
            self.batches += 1
            self.requests += len(batch)
            self.sizes[len(batch)] += 1
            for job, answer in zip(batch, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)


class QueuedRanker:
    """The batcher's ranker, its `answers` queued with every other request's (for code that
    calls a Ranker from a worker thread: Recommender.finish); `cancel` drops what it queued."""

    def __init__(self, batcher: Batcher, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher, self.loop = batcher, loop
        self._pending: list[concurrent.futures.Future] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batcher.ranker, name)

    def answers(
        self,
        requests: Sequence[RankRequest],
        pairs_of: Sequence[Sequence[tuple[int, int]]],
        progress: Callable[[int], None] | None = None,
        *,
        max_group_tokens: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        futures = [
            asyncio.run_coroutine_threadsafe(
                self.batcher.answers(r, pairs, max_group_tokens), self.loop
            )
            for r, pairs in zip(requests, pairs_of, strict=True)
        ]
        self._pending += futures
        out = [f.result() for f in futures]
        if progress is not None:
            progress(sum(map(len, pairs_of)))
        return out

    def cancel(self) -> None:
        for future in self._pending:
            future.cancel()
