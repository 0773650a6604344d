"""The DKT inference service (BentoML 1.4): P(correct) for candidate items, mastery per skill, expected scores.

    bentoml serve service:DKTService --port 3000

The model bundle is loaded once per worker from the BentoML model store (env
``DKT_MODEL_TAG``, default ``dkt-model:latest``; store in ``BENTOML_HOME``).
Endpoints validate their body (400 naming the field and the reason), then
hand one job each to an in-process adaptive batcher that merges the jobs of
concurrent requests into one model call. The service keeps no per-request
state and writes nothing to disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dkt.bundle import lineage
from dkt.data.schema import COLUMNS
from dkt.predictor import Predictor, load_predictor

log = logging.getLogger("bentoml.dkt_service")  # under "bentoml": its log setup shows it


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as e:
        raise SystemExit(f"env {name}={raw!r}: expected an integer") from e


MODEL_TAG = os.environ.get("DKT_MODEL_TAG", "dkt-model:latest")
MAX_HISTORY = _env_int("DKT_MAX_HISTORY", 10_000)  # answers per request; features use all of them
MAX_CANDIDATES = _env_int("DKT_MAX_CANDIDATES", 500)
MAX_BODY_BYTES = _env_int("DKT_MAX_BODY_BYTES", 4 * 1024 * 1024)
MAX_BATCH_SIZE = _env_int("DKT_MAX_BATCH_SIZE", 64)
SERVICE_TIMEOUT_S = _env_int("DKT_SERVICE_TIMEOUT_S", 30)
# One intra-op thread: batching already fills a core, and on a busy host torch's thread pool spin-waits
# (measured 10x slower per request with 2 threads on a loaded 2-core machine).
TORCH_THREADS = _env_int("DKT_TORCH_THREADS", 1)
ACCESS_LOG = os.environ.get("DKT_ACCESS_LOG", "1") not in ("0", "false", "no")  # one line per request

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


def _timestamp(value: str) -> str:
    """ISO 8601 (``2020-03-24 00:17:11``, ``2020-03-24T00:17:11Z``...) normalised to naive UTC."""
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"bad timestamp {value[:40]!r}; expected ISO 8601 like '2020-03-24 00:17:11'") from None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    if not 1970 <= ts.year <= 2100:
        raise ValueError(f"timestamp {value[:40]!r} is outside 1970..2100")
    return ts.isoformat(sep=" ")


Timestamp = Annotated[str, StringConstraints(max_length=40), AfterValidator(_timestamp)]


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    assessmentItemID: Id
    testId: Id
    KnowledgeTag: int = Field(strict=True, ge=0, le=2**62)


class Interaction(Item):
    userID: Annotated[str, StringConstraints(max_length=64)] | None = None  # one student per request: ignored
    answerCode: int = Field(strict=True, ge=-1, le=1)
    Timestamp: Timestamp


def _no_duplicates(history: list[Interaction]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(history):
        key = (row.assessmentItemID, row.Timestamp)
        if key in seen:
            raise ValueError(f"history[{i}] repeats history[{seen[key]}] (same assessmentItemID and Timestamp)")
        seen[key] = i


class HistoryRequest(BaseModel):
    history: list[Interaction] = Field(default_factory=list, max_length=MAX_HISTORY)

    @model_validator(mode="after")
    def _check(self) -> HistoryRequest:
        _no_duplicates(self.history)
        return self


class Job(HistoryRequest):
    """One student's history and the items to score after it: the unit the batcher merges."""

    candidates: list[Item] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    at: Timestamp | None = None


def _frames(jobs: list[Job]) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]]:
    """Canonical frames per job, built column-wise for the whole batch (pydantic has already checked every value)."""
    sizes = np.array([len(job.history) for job in jobs], dtype=np.int64)
    rows = [row for job in jobs for row in job.history]
    hist = pd.DataFrame(
        {
            "userID": np.repeat(np.arange(len(jobs)), sizes).astype(str),
            "assessmentItemID": [r.assessmentItemID for r in rows],
            "testId": [r.testId for r in rows],
            "answerCode": np.array([r.answerCode for r in rows], dtype="int8"),
            "Timestamp": pd.to_datetime(pd.Series([r.Timestamp for r in rows], dtype=object), format="ISO8601"),
            "KnowledgeTag": np.array([r.KnowledgeTag for r in rows], dtype="int64"),
        },
        columns=list(COLUMNS),
    )
    for col in ("userID", "assessmentItemID", "testId"):
        hist[col] = hist[col].astype(str)  # the dtype ``dkt.data.schema.validate`` gives ids
    hist["Timestamp"] = hist["Timestamp"].astype("datetime64[ns]")
    # Oldest first within each job (ties in request order): the order a file's rows get offline.
    job_of = np.repeat(np.arange(len(jobs)), sizes)
    order = np.lexsort((np.arange(len(hist)), hist["Timestamp"].to_numpy(), job_of))
    hist = hist.iloc[order].reset_index(drop=True)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for j, job in enumerate(jobs):
        cands = pd.DataFrame(
            {
                "assessmentItemID": [c.assessmentItemID for c in job.candidates],
                "testId": [c.testId for c in job.candidates],
                "KnowledgeTag": np.array([c.KnowledgeTag for c in job.candidates], dtype="int64"),
            }
        )
        at = pd.Timestamp(job.at) if job.at else None
        out.append((hist.iloc[bounds[j] : bounds[j + 1]].reset_index(drop=True), cands, at))
    return out


