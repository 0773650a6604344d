"""Promotion gates: the paired comparison and its rule, the history in the store, and gate (b) end to end through
``dkt models shadow`` / ``promote-shadow`` on a real client database and real bundles in a real store."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from client import db
from dkt.quality import auc
from models.cli import main as models_cli
from pipeline import promotions
from pipeline.store import CorruptError, VersionedStore
from tests.pipeline.test_retrain import copy_as


# -- the comparison and the rule ------------------------------------------------------------------------
def test_compare_gives_both_aucs_and_a_paired_interval_of_their_difference() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0, 1)
    noisy = np.clip(good + rng.normal(0, 0.3, y.size), 0, 1)
    f = promotions.compare(y, noisy, good, n_boot=500)
    assert f["n"] == 400 and f["n_boot"] == 500
    assert f["candidate_auc"] == pytest.approx(auc(noisy, y)) and f["production_auc"] == pytest.approx(auc(good, y))
    assert f["diff"] == pytest.approx(f["production_auc"] - f["candidate_auc"]) and f["diff"] > 0
    lo, hi = f["diff_ci95"]
    assert 0 < lo < f["diff"] < hi  # the worse candidate is shown worse on 400 answers
    assert promotions.compare(y, noisy, good, n_boot=500) == f  # seeded
    # The same model on both sides: every paired resample differs by exactly 0, an unpaired one would not.
    same = promotions.compare(y, good, good, n_boot=200)
    assert same["diff"] == 0 and same["diff_ci95"] == [0.0, 0.0]
    # No production: its figures are null, and one class only: no AUC at all.
    assert promotions.compare(y, good, None, n_boot=200)["production_auc"] is None
    assert promotions.compare(np.ones(5), good[:5], good[:5], n_boot=50)["candidate_auc"] is None


def figures(c: float | None, p: float | None, ci: list[float] | None) -> dict[str, Any]:
    diff = p - c if c is not None and p is not None else None
    return {"n": 300, "candidate_auc": c, "production_auc": p, "diff": diff, "diff_ci95": ci, "min_answers": 200}


@pytest.mark.parametrize(
    ("fig", "production", "verdict"),
    [
        (figures(0.70, None, None), None, "promote"),  # nothing to compare with
        (figures(0.70, 0.70, [-0.01, 0.004]), "v1", "promote"),  # upper bound within the tolerance 0.005
        (figures(0.75, 0.70, [-0.08, -0.02]), "v1", "promote"),  # better
        (figures(0.69, 0.70, [-0.01, 0.03]), "v1", "undecided"),  # may be worse by more than 0.005: not shown
        (figures(0.60, 0.70, [0.06, 0.14]), "v1", "worse"),
        (figures(None, 0.70, None), "v1", "worse"),  # a candidate AUC that is undefined never goes
        (figures(0.70, None, None), "v1", "promote"),  # production unmeasurable on these answers
    ],
)
def test_decide(fig: dict[str, Any], production: str | None, verdict: str) -> None:
    d = promotions.decide(fig, 0.005, production)
    assert d.verdict == verdict and d.promote is (verdict == "promote")
    if fig["diff_ci95"]:
        assert f"{fig['diff_ci95'][1]:+.4f}" in d.reason  # the figures that decided are in the reason


@pytest.mark.parametrize(
    ("fig", "verdict"),
    [
        (figures(0.698, 0.70, [-0.01, 0.02]), "promote"),  # undecided, point estimate within 0.005: fresher wins
        (figures(0.69, 0.70, [-0.01, 0.03]), "undecided"),  # point estimate 0.01 worse: kept out
        (figures(0.60, 0.70, [0.06, 0.14]), "worse"),  # shown worse stays worse
    ],
)
def test_decide_for_a_retrained_candidate(fig: dict[str, Any], verdict: str) -> None:
    assert promotions.decide(fig, 0.005, "v1", fresh=True).verdict == verdict
    assert promotions.decide(fig, 0.005, "v1").verdict == ("undecided" if verdict == "promote" else verdict)


# -- the history ---------------------------------------------------------------------------------------
def test_history_keeps_every_entry_newest_first_even_when_written_concurrently(store: VersionedStore) -> None:
    assert promotions.history(store) == []
    first = promotions.entry("holdout", "v1", None, True, "first", figures(0.7, None, None))
    promotions.record(store, {**first, "at": "2026-01-01T00:00:00Z"})
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(3):
                doc = promotions.entry("shadow", f"v{i}-{j}", "v1", False, "refused", figures(0.6, 0.7, [0.05, 0.15]))
                promotions.record(store, {**doc, "at": "2026-01-02T00:00:00Z"})  # the same second for all
        except BaseException as exc:  # the assert below reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # what a writer thread raised
    got = promotions.history(store)
    assert len(got) == 19 and got[-1]["reason"] == "first"  # no write lost, the oldest last
    assert {e["candidate"] for e in got[:-1]} == {f"v{i}-{j}" for i in range(6) for j in range(3)}
    assert all(list(e) == list(promotions.ENTRY_KEYS) for e in got)
    with pytest.raises(ValueError, match="exactly the keys"):
        promotions.record(store, {**first, "extra": 1})
    store.blobs.put_bytes(f"{promotions.PREFIX}/bad.json", b"{not json")
    with pytest.raises(CorruptError, match=r"promotions/bad\.json"):
        promotions.history(store)


# -- gate (b) through the CLI ---------------------------------------------------------------------------
def log_answers(
    path: Path, answers: pd.DataFrame, logged: dict[tuple[str, str], np.ndarray], explored: bool = True
) -> None:
    """Each answer as the page records it: the predictions of one request for its question (``logged``:
    (role, model version) -> probabilities per answer), then the answer, joined to them (client/db.py).
    ``explored``: the questions were drawn at random (DKT_EXPLORE_RATE), not chosen by production."""
    conn = db.connect(path)
    db.init(conn)
    conn.execute("PRAGMA synchronous=OFF")  # a test file: the page's fsync per answer adds only seconds here
    for i, row in enumerate(answers.itertuples(index=False)):
        sid = db.get_or_create_student(conn, str(row.userID))
        item = str(row.assessmentItemID)
        preds = [{"role": role, "model_version": v, "model_name": "lstm", "probability": float(p[i]),
                  "explored": explored} for (role, v), p in logged.items()]  # fmt: skip
        db.set_current(conn, sid, item, None, request_id=uuid.uuid4().hex, predictions=preds)
        question = {"assessmentItemID": item, "testId": str(row.testId), "KnowledgeTag": int(row.KnowledgeTag)}
        db.record_answer(conn, sid, question, bool(row.answerCode), given="x")
    conn.close()


# The gate reads the store through the same calls as every command; on S3 this test only costs more seconds
# (35 s against 7 s at load 11): the S3 store is covered by the history and pointer tests.
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_promote_shadow_waits_refuses_a_worse_shadow_and_promotes_a_better_one(
    store: VersionedStore,
    lstm_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dkt.predictor import load_predictor

    monkeypatch.setenv("DKT_GATE_BOOTSTRAP", "300")
    assert models_cli(["push", str(lstm_bundle), "--promote"]) == 0  # production: test-v1
    for v in ("shadow-worse", "shadow-better"):
        assert models_cli(["push", str(copy_as(lstm_bundle, tmp_path / v, v))]) == 0
    # What each model told the page: production's real predictions; a worse shadow that ignores who answers
    # (production's probabilities shuffled across answers); a better one (the simulator's true probabilities).
    answers = pd.read_csv(sim_dir / "test.csv", dtype={"userID": str})
    answers = answers[answers["answerCode"] >= 0].reset_index(drop=True)
    test, chosen = answers.head(300), answers.iloc[300:500].reset_index(drop=True)
    prod = load_predictor(lstm_bundle).predict_rows(test)
    logged = {("production", "test-v1"): prod, ("shadow", "shadow-worse"): np.random.default_rng(0).permutation(prod),
              ("shadow", "shadow-better"): test["p_true"].to_numpy()}  # fmt: skip
    client_db = tmp_path / "client.db"
    log_answers(client_db, test, logged)
    # Questions chosen by target difficulty: production's probabilities squeezed at 0.7 (AUC 0.5), the worse
    # shadow the simulator's truth. The gate leaves them out: n and production's AUC are the explored answers'.
    at_target = {k: np.full(len(chosen), 0.7) if k[0] == "production" else chosen["p_true"].to_numpy() for k in logged}
    log_answers(client_db, chosen, at_target, explored=False)
    gate = ["promote-shadow", "--client-db", str(client_db)]

    assert models_cli([*gate]) == 99  # no shadow yet
    assert "no shadow model is set" in capsys.readouterr().err
    assert models_cli(["shadow", "shadow-worse"]) == 0 and store.pointed("models", "shadow") == "shadow-worse"
    assert models_cli([*gate, "--min-answers", "301"]) == 99
    assert "waiting: 300 of the 301 explored answers scored by both" in capsys.readouterr().err
    assert promotions.history(store) == []  # waiting records nothing

    assert models_cli([*gate, "--min-answers", "200", "--run-id", "r1"]) == 99
    err = capsys.readouterr().err
    assert "figures: " in err and "skip: not promoted:" in err and "worse by more than 0.005" in err
    [refused] = promotions.history(store)
    f = refused["figures"]
    assert (refused["gate"], refused["candidate"], refused["production"], refused["promoted"]) == (
        "shadow", "shadow-worse", "test-v1", False)  # fmt: skip
    assert f["n"] == 300 and f["min_answers"] == 200 and f["diff_ci95"][0] > 0.005 and f["run_id"] == "r1"
    assert f["production_auc"] == pytest.approx(auc(prod, test["answerCode"]))  # exactly the explored answers
    # Online quality keeps every answer; --explored-only only those the gate reads.
    for flag, n in (([], 500), (["--explored-only"], 300)):
        assert models_cli(["quality", "--db", str(client_db), "--n-boot", "0", "--json", *flag]) == 0
        rows = {r["model_version"]: r["n"] for r in json.loads(capsys.readouterr().out)}
        assert rows == {"test-v1": n, "shadow-worse": n, "shadow-better": n}
    assert models_cli([*gate, "--min-answers", "200"]) == 99  # decided already: not recorded twice
    assert len(promotions.history(store)) == 1 and store.pointed("models", "production") == "test-v1"

    assert models_cli(["shadow", "shadow-better"]) == 0
    capsys.readouterr()
    assert models_cli([*gate, "--min-answers", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["promoted"] == "shadow-better" and out["figures"]["diff_ci95"][1] <= 0.005
    assert store.pointed("models", "production") == "shadow-better" and store.pointed("models", "shadow") is None
    promoted = promotions.history(store)[0]
    assert promoted["promoted"] and promoted["candidate"] == "shadow-better" and promoted["production"] == "test-v1"
    assert promoted["figures"]["candidate_auc"] == pytest.approx(auc(test["p_true"], test["answerCode"]))

    # A manual promotion is in the history too; the text view lists all three, newest first.
    assert models_cli(["promote", "test-v1"]) == 0
    capsys.readouterr()
    assert models_cli(["promotions"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[1:3] for ln in lines] == [["manual", "promoted"], ["shadow", "promoted"], ["shadow", "refused"]]
    assert models_cli(["promotions", "--json"]) == 0
    assert [e["gate"] for e in json.loads(capsys.readouterr().out)] == ["manual", "shadow", "shadow"]


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["shadow"], "give a VERSION to shadow, or --clear"),
        (["shadow", "v1", "--clear"], "give a VERSION to shadow, or --clear"),
        (["shadow", "nope-v9"], "no complete models version 'nope-v9'"),
        (["promote-shadow", "--client-db", "/nonexistent/client.db"], "/nonexistent/client.db: no such client"),
        (["promote-shadow", "--min-answers", "0"], "--min-answers must be at least 1"),
    ],
)
def test_shadow_commands_refuse_bad_input_in_one_line(
    store: VersionedStore, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_shadow_pointer_is_set_and_cleared(
    store: VersionedStore, lstm_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert models_cli(["push", str(lstm_bundle)]) == 0
    assert models_cli(["shadow", "latest"]) == 0 and store.pointed("models", "shadow") == "test-v1"
    capsys.readouterr()
    assert models_cli(["list"]) == 0 and capsys.readouterr().out.rstrip().endswith("<- latest, shadow")
    assert models_cli(["shadow", "--clear"]) == 0 and store.pointed("models", "shadow") is None
    assert models_cli(["shadow", "--clear"]) == 0  # nothing to clear: still done
