"""The model worker: BentoML's adaptive batching merges the scoring jobs of concurrent requests into one model call.

``DKTService`` (service.py) validates a request and hands its job to ``DKTModel.score`` through
``bentoml.depends``: ``bentoml serve service:DKTService`` starts this service as its own worker process and the API
worker calls it over a local socket (pickled, never JSON). ``score`` is ``batchable``: BentoML's dispatcher in this
worker queues the calls of concurrent requests and passes them to the model as one list, sized by its latency model
(at most ``DKT_MAX_BATCH_SIZE``; a call queued longer than ``DKT_MAX_LATENCY_MS`` is answered 503). Each batch size
is observed in BentoML's ``bentoml_service_adaptive_batch_size`` histogram on the API worker's ``/metrics``.

Production and shadow score the same batch (``serving/shadow.py``: ``score_batch``), so both live here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bentoml
import torch

from dkt.predictor import Predictor
from serving.settings import settings
from serving.shadow import Scores, Scoring, score_batch
from serving.swap import swapper_for

log = logging.getLogger("bentoml.dkt_service.model")
# BentoML's client between services (_bentoml_impl/client/proxy2.py) renews its session every 100 calls or 5 minutes
# by default, closing the old one under the calls still in flight (bentoml/BentoML#5540): each renewal cut the ~25 calls
# in flight under load, and once in CI one of them never came back (a 504 after the API's 30 s timeout). A renewal is
# there to spread new connections over a dependency's replicas; the model worker is one process behind a local socket,
# so it spreads nothing. ``runner_connection`` below makes it once a year. A call that still loses its connection
# (the model worker restarted) is sent again: scoring is a pure function.
KEEP_SESSION = {"max_requests": 2**31 - 1, "max_age": 365 * 24 * 3600.0}
CONNECTION_RETRIES = 3


def batch_size_histogram() -> Callable[[int], None]:
    """``observe(n)`` of the ``dkt_batch_size`` histogram (jobs per model call), made in the worker process: a
    ``bentoml.metrics`` metric must be created after BentoML has set the worker's multiprocess metrics folder."""
    histogram = bentoml.metrics.Histogram(
        name="dkt_batch_size",
        documentation="scoring jobs merged into one model call",
        buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256],
    )
    return histogram.observe


@dataclass(frozen=True)
class Failed:
    """A job the model raised on: only its own caller gets the error (the others in its batch are answered)."""

    error: str


def score_each(production: Predictor, shadow: Predictor | None, batch: list[Scoring]) -> list[Scores | Failed]:
    """``score_batch`` over the whole batch; if it raises, each job alone, so one bad job fails only itself."""
    try:
        return list(score_batch(production, shadow, batch))
    except Exception:
        log.exception("a batch of %d failed; scoring its jobs one by one", len(batch))
    out: list[Scores | Failed] = []
    for scoring in batch:
        try:
            out.extend(score_batch(production, shadow, [scoring]))
        except Exception as exc:  # reported to the request that sent it
            out.append(Failed(f"{type(exc).__name__}: {exc}"))
    return out


@bentoml.service(
    name="dkt_model",
    workers=1,
    traffic={"timeout": settings.service_timeout_s},
    runner_connection=KEEP_SESSION,  # read by the API worker's bentoml.depends proxy
    logging={"access": {"enabled": False}},  # internal calls: the API worker logs each request once
)
class DKTModel:
    model_ref = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        torch.set_num_threads(max(1, settings.torch_threads))
        # Its own copy of the model, swapped as the API worker's is (serving/swap.py).
        self.swapper = swapper_for(Path(self.model_ref.path), str(self.model_ref.tag))
        self.observe_batch = batch_size_histogram()

    @bentoml.on_startup
    async def _watch_served_file(self) -> None:
        self._watch = self.swapper.watch_in_background()

    # BentoML refuses a max_batch_size of 1 (no batching: DKT_BATCHING=inprocess with DKT_MAX_BATCH_SIZE=1 is that).
    @bentoml.api(batchable=True, max_batch_size=max(2, settings.max_batch_size), max_latency_ms=settings.max_latency_ms)
    def score(self, jobs: list[Scoring]) -> list[Scores | Failed]:
        start = time.perf_counter()
        self.observe_batch(len(jobs))
        served = self.swapper.served
        scores = score_each(served.predictor, served.shadow.predictor if served.shadow else None, jobs)
        log.debug("batch of %d: %.1f ms", len(jobs), 1e3 * (time.perf_counter() - start))
        return scores


async def score_remote(model: DKTModel, scoring: Scoring) -> Scores:
    """``scoring`` sent to the model worker (``model``: the ``bentoml.depends`` proxy), merged there with the
    calls of concurrent requests; a job the model raised on raises here, for its own request only."""
    for attempt in range(CONNECTION_RETRIES + 1):
        try:
            (scores,) = await model.to_async.score([scoring])  # type: ignore[attr-defined]  # the proxy's
            break
        except aiohttp.ClientConnectionError:
            if attempt == CONNECTION_RETRIES:
                raise
            log.info("model worker call lost its connection; sent again")
    if isinstance(scores, Failed):
        raise RuntimeError(f"the model failed on this request: {scores.error}")
    return scores
