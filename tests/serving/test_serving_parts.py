"""The parts service.py stands on, each alone and in-process: the body limit, the batcher, the request schema, frames.

The whole service over HTTP (a real ``bentoml serve``) is tests/serving/test_service.py; these are the fast checks
of each part's own contract, which that test can only see from outside.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from serving.batcher import MicroBatcher
from serving.body_limit import BodyLimit
from serving.frames import job_frames
from serving.schema import Job

# -- body limit -------------------------------------------------------------------------------------


class Echo:
    """An ASGI app that answers 200 with the length of the body it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def call(app: Any, chunks: list[bytes], length: bytes | None) -> tuple[int, bytes]:
    """One request through ``app``: ``chunks`` as the body's messages, ``length`` as its Content-Length header."""
    headers = [(b"content-type", b"application/json")] + ([(b"content-length", length)] if length is not None else [])
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_declared_length_over_the_limit_is_refused_before_the_app_reads_anything() -> None:
    inner = Echo()
    status, body = call(BodyLimit(inner, max_bytes=10), [b"x" * 11], length=b"11")
    assert status == 413 and b"request body over 10 bytes" in body
    assert inner.bodies == []
    status, _ = call(BodyLimit(inner, max_bytes=10), [b"x"], length=b"1e3")  # not a number: refused too
    assert status == 413 and inner.bodies == []


def test_a_declared_length_within_the_limit_passes_through() -> None:
    inner = Echo()
    assert call(BodyLimit(inner, max_bytes=10), [b"x" * 10], length=b"10") == (200, b"10")
    assert inner.bodies == [b"x" * 10]


def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    inner = Echo()
    status, _ = call(BodyLimit(inner, max_bytes=10), [b"x" * 6, b"y" * 6], length=None)
    assert status == 413 and inner.bodies == []
    # Within the limit: the app gets the whole body, replayed as one message.
    assert call(BodyLimit(inner, max_bytes=10), [b"x" * 4, b"y" * 6], length=None) == (200, b"10")
    assert inner.bodies == [b"x" * 4 + b"y" * 6]


def test_other_scopes_pass_untouched() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(BodyLimit(app, max_bytes=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


# -- batcher ----------------------------------------------------------------------------------------


class Model:
    """Scores a job (an int) as [job, job * 10]; records each call's batch; can be held to let jobs queue up."""

    def __init__(self, bad: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.bad = bad
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, jobs: list[int]) -> list[list[float]]:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(list(jobs))
        if self.bad in jobs:
            raise ValueError(f"job {self.bad} is bad")
        return [[float(j), float(j * 10)] for j in jobs]


def test_one_request_at_a_time_is_a_batch_of_one() -> None:
    model = Model()

    async def main() -> list[list[float]]:
        batcher = MicroBatcher(model, max_batch_size=8)
        return [await batcher.submit(j) for j in (1, 2, 3)]

    assert asyncio.run(main()) == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]
    assert model.calls == [[1], [2], [3]]


def test_jobs_that_arrive_while_the_model_is_busy_share_its_next_call() -> None:
    model = Model()

    async def main() -> list[list[float]]:
        batcher = MicroBatcher(model, max_batch_size=4)
        model.gate.clear()  # the first call blocks until the others have queued up
        first = asyncio.create_task(batcher.submit(0))
        while not model.entered.is_set():  # the model is busy with job 0
            await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batcher.submit(j)) for j in range(1, 7)]
        while batcher.queue is None or batcher.queue.qsize() < 6:  # the others wait in the queue
            await asyncio.sleep(0.01)
        model.gate.set()
        return [await first] + [await t for t in rest]

    results = asyncio.run(main())
    assert results == [[float(j), float(j * 10)] for j in range(7)]  # each caller gets its own result
    assert model.calls == [[0], [1, 2, 3, 4], [5, 6]]  # merged, at most max_batch_size per call


def test_a_bad_job_fails_only_its_own_caller() -> None:
    model = Model(bad=2)

    async def main() -> list[Any]:
        batcher = MicroBatcher(model, max_batch_size=8)
        # Submitted together: the batcher's worker starts after all three are queued, so they share one call.
        tasks = [asyncio.create_task(batcher.submit(j)) for j in (1, 2, 3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    one, two, three = asyncio.run(main())
    assert one == [1.0, 10.0] and three == [3.0, 30.0]
    assert isinstance(two, ValueError) and "job 2 is bad" in str(two)
    assert model.calls == [[1, 2, 3], [1], [2], [3]]  # the batch failed, then each job ran alone


# -- schema and frames ------------------------------------------------------------------------------


def row(item: str, ts: str, code: int = 1) -> dict[str, Any]:
    return {"assessmentItemID": item, "testId": "T1", "KnowledgeTag": 7, "answerCode": code, "Timestamp": ts}


def test_timestamps_are_normalised_to_naive_utc_and_bad_ones_named() -> None:
    job = Job(history=[row("A1", "2020-03-24T02:17:11+02:00")], candidates=[], at="2020-03-24T01:00:00Z")
    assert job.history[0].Timestamp == "2020-03-24 00:17:11" and job.at == "2020-03-24 01:00:00"
    with pytest.raises(ValidationError, match="bad timestamp 'yesterday'"):
        Job(history=[row("A1", "yesterday")])
    with pytest.raises(ValidationError, match=r"outside 1970\.\.2100"):
        Job(history=[row("A1", "1969-12-31 23:59:59")])


def test_a_history_repeating_an_answer_is_refused_naming_both_rows() -> None:
    with pytest.raises(ValidationError, match=r"history\[2\] repeats history\[0\]"):
        Job(history=[row("A1", "2020-01-01 00:00:00"), row("A2", "2020-01-01 00:00:00"), row("A1", "2020-01-01")])


def test_frames_sort_each_history_by_time_and_keep_jobs_apart() -> None:
    a = Job(
        history=[row("A2", "2020-01-02 00:00:00", 0), row("A1", "2020-01-01 00:00:00"), row("A3", "2020-01-02")],
        candidates=[{"assessmentItemID": "C1", "testId": "T9", "KnowledgeTag": 3}],
        at="2020-01-03 00:00:00",
    )
    b = Job(history=[], candidates=[{"assessmentItemID": "C2", "testId": "T9", "KnowledgeTag": 4}])
    (hist_a, cands_a, at_a), (hist_b, cands_b, at_b) = job_frames([a, b])
    # Oldest first; the tie (A2 and A3 at the same time) keeps the request order.
    assert hist_a["assessmentItemID"].tolist() == ["A1", "A2", "A3"]
    assert hist_a["answerCode"].tolist() == [1, 0, 1] and str(hist_a["Timestamp"].dtype) == "datetime64[ns]"
    assert cands_a.to_dict("records") == [{"assessmentItemID": "C1", "testId": "T9", "KnowledgeTag": 3}]
    assert at_a == pd.Timestamp("2020-01-03") and at_b is None
    assert hist_b.empty and list(hist_b.columns) == list(hist_a.columns)
    assert cands_b["assessmentItemID"].tolist() == ["C2"]
