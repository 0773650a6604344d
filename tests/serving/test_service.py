"""The service started for real with `bentoml serve` and called over HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from dkt.data.schema import validate
from dkt.mastery import level, skill_evidence
from dkt.predictor import load_predictor
from tests.serving.servers import Server

pytestmark = pytest.mark.slow


def student(sim_dir: Path, n: int, user_rank: int = 0) -> list[dict]:
    """The first ``n`` answers of a real simulated student with enough history."""
    df = pd.read_csv(sim_dir / "test.csv", dtype={"assessmentItemID": str, "testId": str})
    sizes = df.groupby("userID").size().sort_values(ascending=False)
    rows = df[df["userID"] == sizes.index[user_rank]].head(n)
    cols = ["assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
    return [
        {k: (int(v) if k in ("answerCode", "KnowledgeTag") else v) for k, v in r.items()}
        for r in rows[cols].to_dict("records")
    ]


def items(sim_dir: Path, k: int, seed: int = 0) -> list[dict]:
    q = pd.read_csv(sim_dir / "questions.csv", dtype={"assessmentItemID": str, "testId": str})
    pick = q.sample(k, random_state=seed)
    return [
        {"assessmentItemID": r.assessmentItemID, "testId": r.testId, "KnowledgeTag": int(r.KnowledgeTag)}
        for r in pick.itertuples()
    ]


def post(service: Server, path: str, body: object, **kw: object) -> requests.Response:
    return requests.post(service.url + path, json=body, timeout=60, **kw)


def local(bundle: Path, history: list[dict], cands: list[dict], at: pd.Timestamp | None = None) -> np.ndarray:
    """What the model says in-process, for comparison with the service."""
    hist = validate(pd.DataFrame(history).assign(userID="u"), "h", row_offset=0)
    hist = hist.sort_values("Timestamp", kind="stable")
    return load_predictor(bundle).predict_candidates(hist, pd.DataFrame(cands), at)


def test_metadata_and_readyz(service: Server, packed) -> None:
    assert requests.get(service.url + "/readyz", timeout=10).status_code == 200
    meta = requests.get(service.url + "/metadata", timeout=10).json()
    bundle = json.loads((packed.bundle / "bundle.json").read_text())
    assert meta["model_name"] == "lstm"
    assert meta["model_version"] == bundle["model_version"] == "test-v1"
    assert meta["data_version"] == bundle["data_version"]
    assert meta["metrics"]["test_auc"] == pytest.approx(bundle["metrics"]["test_auc"])
    assert meta["model_tag"] == packed.model_tag
    # lineage: code, seed and the training config, as the bundle records them
    assert meta["code_version"] == bundle["code_version"] and meta["seed"] == bundle["seed"] == 1
    assert meta["code_commit"] == bundle["code_commit"] and meta["config_hash"] == bundle["config_hash"]
    assert meta["config_hash"].startswith("sha256:")
    assert meta["config"] == json.loads((packed.bundle / "config.json").read_text())
    assert meta["config"]["model"] == "lstm"


def test_predict_matches_the_model(service: Server, packed, sim_dir: Path) -> None:
    history, cands = student(sim_dir, 30), items(sim_dir, 20)
    r = post(service, "/predict", {"history": history, "candidates": cands})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "test-v1"
    got = np.array([p["probability"] for p in body["predictions"]])
    assert [p["assessmentItemID"] for p in body["predictions"]] == [c["assessmentItemID"] for c in cands]
    np.testing.assert_allclose(got, local(packed.bundle, history, cands), atol=1e-5)
    assert ((got > 0) & (got < 1)).all()
    # The history matters: a student who got everything wrong is predicted lower than one who got all right.
    right = [{**h, "answerCode": 1} for h in history]
    wrong = [{**h, "answerCode": 0} for h in history]
    p_right = [
        p["probability"]
        for p in post(service, "/predict", {"history": right, "candidates": cands}).json()["predictions"]
    ]
    p_wrong = [
        p["probability"]
        for p in post(service, "/predict", {"history": wrong, "candidates": cands}).json()["predictions"]
    ]
    assert np.mean(p_right) > np.mean(p_wrong) + 0.05


def test_new_student_unseen_items_and_long_history(service: Server, packed, sim_dir: Path) -> None:
    cands = [*items(sim_dir, 3), {"assessmentItemID": "Z999999999", "testId": "Z999000000", "KnowledgeTag": 987654}]
    r = post(service, "/predict", {"history": [], "candidates": cands})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 4  # unseen ids fall into the unknown class, not an error
    # max_seq_len is 50: a 120-answer history is scored as offline, whatever the input order: features over
    # all 120 answers, the window from window_start(120) on (tests/serving/test_parity.py checks every kind).
    long = student(sim_dir, 120)
    at = "2031-01-01 00:00:00"
    shuffled = [long[i] for i in np.random.default_rng(0).permutation(len(long))]
    full = post(service, "/predict", {"history": shuffled, "candidates": cands, "at": at}).json()["predictions"]
    tail = post(service, "/predict", {"history": long[-49:], "candidates": cands, "at": at}).json()["predictions"]
    got = np.array([p["probability"] for p in full])
    np.testing.assert_allclose(got, local(packed.bundle, long, cands, pd.Timestamp(at)), atol=1e-5)
    assert np.abs(got - [p["probability"] for p in tail]).max() > 1e-4  # the answers before the window count


def test_at_defaults_to_now(service: Server, sim_dir: Path) -> None:
    """No `at`: the candidates are shown now, long after these 2020 answers (no fixed 30 s guess)."""
    history, cands = student(sim_dir, 20), items(sim_dir, 5)
    last = max(pd.Timestamp(h["Timestamp"]) for h in history)

    def probs(at: str | None) -> np.ndarray:
        body = {"history": history, "candidates": cands, **({"at": at} if at else {})}
        r = post(service, "/predict", body)
        assert r.status_code == 200, r.text
        return np.array([p["probability"] for p in r.json()["predictions"]])

    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    np.testing.assert_allclose(probs(None), probs(str(now.floor("s"))), atol=1e-6)
    assert np.abs(probs(None) - probs(str(last + pd.Timedelta(seconds=30)))).max() > 1e-4


def test_knowledge_state_and_score(service: Server, packed, sim_dir: Path) -> None:
    history = student(sim_dir, 40)
    ks = post(service, "/knowledge_state", {"history": history}).json()
    catalog = json.loads((packed.bundle / "catalog.json").read_text())
    assert sorted(s["KnowledgeTag"] for s in ks["skills"]) == sorted(int(t) for t in catalog)
    assert all(0 < s["mastery"] < 1 for s in ks["skills"])
    p = load_predictor(packed.bundle)
    hist = validate(pd.DataFrame(history).assign(userID="u"), "h", row_offset=0)
    expected = p.knowledge_state(hist)
    evidence = skill_evidence(history)
    own = p.skill_mastery(hist)  # each skill after its own answers: what the level is decided from
    assert set(own) == set(evidence)
    for s in ks["skills"]:
        assert s["mastery"] == pytest.approx(expected[s["KnowledgeTag"]], abs=1e-5)
        n, recent = evidence.get(s["KnowledgeTag"], (0, []))
        assert s["evidence"] == n
        assert s["skill_mastery"] == (pytest.approx(own[s["KnowledgeTag"]], abs=1e-5) if n else None)
        assert s["level"] == level(s["skill_mastery"], n, recent)
    answered = {int(h["KnowledgeTag"]) for h in history}
    assert {s["KnowledgeTag"] for s in ks["skills"] if s["evidence"]} == answered
    # No answers in a skill: "not started", whatever the model's population-level P(correct) says.
    assert all(s["level"] == "not started" for s in ks["skills"] if s["KnowledgeTag"] not in answered)
    fresh = post(service, "/knowledge_state", {}).json()["skills"]
    assert {(s["level"], s["evidence"]) for s in fresh} == {("not started", 0)}
    some = post(service, "/knowledge_state", {"history": history, "tags": [int(next(iter(catalog)))]}).json()
    assert len(some["skills"]) == 1

    questions = items(sim_dir, 10, seed=3)
    score = post(service, "/score", {"history": history, "questions": questions}).json()
    probs = [
        x["probability"]
        for x in post(service, "/predict", {"history": history, "candidates": questions}).json()["predictions"]
    ]
    assert score["expected_score"] == pytest.approx(100 * np.mean(probs), abs=0.01)
    assert score["n_questions"] == 10


CAND = {"assessmentItemID": "A010001001", "testId": "A010000001", "KnowledgeTag": 1101}
ROW = {
    "assessmentItemID": "A010001001",
    "testId": "A010000001",
    "answerCode": 1,
    "Timestamp": "2020-01-01 10:00:00",
    "KnowledgeTag": 1101,
}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (
            {"history": [{**ROW, "Timestamp": "yesterday"}], "candidates": [CAND]},
            ["history", 0, "Timestamp"],
            "bad timestamp",
        ),
        (
            {"history": [{**ROW, "Timestamp": "2020-13-45 99:00:00"}], "candidates": [CAND]},
            ["history", 0, "Timestamp"],
            "bad timestamp",
        ),
        ({"history": [{**ROW, "answerCode": "1"}], "candidates": [CAND]}, ["history", 0, "answerCode"], "integer"),
        (
            {"history": [{**ROW, "answerCode": 2}], "candidates": [CAND]},
            ["history", 0, "answerCode"],
            "less than or equal",
        ),
        (
            {"history": [{**ROW, "KnowledgeTag": "math"}], "candidates": [CAND]},
            ["history", 0, "KnowledgeTag"],
            "integer",
        ),
        (
            {"history": [{**ROW, "assessmentItemID": ""}], "candidates": [CAND]},
            ["history", 0, "assessmentItemID"],
            "at least 1",
        ),
        (
            {"history": [{k: v for k, v in ROW.items() if k != "testId"}], "candidates": [CAND]},
            ["history", 0, "testId"],
            "required",
        ),
        ({"history": "none", "candidates": [CAND]}, ["history"], "valid array"),
        ({"history": []}, ["candidates"], "required"),
        ({"history": [], "candidates": []}, ["candidates"], "at least 1"),
        ({"history": [], "candidates": [CAND] * 501}, ["candidates"], "at most 500"),
        ({"history": [ROW, ROW], "candidates": [CAND]}, [], "history[1] repeats history[0]"),
    ],
)
def test_bad_requests_name_the_field(service: Server, body: dict, field: list, reason: str) -> None:
    r = post(service, "/predict", body)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert any(d["loc"] == field and reason in d["msg"] for d in detail), detail


def test_bad_bodies(service: Server) -> None:
    url = service.url + "/predict"
    for data in (b"", b"{not json", b"[1, 2]", b"null"):
        r = requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400, (data, r.status_code, r.text)
    big = b'{"history": [' + b" " * (5 * 1024 * 1024) + b"]}"
    r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "over" in r.json()["error"]

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for _ in range(5 * 16):
            yield b" " * 65536

    r = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert requests.get(service.url + "/readyz", timeout=10).status_code == 200  # and the service is still fine


def test_concurrent_requests_are_batched_correctly(service: Server, sim_dir: Path) -> None:
    """32 students at once (different histories) get exactly what each gets alone."""
    bodies = [
        {"history": student(sim_dir, 10 + 3 * i, user_rank=i % 8), "candidates": items(sim_dir, 5 + i % 7, seed=i)}
        for i in range(32)
    ]
    alone = [post(service, "/predict", b).json()["predictions"] for b in bodies[:8]]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda b: post(service, "/predict", b), bodies))
    assert all(r.status_code == 200 for r in together), [r.text for r in together if r.status_code != 200]
    for a, r in zip(alone, together[:8], strict=False):
        np.testing.assert_allclose(
            [p["probability"] for p in r.json()["predictions"]], [p["probability"] for p in a], atol=1e-5
        )
    for b, r in zip(bodies, together, strict=True):
        assert len(r.json()["predictions"]) == len(b["candidates"])


def test_returning_student_is_scored_from_the_cached_state(service: Server, sim_dir: Path) -> None:
    """With `student_id` a returning student's second request hits the per-student state cache (its counter in
    /metadata) and every endpoint answers what the same request without `student_id` answers."""
    history, cands, at = student(sim_dir, 60, user_rank=1), items(sim_dir, 8, seed=4), "2031-01-01 00:00:00"

    def cache() -> dict:
        return requests.get(service.url + "/metadata", timeout=30).json()["state_cache"]

    def predict(hist: list[dict], **extra: str) -> list[float]:
        r = post(service, "/predict", {"history": hist, "candidates": cands, "at": at, **extra})
        assert r.status_code == 200, r.text
        return [p["probability"] for p in r.json()["predictions"]]

    before = cache()
    first = predict(history[:59], student_id="returning-1")
    second = predict(history, student_id="returning-1")  # one answer more: one step from the cached state
    after = cache()
    assert after["hits"] == before["hits"] + 1 and after["steps"] == before["steps"] + 1
    assert after["misses"] == before["misses"] + 1 and after["entries"] >= 1 and after["bytes"] > 0
    np.testing.assert_allclose(first, predict(history[:59]), atol=1e-5)
    np.testing.assert_allclose(second, predict(history), atol=1e-5)
    # An edited history is not an extension of the cached one: recomputed, the same answer as uncached.
    edited = [{**history[3], "answerCode": 1 - history[3]["answerCode"]}, *history[:3], *history[4:]]
    np.testing.assert_allclose(predict(edited, student_id="returning-1"), predict(edited), atol=1e-5)
    assert cache()["stale"] == after["stale"] + 1
    # A returning client may send only the answers after the count it got back (`since`): the same scores.
    tail = post(service, "/predict", {"history": history[:50], "candidates": cands, "at": at, "student_id": "tail"})
    assert tail.json()["known_count"] == 50
    since = post(
        service,
        "/predict",
        {"history": history[50:], "candidates": cands, "at": at, "student_id": "tail", "since": 50},
    )
    assert since.status_code == 200 and since.json()["known_count"] == len(history), since.text
    np.testing.assert_allclose([p["probability"] for p in since.json()["predictions"]], second, atol=1e-5)
    for extra in ({"student_id": "tail", "since": 50}, {"since": 50}):  # a stale count; no student_id
        r = post(service, "/predict", {"history": history[50:], "candidates": cands, "at": at, **extra})
        assert r.status_code == 409 and "since" in r.text, r.text
    # /score and /knowledge_state: the first call stores the state, the second reads it; both as uncached.
    questions, tags = {"questions": cands}, {"tags": [c["KnowledgeTag"] for c in cands]}
    for path, body, key, value in (
        ("/score", questions, "probabilities", float),
        ("/knowledge_state", tags, "skills", dict),
    ):
        plain = post(service, path, {"history": history, **body}).json()
        for _ in range(2):
            cached = post(service, path, {"history": history, "student_id": f"returning{path}", **body}).json()
            assert cached.pop("known_count", len(history)) == len(history)  # /score says it, /knowledge_state not
            assert cached.keys() == plain.keys() and len(cached[key]) == len(plain[key]) > 0
            if value is dict:
                assert [s["KnowledgeTag"] for s in cached[key]] == [s["KnowledgeTag"] for s in plain[key]]
                got, want = [s["mastery"] for s in cached[key]], [s["mastery"] for s in plain[key]]
            else:
                got, want = cached[key], plain[key]
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert cache()["hits"] >= after["hits"] + 2
