"""The per-student state cache (serving/state_cache.py) in-process, on the session's small trained LSTM: a returning
student is stepped from the cached state, anything else is recomputed, and the answers are always those of the
uncached batch path; the cache stays under its byte bound and forgets another model version's states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dkt.predictor import Predictor, load_predictor
from serving.frames import job_frames
from serving.schema import Job
from serving.state_cache import StateCache, state_bytes


@pytest.fixture(scope="module")
def predictor(lstm_bundle: Path) -> Predictor:
    return load_predictor(lstm_bundle)


@pytest.fixture(scope="module")
def rows(sim_dir: Path) -> tuple[list[dict], list[dict]]:
    """A simulated student's first 70 answers (in a shuffled order: the cache orders them), and 6 items."""
    df = pd.read_csv(sim_dir / "test.csv", dtype={"assessmentItemID": str, "testId": str})
    user = df.groupby("userID").size().idxmax()
    hist = df[df["userID"] == user].head(70)[["assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]]
    cands = df[["assessmentItemID", "testId", "KnowledgeTag"]].drop_duplicates().head(6)
    return hist.to_dict("records"), cands.to_dict("records")


def job(history: list[dict], cands: list[dict], at: str | None = "2031-01-01 00:00:00") -> Job:
    return Job.model_validate({"history": history, "candidates": cands, "at": at})


def uncached(p: Predictor, j: Job) -> np.ndarray:
    return p.predict_candidates_batch(job_frames([j]))[0]


def test_returning_stale_and_past_requests_answer_as_uncached(
    predictor: Predictor, rows: tuple[list[dict], list[dict]]
) -> None:
    history, cands = rows
    cache = StateCache(10**8)
    for n in (40, 41, 45, 70):  # one miss, then hits stepping 1, 4 and 25 new answers
        j = job(history[:n], cands)
        np.testing.assert_allclose(cache.scores(predictor, "s1", j), uncached(predictor, j), atol=1e-5)
    c = cache.describe()
    assert (c["misses"], c["hits"], c["stale"], c["steps"], c["entries"]) == (1, 3, 0, 30, 1)
    # Not an extension of the cached answers: one answer changed; fewer answers; `at` before the last cached one.
    changed = [*history[:10], {**history[10], "answerCode": 1 - history[10]["answerCode"]}, *history[11:]]
    past = job(history, cands, at=str(pd.Timestamp(history[30]["Timestamp"])))
    for j in (job(changed, cands), job(history[:50], cands), past):  # each not an extension of the one before
        np.testing.assert_allclose(cache.scores(predictor, "s1", j), uncached(predictor, j), atol=1e-5)
    assert cache.describe()["stale"] == 3
    # No `at`: shown now, after every answer, for both paths.
    np.testing.assert_allclose(
        cache.scores(predictor, "s2", job(history, cands, None)),
        uncached(predictor, job(history, cands, None)),
        atol=1e-5,
    )


def test_bounded_by_bytes_least_recently_used_first_and_dropped_on_model_switch(
    predictor: Predictor, rows: tuple[list[dict], list[dict]]
) -> None:
    history, cands = rows
    one = state_bytes(predictor.state_of(job_frames([job(history[:20], cands)])[0][0]))
    assert one > 0
    cache = StateCache(int(2.5 * (one + 400)))  # room for two students' states, not three
    for sid in ("a", "b", "a", "c"):  # "a" used again after "b": "b" is the least recently used when "c" comes
        cache.scores(predictor, sid, job(history[:20], cands))
    c = cache.describe()
    assert c["entries"] == 2 and c["evicted"] == 1 and c["bytes"] <= c["max_bytes"]
    assert set(cache.entries) == {"a", "c"}
    assert cache.lookup("another-version", "a", []) is None  # a new model: every state dropped
    assert cache.describe()["entries"] == 0 and cache.describe()["bytes"] == 0
