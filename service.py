"""The DKT inference service (BentoML 1.4): P(correct) for candidate items, mastery per skill, expected scores.

    bentoml serve service:DKTService --host 127.0.0.1 --port 3000

The model bundle is loaded once per worker from the BentoML model store (env
``DKT_MODEL_TAG``, default ``dkt-model:latest``; store in ``BENTOML_HOME``), and so is a shadow model
when ``DKT_SHADOW_MODEL_TAG`` names one (``serving/shadow.py``: scored beside production on /predict).
With ``DKT_SERVED_MODEL_FILE`` the worker serves the bundle that file names and swaps in a new one when it
changes, without a restart (``serving/swap.py``); each request keeps the model it started with.
Endpoints validate their body (400 naming the field and the reason), then
hand one job each to an in-process adaptive batcher (``serving/batcher.py``) that merges the jobs of concurrent
requests into one model call (``DKT_BATCHING=bentoml``: BentoML's adaptive batching in a model worker process,
``serving/model_worker.py``; measured slower, docs/serving.md#batching). The service keeps no per-request
state and writes nothing to disk.

This module is the API (the service class and its endpoints); what it stands on,
a request's way through the service, is in ``serving/`` (body limit -> schema ->
batcher -> frames -> predictor), its settings in ``serving/settings.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from http.client import CONFLICT
from pathlib import Path
from typing import Annotated, Any, TypeVar

import bentoml
import numpy as np
import pandas as pd
import torch
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dkt.bundle import lineage
from dkt.mastery import skill_levels
from dkt.models.inputs import resolve_after
from dkt.predictor import Predictor
from serving.batcher import MicroBatcher
from serving.hardening import harden
from serving.model_worker import DKTModel, batch_size_histogram, score_remote
from serving.schema import Interaction, Item, Job, Since, StudentId, Tag, Timestamp
from serving.settings import settings
from serving.shadow import Scores, Scoring, check_stored, score_batch
from serving.state_cache import CachedJob, NotCached, Scored
from serving.swap import Served, swapper_for

log = logging.getLogger("bentoml.dkt_service")  # under "bentoml": its log setup shows it
# The endpoints' answer, its media type declared: without it BentoML builds the output's JSON schema on every
# response (a pydantic TypeAdapter per call) only to learn that a dict is application/json.
JsonBody = Annotated[dict[str, Any], ContentType("application/json")]
J = TypeVar("J")
R = TypeVar("R")
if settings.shadow_model_tag:
    check_stored(settings.shadow_model_tag)


async def _metadata(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    if service is None:
        return JSONResponse({"error": "service is starting"}, status_code=503)
    return JSONResponse(service.metadata())


info_app = Starlette(routes=[Route("/metadata", _metadata, methods=["GET"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="dkt_service",
    # No BentoML max_concurrency: it counted requests whose body was still arriving (serving/concurrency.py).
    traffic={"timeout": settings.service_timeout_s},
    workers=1,
    endpoints={"readyz": "/readyz", "livez": "/livez"},
    logging={"access": {"enabled": settings.access_log}},
    # Tracing off: the API routes are excluded from BentoML's OpenTelemetry middleware, which then passes them through.
    tracing={} if settings.tracing else {"excluded_urls": ["/predict", "/score", "/knowledge_state"]},
)
class DKTService:
    model_ref = bentoml.models.BentoModel(settings.model_tag)
    if settings.batching == "bentoml":  # the model worker: its own process, BentoML batches there
        model = bentoml.depends(DKTModel)

    def __init__(self) -> None:
        torch.set_num_threads(max(1, settings.torch_threads))
        # The model, its shadow, config and state cache, as one swappable reference (serving/swap.py). Without
        # DKT_SERVED_MODEL_FILE (or before a deploy wrote it) DKT_MODEL_TAG's model; a shadow asked for loads now
        # or the service does not start (serving/shadow.py).
        self.swapper = swapper_for(Path(self.model_ref.path), str(self.model_ref.tag))
        self.batcher: MicroBatcher[tuple[Served, Scoring], Scores] = MicroBatcher(self._infer, settings.max_batch_size)
        self.observe_batch = batch_size_histogram()
        # Returning students who ask at once are stepped and scored together: one model call for all of them.
        # A lone one whose cached step is cheap runs on the event loop; a cold or heavy one on the thread.
        self.cached: MicroBatcher[tuple[Served, CachedJob], Scored | Exception] = MicroBatcher(
            self._cached_batch, settings.max_batch_size, inline=self._cheap
        )

    @bentoml.on_startup
    async def _watch_served_file(self) -> None:
        self._watch = self.swapper.watch_in_background()

    @property
    def predictor(self) -> Predictor:
        """The model serving now (a request takes ``self.swapper.served`` once instead, and keeps it)."""
        return self.swapper.served.predictor

    @staticmethod
    def _cheap(job: tuple[Served, CachedJob]) -> bool:
        served, cached = job
        return served.states is not None and served.states.cheap(served.predictor, cached)

    def _cached_batch(self, jobs: list[tuple[Served, CachedJob]]) -> list[Scored | Exception]:
        self.observe_batch(len(jobs))
        return by_model(jobs, lambda served, group: served.states.scores_batch(served.predictor, group))  # type: ignore[union-attr]  # only called with a cache

    async def _batched(self, served: Served, scoring: Scoring) -> Scores:
        if settings.batching == "bentoml":  # the model worker holds (and swaps) its own copy of the model
            return await score_remote(self.model, scoring)
        return await self.batcher.submit((served, scoring))

    def metadata(self) -> dict[str, Any]:
        served = self.swapper.served
        predictor = served.predictor
        meta = predictor.meta
        return {
            "model_name": predictor.model_name,
            "model_version": predictor.model_version,
            # Lineage (data version, code commit, config hash, seed): the keys the store manifest carries too.
            **lineage(meta),
            "config": served.config,
            "data_fingerprint": meta.get("data_fingerprint"),
            "metrics": meta.get("metrics", {}),
            "model_tag": served.tag,
            "max_seq_len": predictor.max_seq_len,
            "n_params": meta.get("n_params"),
            "created_at": meta.get("created_at"),
            "limits": {
                "max_history": settings.max_history,
                "max_candidates": settings.max_candidates,
                "max_body_bytes": settings.max_body_bytes,
            },
            **({"shadow": served.shadow.describe()} if served.shadow else {}),
            **({"state_cache": served.states.describe()} if served.states else {}),
            **({"swap": self.swapper.describe()} if settings.served_model_file is not None else {}),
        }

    def _infer(self, batch: list[tuple[Served, Scoring]]) -> list[Scores]:
        start = time.perf_counter()
        self.observe_batch(len(batch))
        scores = by_model(
            batch, lambda m, jobs: score_batch(m.predictor, m.shadow.predictor if m.shadow else None, jobs)
        )
        log.debug("batch of %d: %.1f ms", len(batch), 1e3 * (time.perf_counter() - start))
        return scores

    async def _score(self, served: Served, job: Job, student_id: str | None = None, since: int | None = None) -> Scored:
        """``known_count`` is -1 when no state was cached (no ``student_id`` or no cache)."""
        if since is not None and student_id is None:  # the history is a tail: scored alone it would be wrong
            raise BentoMLException("since: needs student_id (whose cached answers it counts)", error_code=CONFLICT)
        if student_id is not None and served.states is not None:  # a returning student: from their cached state
            scored = await self.cached.submit((served, CachedJob(student_id, job, since)))
            if isinstance(scored, NotCached):
                raise BentoMLException(str(scored), error_code=CONFLICT)
            if isinstance(scored, Exception):
                raise scored
            return scored
        if since is not None:
            raise BentoMLException("since: this service keeps no per-student state", error_code=CONFLICT)
        return Scored((await self._batched(served, Scoring(job))).production, -1)

    @staticmethod
    def _known(scored: Scored) -> dict[str, int]:
        return {"known_count": scored.known_count} if scored.known_count >= 0 else {}

    @bentoml.api(route="/predict")
    async def predict(
        self,
        candidates: Annotated[list[Item], Field(min_length=1, max_length=settings.max_candidates)],
        history: Annotated[list[Interaction], Field(max_length=settings.max_history)] = [],  # noqa: B006 (pydantic copies)
        at: Timestamp | None = None,
        student_id: StudentId | None = None,
        since: Since | None = None,
    ) -> JsonBody:
        """P(correct) for each candidate item if it were shown at ``at`` (default: now, UTC) after ``history``.

        With ``student_id`` the response adds ``known_count``, the answers the student's cached state holds; the
        next request may send only the answers after them with ``since`` = that count (409: send them all).
        With a shadow model (``DKT_SHADOW_MODEL_TAG``) the response adds ``shadow``: its name, version and
        probabilities for the same candidates at the same time; without one the response is unchanged."""
        job = Job(history=history, candidates=candidates, at=at)
        served = self.swapper.served  # this request's model to its end, whatever is swapped in meanwhile
        known: dict[str, int] = {}
        if (student_id is not None or since is not None) and served.shadow is None:  # a shadow: one batch, uncached
            scored = await self._score(served, job, student_id, since)
            scores, known = Scores(scored.probabilities), self._known(scored)
        elif since is not None:
            raise BentoMLException("since: a service with a shadow model scores uncached", error_code=CONFLICT)
        else:
            scores = await self._batched(served, Scoring(job, True))
        out = {
            "model_name": served.predictor.model_name,
            "model_version": served.predictor.model_version,
            "predictions": [
                {**c.model_dump(), "probability": p} for c, p in zip(candidates, scores.production, strict=True)
            ],
        }
        if served.shadow is not None and scores.shadow is not None:
            out["shadow"] = served.shadow.field(scores.shadow)  # logged by the client, never shown
        return out | known

    async def _skill_mastery(self, served: Served, history: list[Interaction], items: list[Item]) -> dict[int, float]:
        """Per skill with answers: its typical items scored after its own answers only (``dkt/mastery.py``), at
        the time the whole history's request is asked, so only the evidence differs."""
        answered = sorted({h.KnowledgeTag for h in history if h.answerCode in (0, 1)})
        own = [[i for i in items if i.KnowledgeTag == tag] for tag in answered]
        last = max((pd.Timestamp(h.Timestamp) for h in history), default=None)
        at = resolve_after(last, None).isoformat(sep=" ")
        jobs = [
            Job(history=[h for h in history if h.KnowledgeTag == tag], candidates=mine, at=at)
            for tag, mine in zip(answered, own, strict=True)
            if mine
        ]
        probs = [s.probabilities for s in await asyncio.gather(*(self._score(served, job) for job in jobs))]
        cands = pd.DataFrame([i.model_dump() for job in jobs for i in job.candidates], columns=list(Item.model_fields))
        return served.predictor.mastery(cands, np.concatenate([np.zeros(0), *probs])) if jobs else {}

    @bentoml.api(route="/knowledge_state")
    async def knowledge_state(
        self,
        history: Annotated[list[Interaction], Field(max_length=settings.max_history)] = [],  # noqa: B006
        tags: Annotated[list[Tag], Field(max_length=settings.max_candidates)] | None = None,
        student_id: StudentId | None = None,
    ) -> JsonBody:
        """Per KnowledgeTag: ``mastery`` (P(correct) on a typical item of that skill, asked now, after the whole
        history), ``skill_mastery`` (the same after that skill's own answers only; null without any), ``level``
        (from ``skill_mastery`` and the evidence) and ``evidence`` (answers in that skill): ``dkt/mastery.py``."""
        served = self.swapper.served
        cands = served.predictor.catalog_candidates(tags)
        items = [Item(**row) for row in cands.to_dict("records")]
        job = Job(history=history, candidates=items)
        prob = (await self._score(served, job, student_id)).probabilities if items else []
        mastery = served.predictor.mastery(cands, np.asarray(prob)) if items else {}
        history_rows = [h.model_dump() for h in history]
        return {
            "model_name": served.predictor.model_name,
            "model_version": served.predictor.model_version,
            "skills": skill_levels(mastery, history_rows, await self._skill_mastery(served, history, items)),
        }

    @bentoml.api(route="/score")
    async def score(
        self,
        questions: Annotated[list[Item], Field(min_length=1, max_length=settings.max_candidates)],
        history: Annotated[list[Interaction], Field(max_length=settings.max_history)] = [],  # noqa: B006
        student_id: StudentId | None = None,
        since: Since | None = None,
    ) -> JsonBody:
        """Expected score out of 100 on a question set: the mean P(correct) of its questions (``known_count`` and
        ``since`` as on /predict)."""
        served = self.swapper.served
        scored = await self._score(served, Job(history=history, candidates=questions), student_id, since)
        prob = scored.probabilities
        return {
            "model_name": served.predictor.model_name,
            "model_version": served.predictor.model_version,
            "expected_score": round(100.0 * float(np.mean(prob)), 2),
            "n_questions": len(questions),
            "probabilities": prob,
        } | self._known(scored)


def by_model(jobs: list[tuple[Served, J]], fn: Callable[[Served, list[J]], Sequence[R]]) -> list[R]:
    """``fn(served, its jobs)`` once per model in ``jobs`` (one group but in the second a swap happens), the
    results back in the jobs' order: a batch never scores a job with another model than its request took."""
    out: list[R | None] = [None] * len(jobs)
    groups: dict[int, tuple[Served, list[int]]] = {}
    for i, (served, _) in enumerate(jobs):
        groups.setdefault(id(served), (served, []))[1].append(i)
    for served, index in groups.values():
        for i, result in zip(index, fn(served, [jobs[i][1] for i in index]), strict=True):
            out[i] = result
    return out  # type: ignore[return-value]  # every index was filled


class EchoRequestId:
    """Send the caller's ``X-Request-ID`` back on the response, so a logged prediction (the client keeps the id)
    and this service's side of the call can be matched. Headers only: the bodies are untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request_id = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        if scope["type"] != "http" or request_id is None or len(request_id) > 128:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


harden(DKTService, settings)  # 415, 413, 408, 429, header timeout, 4xx logged at INFO (serving/hardening.py)
DKTService.add_asgi_middleware(EchoRequestId)
