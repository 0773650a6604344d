from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dkt.data.io import read_csv
from dkt.itembank import MAX_ITEMS_PER_TEST, build_item_bank, grade, load_questions
from dkt.simulate import simulate
from tests.conftest import ROOT


def test_item_bank_questions_are_correct_arithmetic() -> None:
    bank = build_item_bank()
    ops = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__}
    for q, a in zip(bank["question"], bank["answer"], strict=True):
        x, op, y, *_ = q.split()
        assert ops[op](int(x), int(y)) == int(a), q
        if op == "÷":
            assert int(x) % int(y) == 0, q
    assert bank.groupby("testId").size().max() <= MAX_ITEMS_PER_TEST
    assert bank["assessmentItemID"].str.fullmatch(r"A\d{9}").all()
    assert bank["KnowledgeTag"].nunique() == 16
    assert bank["assessmentItemID"].str[1:4].nunique() >= 4  # several grade heads


def test_grading_forgives_formatting_only() -> None:
    assert grade(" 1,024 ", "1024") and grade("+7", "7")
    assert not grade("1023", "1024") and not grade("seven", "7") and not grade("", "7")


def test_simulation_is_deterministic_and_learnable() -> None:
    a, b = simulate(30, seed=3), simulate(30, seed=3)
    assert a.interactions.equals(b.interactions)
    df = a.interactions
    assert df.groupby("userID")["Timestamp"].is_monotonic_increasing.all()
    assert 0.4 < df["answerCode"].mean() < 0.9
    # The true probabilities separate right from wrong answers: there is signal to learn.
    assert a.oracle_auc() > 0.75
    # Practice helps: later answers of a skill are right more often than first ones.
    first = df.groupby(["userID", "KnowledgeTag"]).head(1)["answerCode"].mean()
    later = df.drop(df.groupby(["userID", "KnowledgeTag"]).head(3).index)["answerCode"].mean()
    assert later > first


def test_cli_writes_valid_canonical_files(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = subprocess.run(
        [sys.executable, "-m", "dkt", "simulate", "--users", "20", "--out", str(out), "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "oracle AUC" in res.stdout
    summary = json.loads((out / "oracle.json").read_text())
    train, test = read_csv(out / "train.csv"), read_csv(out / "test.csv")
    assert set(train["userID"]).isdisjoint(test["userID"])
    assert len(train) + len(test) == summary["n_rows"]
    questions = load_questions(out / "questions.csv")
    assert set(train["assessmentItemID"]) <= set(questions["assessmentItemID"])
    assert np.isfinite(summary["oracle_auc"])