class BodyLimit:
    """Rejects bodies over ``MAX_BODY_BYTES`` with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        if declared is not None:
            await self.app(scope, receive, send)
            return
        # Chunked body, no length up front: read it (at most max_bytes) before the app sees it.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # client went away: let the app see the disconnect
                return
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class MicroBatcher:
    """Adaptive batching: jobs that arrive while the model is busy are merged into its next call.

    The batch size follows the load: one job when requests come one at a time (no
    waiting window, so no added latency), up to ``max_batch_size`` under concurrency.
    The queue only carries (job, future) pairs; nothing about a request outlives it.
    """

    def __init__(self, fn: Callable[[list[Job]], list[list[float]]], max_batch_size: int):
        self.fn = fn
        self.max_batch_size = max(1, max_batch_size)
        self.queue: asyncio.Queue[tuple[Job, asyncio.Future[list[float]]]] | None = None
        self.worker: asyncio.Task[None] | None = None

    async def submit(self, job: Job) -> list[float]:
        if self.queue is None or self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run(self.queue))
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def _run(self, queue: asyncio.Queue[tuple[Job, asyncio.Future[list[float]]]]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(job, fut) for job, fut in batch if not fut.done()]  # callers that gave up
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.fn, [job for job, _ in batch])
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


def _settle(
    fut: asyncio.Future[list[float]], result: list[float] | None = None, error: BaseException | None = None
) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result or [])


async def _metadata(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    if service is None:
        return JSONResponse({"error": "service is starting"}, status_code=503)
    return JSONResponse(service.metadata())


info_app = Starlette(routes=[Route("/metadata", _metadata, methods=["GET"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="dkt_service",
    traffic={"timeout": SERVICE_TIMEOUT_S, "max_concurrency": 256},
    workers=1,
    endpoints={"readyz": "/readyz", "livez": "/livez"},
    logging={"access": {"enabled": ACCESS_LOG}},
)
class DKTService:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        torch.set_num_threads(max(1, TORCH_THREADS))
        self.model_dir = Path(self.model_ref.path)
        self.predictor: Predictor = load_predictor(self.model_dir, device="cpu")
        self.tag = str(self.model_ref.tag)
        config_file = self.model_dir / "config.json"  # every bundle carries the config it was trained with
        self.config: dict[str, Any] | None = json.loads(config_file.read_text()) if config_file.is_file() else None
        self.batcher = MicroBatcher(self._infer, MAX_BATCH_SIZE)

    def metadata(self) -> dict[str, Any]:
        meta = self.predictor.meta
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            # Lineage (data version, code commit, config hash, seed): the keys the store manifest carries too.
            **lineage(meta),
            "config": self.config,
            "data_fingerprint": meta.get("data_fingerprint"),
            "metrics": meta.get("metrics", {}),
            "model_tag": self.tag,
            "max_seq_len": self.predictor.max_seq_len,
            "n_params": meta.get("n_params"),
            "created_at": meta.get("created_at"),
            "limits": {"max_history": MAX_HISTORY, "max_candidates": MAX_CANDIDATES, "max_body_bytes": MAX_BODY_BYTES},
        }

    def _infer(self, jobs: list[Job]) -> list[list[float]]:
        start = time.perf_counter()
        frames = _frames(jobs)
        mid = time.perf_counter()
        probs = self.predictor.predict_candidates_batch(frames)
        log.debug(
            "batch of %d: %.1f ms frames, %.1f ms model",
            len(jobs),
            1e3 * (mid - start),
            1e3 * (time.perf_counter() - mid),
        )
        return [[float(p) for p in prob] for prob in probs]

    async def _score(self, job: Job) -> list[float]:
        return await self.batcher.submit(job)

    @bentoml.api(route="/predict")
    async def predict(
        self,
        candidates: Annotated[list[Item], Field(min_length=1, max_length=MAX_CANDIDATES)],
        history: Annotated[list[Interaction], Field(max_length=MAX_HISTORY)] = [],  # noqa: B006 (copied by pydantic)
        at: Timestamp | None = None,
    ) -> dict[str, Any]:
        """P(correct) for each candidate item if it were shown at ``at`` (default: now, UTC) after ``history``."""
        job = Job(history=history, candidates=candidates, at=at)
        prob = await self._score(job)
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            "predictions": [{**c.model_dump(), "probability": p} for c, p in zip(candidates, prob, strict=True)],
        }

    @bentoml.api(route="/knowledge_state")
    async def knowledge_state(
        self,
        history: Annotated[list[Interaction], Field(max_length=MAX_HISTORY)] = [],  # noqa: B006
        tags: Annotated[list[int], Field(max_length=MAX_CANDIDATES)] | None = None,
    ) -> dict[str, Any]:
        """Mastery per KnowledgeTag: P(correct) on a typical item of that skill, asked now."""
        cands = self.predictor.catalog_candidates(tags)
        items = [Item(**row) for row in cands.to_dict("records")]
        prob = await self._score(Job(history=history, candidates=items)) if items else []
        mastery = self.predictor.mastery(cands, np.asarray(prob)) if items else {}
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            "skills": [{"KnowledgeTag": tag, "mastery": p} for tag, p in sorted(mastery.items())],
        }

    @bentoml.api(route="/score")
    async def score(
        self,
        questions: Annotated[list[Item], Field(min_length=1, max_length=MAX_CANDIDATES)],
        history: Annotated[list[Interaction], Field(max_length=MAX_HISTORY)] = [],  # noqa: B006
    ) -> dict[str, Any]:
        """Expected score out of 100 on a question set: the mean P(correct) of its questions."""
        prob = await self._score(Job(history=history, candidates=questions))
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            "expected_score": round(100.0 * float(np.mean(prob)), 2),
            "n_questions": len(questions),
            "probabilities": prob,
        }


DKTService.add_asgi_middleware(BodyLimit)
