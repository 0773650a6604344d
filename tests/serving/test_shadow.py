"""Shadow models, fast: the service's batch path scores production and shadow together; the client logs the shadow's
probability for the question it chose beside production's, with the same request id, and never shows it.

The models are real bundles (the session's LSTM and one trained on shuffled answers); the client runs in-process
with a real InferenceClient over HTTP to the prediction log's stand-in service, whose /predict here also answers a
``shadow`` field. The same flow against a real `bentoml serve` is tests/pipeline/test_shadow_e2e.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dkt.predictor import Predictor, load_predictor
from serving.frames import job_frames
from serving.schema import Interaction, Item, Job
from serving.shadow import Scoring, score_batch
from tests.client.conftest import make_app, serving
from tests.client.test_app import answer, current_item, start
from tests.client.test_prediction_log import FakeService, _Handler, rows
from tests.serving.shadow_bundles import shuffled_bundle_dir
from tests.serving.test_service import items, student

AT = "2030-01-01 00:00:00"


@pytest.fixture(scope="session")
def shuffled_bundle(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shuffled_bundle_dir(sim_dir, tmp_path_factory)


def job(sim_dir: Path, n_history: int, n_items: int, seed: int, at: str | None = AT) -> Job:
    history = [Interaction(**row) for row in student(sim_dir, n_history, user_rank=seed)]
    return Job(history=history, candidates=[Item(**c) for c in items(sim_dir, n_items, seed)], at=at)


class Recording:
    """A real predictor that remembers the ``at`` of every job it scored (or fails, when ``broken``)."""

    def __init__(self, inner: Predictor, broken: bool = False) -> None:
        self.inner, self.broken, self.ats = inner, broken, []
        self.model_version = inner.model_version

    def predict_candidates_batch(self, jobs: Sequence[Any]) -> list[np.ndarray]:
        if self.broken:
            raise RuntimeError("the shadow's weights went missing")
        self.ats += [at for _, _, at in jobs]
        return self.inner.predict_candidates_batch(jobs)


def test_one_batch_scores_production_for_all_and_the_shadow_for_predict_jobs(
    sim_dir: Path, lstm_bundle: Path, shuffled_bundle: Path
) -> None:
    production, shadow = load_predictor(lstm_bundle), load_predictor(shuffled_bundle)
    jobs = [job(sim_dir, 20, 5, 0), job(sim_dir, 8, 3, 1), job(sim_dir, 0, 4, 2)]
    batch = [Scoring(jobs[0], True), Scoring(jobs[1], False), Scoring(jobs[2], True)]  # the 2nd: /score, /state
    scores = score_batch(production, shadow, batch)
    expected = production.predict_candidates_batch(job_frames(jobs))
    expected_shadow = shadow.predict_candidates_batch(job_frames([jobs[0], jobs[2]]))
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(got.production, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores[0].shadow, expected_shadow[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores[2].shadow, expected_shadow[1], rtol=0, atol=1e-6)
    assert scores[1].shadow is None
    assert np.abs(np.subtract(scores[0].shadow, scores[0].production)).max() > 1e-3  # its own model's numbers
    # No shadow: production's numbers, nothing else.
    assert [s.shadow for s in score_batch(production, None, batch)] == [None, None, None]


def test_without_at_both_models_score_the_same_moment(sim_dir: Path, lstm_bundle: Path, shuffled_bundle: Path) -> None:
    production, shadow = Recording(load_predictor(lstm_bundle)), Recording(load_predictor(shuffled_bundle))
    batch = [Scoring(job(sim_dir, 10, 3, 0, at=None), True), Scoring(job(sim_dir, 5, 2, 1, at=None), True)]
    score_batch(production, shadow, batch)  # type: ignore[arg-type]
    assert len(production.ats) == 2 and all(isinstance(at, pd.Timestamp) for at in production.ats)
    assert shadow.ats == production.ats


def test_a_failing_shadow_costs_only_its_field(
    sim_dir: Path, lstm_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    production = load_predictor(lstm_bundle)
    batch = [Scoring(job(sim_dir, 10, 3, 0), True)]
    with caplog.at_level(logging.ERROR, logger="bentoml.dkt_service.shadow"):
        scores = score_batch(production, Recording(production, broken=True), batch)  # type: ignore[arg-type]
    assert scores[0].shadow is None
    np.testing.assert_allclose(scores[0].production, score_batch(production, None, batch)[0].production)
    assert "shadow model test-v1 failed on a batch of 1" in caplog.text and "weights went missing" in caplog.text


class _ShadowHandler(_Handler):
    """The stand-in service with a shadow: /predict adds ``shadow`` (probabilities in reverse order of
    production's, so the chosen question's two probabilities differ) and remembers each request's
    (item, production, shadow) triples by request id; /metadata describes the shadow."""

    def _reply(self, status: int, out: dict[str, Any]) -> None:
        if status == 200 and "predictions" in out:
            probs = [p["probability"] for p in out["predictions"]]
            out = {**out, "shadow": {"model_name": "lstm", "model_version": "v-shadow", "probabilities": probs[::-1]}}
            pairs = zip(out["predictions"], probs[::-1], strict=True)
            self.server.scored[self.headers["X-Request-ID"]] = {  # type: ignore[attr-defined]
                p["assessmentItemID"]: (p["probability"], s) for p, s in pairs
            }
        if status == 200 and self.path == "/metadata":
            out = {**out, "shadow": {"model_name": "lstm", "model_version": "v-shadow", "metrics": {"test_auc": 0.55}}}
        super()._reply(status, out)


@pytest.fixture
def fake_with_shadow() -> Iterator[FakeService]:
    server = FakeService()
    server.RequestHandlerClass = _ShadowHandler  # socketserver reads it per connection
    server.scored = {}  # type: ignore[attr-defined]
    with serving(server) as running:
        yield running


def test_the_shadow_prediction_is_logged_beside_production_and_never_shown(
    tmp_path: Path, sim_dir: Path, fake_with_shadow: FakeService
) -> None:
    fake = fake_with_shadow
    app = make_app(tmp_path, sim_dir, fake.url)
    questions = pd.read_csv(sim_dir / "questions.csv", dtype=str).set_index("assessmentItemID")
    c = app.test_client()
    page = start(c, "shade")
    for i in range(3):
        assert "v-shadow" not in page  # the page names production's version only
        page = answer(c, page, questions.loc[current_item(page), "answer"] if i != 1 else "-999")
    db_path = tmp_path / "client.db"
    log = rows(db_path, "SELECT * FROM predictions ORDER BY id")
    assert [(p["role"], p["model_version"]) for p in log] == [("production", "v-a"), ("shadow", "v-shadow")] * 4
    answers = rows(db_path, "SELECT id, assessmentItemID, answerCode FROM interactions ORDER BY id")
    for k, (prod, shadow) in enumerate(zip(log[::2], log[1::2], strict=True)):
        assert prod["request_id"] == shadow["request_id"] and prod["assessmentItemID"] == shadow["assessmentItemID"]
        assert (prod["interaction_id"], prod["answerCode"]) == (shadow["interaction_id"], shadow["answerCode"])
        if k < 3:
            assert (prod["interaction_id"], prod["answerCode"]) == (answers[k]["id"], answers[k]["answerCode"])
        # Each is its model's probability for the question the page chose, from that request's response.
        scored = fake.scored[prod["request_id"]][prod["assessmentItemID"]]  # type: ignore[attr-defined]
        assert (prod["probability"], shadow["probability"]) == scored and scored[0] != scored[1]
    insights = json.loads(rows(db_path, "SELECT insights FROM students")[0]["insights"])
    assert insights["shadow"]["model_version"] == "v-shadow"
    assert insights["shadow"]["probability"] == log[-1]["probability"] != insights["next_probability"]
    assert insights["next_probability"] == log[-2]["probability"]
    # The shadow's offline test AUC is kept from /metadata's "shadow" the first time its version is logged.
    versions = rows(db_path, "SELECT model_version, test_auc FROM model_versions ORDER BY model_version")
    assert [(v["model_version"], v["test_auc"]) for v in versions] == [("v-a", 0.71), ("v-shadow", 0.55)]
