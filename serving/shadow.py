"""A shadow model: scored beside production on the same requests, reported, never what the page shows.

``DKT_SHADOW_MODEL_TAG`` names a second model in the BentoML store. The service loads it at start-up (a
shadow that was asked for and does not load stops the service: serving without it would silently lose
the evidence it was deployed to gather) and scores each ``/predict`` job with both models in the same
batch call (``score_batch``). The shadow's probabilities go into the response's ``shadow`` field, which
the client logs with role ``shadow`` beside production's (client/db.py); promotion on that evidence is
``dkt models promote-shadow`` (docs/monitoring.md, Shadow models).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkt.bundle import lineage
from dkt.predictor import Predictor, load_predictor, resolve_at
from dkt.settings import stop
from dkt.training import resolve_device
from serving.frames import job_frames
from serving.schema import Job
from serving.settings import settings

log = logging.getLogger("bentoml.dkt_service.shadow")


class ShadowError(RuntimeError):
    """The shadow model asked for cannot be served; the message names the setting and the reason."""


@dataclass(frozen=True)
class Scoring:
    """What the batcher carries: a job and whether the shadow scores it too (only ``/predict`` asks)."""

    job: Job
    with_shadow: bool = False


@dataclass(frozen=True)
class Scores:
    production: list[float]
    shadow: list[float] | None = None  # None: not asked for, no shadow, or the shadow failed on this batch


def check_stored(tag: str) -> None:
    """At import, in ``bentoml serve``'s main process: a shadow tag the store lacks stops the server with one
    line, exit 2. (An exception in the worker's start-up only logs "Application startup failed" while the
    server process keeps running, never ready: a deploy would wait out its timeout to learn why.)"""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound as exc:
        stop(f"DKT_SHADOW_MODEL_TAG={tag!r}: {exc}")


@dataclass
class Shadow:
    predictor: Predictor
    tag: str

    @classmethod
    def load(cls, tag: str) -> Shadow:
        """The model ``tag`` from the BentoML store (``BENTOML_HOME``), loaded like production's."""
        import bentoml
        from bentoml.exceptions import BentoMLException

        try:
            model = bentoml.models.get(tag)
            predictor = load_predictor(Path(model.path), device=str(resolve_device(settings.device)))
        except (BentoMLException, OSError, ValueError) as exc:
            raise ShadowError(f"DKT_SHADOW_MODEL_TAG={tag!r}: cannot load the shadow model: {exc}") from exc
        return cls(predictor, str(model.tag))

    def describe(self) -> dict[str, Any]:
        """The shadow's part of ``/metadata``: which model, its lineage and offline metrics."""
        meta = self.predictor.meta
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            "model_tag": self.tag,
            **lineage(meta),
            "metrics": meta.get("metrics", {}),
        }

    def field(self, probabilities: list[float]) -> dict[str, Any]:
        """The ``shadow`` field of a ``/predict`` response."""
        return {
            "model_name": self.predictor.model_name,
            "model_version": self.predictor.model_version,
            "probabilities": probabilities,
        }


def score_batch(production: Predictor, shadow: Predictor | None, batch: list[Scoring]) -> list[Scores]:
    """Production's probabilities for every job; the shadow's too for the jobs that ask, in one pass each.

    Both models score the same moment: a job without ``at`` ("now") gets it fixed once, before either model
    reads the clock. A shadow that raises costs only its own field (logged): production's answer stands.
    """
    frames = job_frames([s.job for s in batch])
    asked = [i for i, s in enumerate(batch) if s.with_shadow] if shadow is not None else []
    if asked:
        frames = [(hist, cands, resolve_at(hist, at)) for hist, cands, at in frames]
    probs = [[float(p) for p in prob] for prob in production.predict_candidates_batch(frames)]
    shadow_probs: dict[int, list[float]] = {}
    if asked and shadow is not None:
        try:
            scored = shadow.predict_candidates_batch([frames[i] for i in asked])
        except Exception:  # the shadow is evidence, not service: it must never fail a request
            log.exception("shadow model %s failed on a batch of %d; production answered", shadow.model_version,
                          len(asked))  # fmt: skip
        else:
            shadow_probs = {i: [float(p) for p in prob] for i, prob in zip(asked, scored, strict=True)}
    return [Scores(prob, shadow_probs.get(i)) for i, prob in enumerate(probs)]
