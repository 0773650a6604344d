"""The micro-batcher's event-loop rule (serving/batcher.py ``inline``): a lone cheap job runs on the loop, anything
else on a thread, so a heavy job never holds up the loop; on the real state cache and the session's small LSTM, a
cold student's full recompute runs off the loop while the loop answers others, a returning student's step on it."""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from dkt.predictor import load_predictor
from serving.batcher import MicroBatcher
from serving.schema import Job
from serving.state_cache import CachedJob, Scored, StateCache

AT = "2031-01-01 00:00:00"  # after every simulated answer
DEADLINE_S = 60.0  # only reached when the rule is broken (the loop never gets to answer): then the test fails


def on_loop() -> bool:
    return threading.current_thread() is threading.main_thread()  # asyncio.run runs the loop on this thread


def test_only_a_lone_job_the_predicate_accepts_runs_on_the_loop() -> None:
    calls: list[tuple[list[int], bool]] = []  # (jobs, ran on the event loop's thread)

    def double(jobs: list[int]) -> list[int]:
        calls.append((jobs, on_loop()))
        return [2 * j for j in jobs]

    async def scenario() -> tuple[list[int], list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(double, 64, inline=lambda j: j < 100)
        alone = [await batcher.submit(j) for j in (1, 2, 500)]  # 500: a heavy job, though alone
        together = await asyncio.gather(*(batcher.submit(j) for j in range(10, 15)))
        return alone, list(together)

    alone, together = asyncio.run(scenario())
    assert alone == [2, 4, 1000] and together == [20, 22, 24, 26, 28]
    # Jobs submitted together still share one call, off the loop (one loop turn lets them reach the queue).
    assert calls == [([1], True), ([2], True), ([500], False), ([10, 11, 12, 13, 14], False)]
    plain: MicroBatcher[int, int] = MicroBatcher(double, 64)  # no predicate: always the thread
    assert asyncio.run(plain.submit(3)) == 6 and calls[-1] == ([3], False)


def test_a_cold_students_recompute_leaves_the_loop_free_and_a_returning_step_runs_on_it(
    lstm_bundle: Path, sim_dir: Path
) -> None:
    predictor = load_predictor(lstm_bundle)
    df = pd.read_csv(sim_dir / "test.csv", dtype={"assessmentItemID": str, "testId": str})
    user = df.groupby("userID").size().idxmax()
    cols = ["assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
    history = df[df["userID"] == user].head(41)[cols].to_dict("records")
    cands = df[["assessmentItemID", "testId", "KnowledgeTag"]].drop_duplicates().head(5).to_dict("records")

    def job(student: str, n: int) -> CachedJob:
        return CachedJob(student, Job.model_validate({"history": history[:n], "candidates": cands, "at": AT}))

    # The real full recompute, held in flight until the loop has answered a health check (the loop sets `served`):
    # on the loop itself it would wait out the deadline, the check unanswered.
    real_state_of = predictor.state_of
    started, served = threading.Event(), threading.Event()
    recomputes: list[tuple[bool, bool]] = []  # (ran on the loop, the health check was answered while it ran)

    def state_of(hist: pd.DataFrame) -> Any:
        started.set()
        recomputes.append((on_loop(), served.wait(DEADLINE_S)))
        return real_state_of(hist)

    predictor.state_of = state_of  # type: ignore[method-assign]  # a spy around the real method
    cache = StateCache(10**8)
    fn = partial(cache.scores_batch, predictor)
    steps: list[bool] = []  # cached batches: ran on the loop

    def scores(jobs: list[CachedJob]) -> list[Scored | Exception]:
        steps.append(on_loop())
        return fn(jobs)

    batcher: MicroBatcher[CachedJob, Scored | Exception] = MicroBatcher(
        scores, 64, inline=partial(cache.cheap, predictor)
    )

    async def livez() -> None:
        served.set()

    async def scenario() -> list[Scored | Exception]:
        served.set()  # the first student's cold start is not the point here
        first = await batcher.submit(job("r", 40))
        served.clear()
        started.clear()
        cold = asyncio.create_task(batcher.submit(job("c", 41)))
        await asyncio.to_thread(started.wait, DEADLINE_S)  # the recompute is in flight
        await livez()  # the loop answers meanwhile
        returning = await batcher.submit(job("r", 41))  # one new answer on r's cached state
        return [first, await cold, returning]

    first, cold, returning = asyncio.run(scenario())
    assert [getattr(s, "known_count", s) for s in (first, cold, returning)] == [40, 41, 41]
    assert recomputes == [(False, True), (False, True)]  # both cold recomputes on a thread; the loop answered
    assert steps == [False, False, True]  # ... and only the returning student's cached step ran on the loop
    assert cache.describe()["hits"] == 1
