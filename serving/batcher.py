"""Adaptive micro-batching: the jobs of concurrent requests are merged into one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class MicroBatcher(Generic[J, R]):
    """Jobs that arrive while the model is busy are merged into its next call.

    The batch size follows the load: one job when requests come one at a time (no
    waiting window, so no added latency), up to ``max_batch_size`` under concurrency.
    The queue only carries (job, future) pairs; nothing about a request outlives it.
    ``fn`` maps a list of jobs to one result per job, in order.
    """

    def __init__(
        self, fn: Callable[[list[J]], list[R]], max_batch_size: int, inline: Callable[[J], bool] | None = None
    ):
        self.fn = fn
        self.max_batch_size = max(1, max_batch_size)
        # ``inline(job)``: may this job, alone in its batch, run on the event loop itself? Handing it to a thread and
        # back (the executor's queue, the thread's wake-up, call_soon_threadsafe's self-pipe write, the GIL passed
        # twice) cost a returning student more than its model step. Only for a cheap, bounded job: while it runs the
        # loop serves nothing else (no other request, no health check), so anything heavy (a cold student's full
        # recompute, an attention model's windows) must answer False and goes to the thread. ``inline`` itself runs
        # on the loop: it must be cheap too. None: every batch goes to the thread.
        self.inline = inline
        self.queue: asyncio.Queue[tuple[J, asyncio.Future[R]]] | None = None
        self.worker: asyncio.Task[None] | None = None

    async def submit(self, job: J) -> R:
        if self.queue is None or self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run(self.queue))
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def _run(self, queue: asyncio.Queue[tuple[J, asyncio.Future[R]]]) -> None:
        while True:
            batch = [await queue.get()]
            if self.inline is not None and queue.empty():
                # One turn of the loop first: requests that arrived together reach the queue and share the call.
                await asyncio.sleep(0)
            while len(batch) < self.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(job, fut) for job, fut in batch if not fut.done()]  # callers that gave up
            if not batch:
                continue
            try:
                jobs = [job for job, _ in batch]
                alone = self.inline is not None and len(jobs) == 1 and self.inline(jobs[0])
                results = self.fn(jobs) if alone else await asyncio.to_thread(self.fn, jobs)
            except Exception:
                # One bad job must not fail the others: run each alone, so only its own caller sees the error.
                for job, fut in batch:
                    try:
                        result = await asyncio.to_thread(self.fn, [job])
                    except Exception as e:
                        _settle(fut, error=e)
                    else:
                        _settle(fut, result=result[0])
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                _settle(fut, result=result)


def _settle(fut: asyncio.Future[R], result: R | None = None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)  # type: ignore[arg-type]  # set whenever error is None
