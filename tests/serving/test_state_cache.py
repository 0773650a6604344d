"""The per-student state cache (serving/state_cache.py) in-process, on the session's small trained LSTM and on every
model kind: a returning student is stepped from the cached state (sending its whole history or only the answers
after ``since``), anything else is recomputed, and the answers are always those of the uncached batch path; the
cache stays under its byte bound and forgets another model version's states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dkt.predictor import Predictor, load_predictor
from serving.frames import job_frames
from serving.schema import Job
from serving.state_cache import CachedJob, NotCached, StateCache, state_bytes
from tests.dkt.models.test_interface import bundles, data, one_thread, student  # noqa: F401 (fixtures: made once)


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
        got = cache.scores(predictor, "s1", j)
        np.testing.assert_allclose(got.probabilities, uncached(predictor, j), atol=1e-5)
        assert got.known_count == n
    c = cache.describe()
    assert (c["misses"], c["hits"], c["stale"], c["steps"], c["entries"]) == (1, 3, 0, 30, 1)
    # Not an extension of the cached answers: one answer changed; fewer answers; `at` before the last cached one.
    changed = [*history[:10], {**history[10], "answerCode": 1 - history[10]["answerCode"]}, *history[11:]]
    past = job(history, cands, at=str(pd.Timestamp(history[30]["Timestamp"])))
    for j in (job(changed, cands), job(history[:50], cands), past):  # each not an extension of the one before
        np.testing.assert_allclose(cache.scores(predictor, "s1", j).probabilities, uncached(predictor, j), atol=1e-5)
    assert cache.describe()["stale"] == 3
    # No `at`: shown now, after every answer, for both paths.
    np.testing.assert_allclose(
        cache.scores(predictor, "s2", job(history, cands, None)).probabilities,
        uncached(predictor, job(history, cands, None)),
        atol=1e-5,
    )


def test_since_sends_only_the_new_answers_and_refuses_what_the_state_cannot_take(
    predictor: Predictor, rows: tuple[list[dict], list[dict]]
) -> None:
    history, cands = rows
    cache = StateCache(10**8)
    assert cache.scores(predictor, "s", job(history[:30], cands)).known_count == 30
    for n, m in ((30, 31), (31, 40)):  # one answer, then nine, after the count the service gave back
        got = cache.scores(predictor, "s", job(history[n:m], cands), since=n)
        np.testing.assert_allclose(got.probabilities, uncached(predictor, job(history[:m], cands)), atol=1e-5)
        assert got.known_count == m
    # The whole history still works after tails (the digest chains answer by answer) and is a hit.
    hits = cache.describe()["hits"]
    assert cache.scores(predictor, "s", job(history[:45], cands)).known_count == 45
    assert cache.describe()["hits"] == hits + 1
    earlier_at = str(pd.Timestamp(history[43]["Timestamp"]))
    for since, tail, at, reason in (
        (44, history[45:50], None, "the service holds 45 answers"),  # another count
        (45, history[40:41], None, "before the student's last answer"),  # not after the cached answers
        (45, history[45:46], earlier_at, "before the student's last answer"),  # `at` before a cached answer
    ):
        with pytest.raises(NotCached, match=reason):
            cache.scores(predictor, "s", job(tail, cands, at=at) if at else job(tail, cands), since=since)
    with pytest.raises(NotCached, match="holds no answers"):
        cache.scores(predictor, "nobody", job(history[:3], cands), since=0)
    assert cache.scores(predictor, "s", job(history[45:50], cands), since=45).known_count == 50  # state unharmed


@pytest.mark.parametrize("name", ["akt", "bert", "dkvmn", "ensemble", "lgbm", "lstm", "lstmattn", "saint", "simplekt"])
def test_every_kind_answers_from_its_cached_state_as_uncached(
    name: str,
    bundles: dict[str, Path],  # noqa: F811 (the fixture imported above)
    student: tuple[pd.DataFrame, pd.DataFrame],  # noqa: F811
) -> None:
    """Through the cache's own path (a cold state_of, steps from the state, the since form, score_items) every
    kind gives what its batch path gives, across the window rule's moves (max_seq_len 8)."""
    p = load_predictor(bundles[name])
    hist, cands = student
    history = [{**r, "Timestamp": str(r["Timestamp"])} for r in hist.drop(columns="userID").to_dict("records")]
    items = cands.to_dict("records")
    cache, n = StateCache(10**8), 0
    for m, tail in ((9, False), (13, False), (21, True)):  # a miss, then steps across the window rule's moves
        at = str(pd.Timestamp(history[m]["Timestamp"]))
        whole = job(history[:m], items, at)
        got = cache.scores(p, "s", job(history[n:m], items, at), since=n) if tail else cache.scores(p, "s", whole)
        np.testing.assert_allclose(got.probabilities, uncached(p, whole), rtol=0, atol=1e-5, err_msg=f"{name} {m}")
        n = got.known_count
    c = cache.describe()
    assert (c["misses"], c["hits"], c["stale"]) == (1, 2, 0)


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


def test_concurrent_students_are_stepped_and_scored_together_as_alone(
    predictor: Predictor, rows: tuple[list[dict], list[dict]]
) -> None:
    """``scores_batch`` (one model call for every student's new answers, one for all their candidates) answers each
    student as ``scores`` alone does; a job the cache cannot take gets its error in its place, the others answers."""
    history, cands = rows
    together, alone = StateCache(10**8), StateCache(10**8)
    starts = {"a": 10, "b": 25, "c": 40}
    for sid, n in starts.items():
        for cache in (together, alone):
            cache.scores(predictor, sid, job(history[:n], cands))
    batch = [
        CachedJob("a", job(history[10:11], cands), since=10),  # one new answer, sent alone
        CachedJob("b", job(history[:29], cands)),  # four, in the whole history
        CachedJob("c", job(history[40:42], cands), since=39),  # a count the service does not hold
        CachedJob("new", job(history[:5], cands)),  # cold
    ]
    got = together.scores_batch(predictor, batch)
    assert isinstance(got[2], NotCached)
    for j, out in zip(batch, got, strict=True):
        if j.student_id != "c":
            want = alone.scores(predictor, j.student_id, j.job, since=j.since)
            np.testing.assert_allclose(out.probabilities, want.probabilities, rtol=0, atol=1e-6)
            assert out.known_count == want.known_count
