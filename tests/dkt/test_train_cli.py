"""train.py as a person or the DAG runs it (a real subprocess): bad input is one error line, undefined
metrics are null with a reason, the bundle records its lineage, and the same data and seed give the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dkt.bundle import LINEAGE_KEYS, BundleError, read_meta
from dkt.verify import verify_bundle
from tests.conftest import ROOT, TINY_LSTM
from tests.support.scripts import Job, Result, ScriptBatch

TINY = {**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}


def strict_json(text: str) -> Any:
    """Parse JSON refusing NaN / Infinity, which Python's json would otherwise accept silently."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def train_cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "train.py", "--device", "cpu", "--no-progress", *map(str, args)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def rows(sim_dir: Path, name: str = "train.csv") -> pd.DataFrame:
    return pd.read_csv(sim_dir / name, dtype=str)


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


# Each case builds (train file, test file, output dir) in tmp and names what the error must say.
Case = Callable[[Path, Path], tuple[Path, Path, Path, list[str]]]


def one_user(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    df = rows(sim)
    f = write(df[df["userID"] == df["userID"].iloc[0]], tmp / "one_user.csv")
    return f, sim / "test.csv", tmp / "out", [str(f), f"1 user ('{df['userID'].iloc[0]}')", "--valid-file"]


def one_row(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = write(rows(sim).head(1), tmp / "one_row.csv")
    return f, sim / "test.csv", tmp / "out", [str(f), "1 row(s); training needs at least 2"]


def year_0001(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    df = rows(sim)
    df.loc[4, "Timestamp"] = "0001-01-09 06:32:18"
    f = write(df, tmp / "y1.csv")
    return f, sim / "test.csv", tmp / "out", [str(f), "row 6, column 'Timestamp'", "'0001-01-09 06:32:18' is outside"]


def binary(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = tmp / "model.csv"
    f.write_bytes(b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256)) * 8)  # what a zip looks like
    return f, sim / "test.csv", tmp / "out", [str(f), "binary file"]


def not_utf8(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = tmp / "latin1.csv"
    f.write_bytes((sim / "train.csv").read_bytes().replace(b"u00001", b"\xe9l\xe8ve1", 1))
    return f, sim / "test.csv", tmp / "out", [str(f), "not UTF-8 text (byte 0xe9"]


def all_correct(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = write(rows(sim).assign(answerCode="1"), tmp / "all_correct.csv")
    return f, sim / "test.csv", tmp / "out", [str(f), "column 'answerCode'", "every answer is 1 (correct)"]


def empty(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = tmp / "empty.csv"
    f.write_bytes(b"")
    return f, sim / "test.csv", tmp / "out", [str(f), "empty file"]


def header_only(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    f = write(rows(sim).head(0), tmp / "header.csv")
    return f, sim / "test.csv", tmp / "out", [str(f), "no rows"]


def missing(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    return tmp / "nope.csv", sim / "test.csv", tmp / "out", [str(tmp / "nope.csv"), "file not found"]


def missing_test_file(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    return sim / "train.csv", tmp / "nope.csv", tmp / "out", [str(tmp / "nope.csv"), "file not found"]


def output_dir_is_a_file(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    out = tmp / "out"
    out.write_text("a file, not a folder\n")
    return sim / "train.csv", sim / "test.csv", out, [f"--output-dir {out}", "exists and is not a folder"]


def shared_student(sim: Path, tmp: Path) -> tuple[Path, Path, Path, list[str]]:
    train, test = rows(sim), rows(sim, "test.csv")
    moved = test["userID"].iloc[0]
    f = write(pd.concat([train, test[test["userID"] == moved]]), tmp / "leaky_train.csv")
    return f, sim / "test.csv", tmp / "out", [f"user '{moved}' is in both --train-file and --test-file"]


CASES: list[Case] = [
    one_user,
    one_row,
    year_0001,
    binary,
    not_utf8,
    all_correct,
    empty,
    header_only,
    missing,
    missing_test_file,
    output_dir_is_a_file,
    shared_student,
]


@dataclass
class Refusal:
    result: Result
    out: Path
    expected: list[str]


@pytest.fixture(scope="module")
def refusals(sim_dir: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """train.py on every bad input, one after another in one child process (tests/support/scripts.py: each run
    is train.py as __main__ with its own argv, so one interpreter start-up serves all twelve)."""
    made = {}
    for case in CASES:
        train, test, out, expected = case(sim_dir, tmp_path_factory.mktemp(case.__name__))
        argv = ["--device", "cpu", "--no-progress", "--config", str(config_file), "--train-file", str(train),
                "--test-file", str(test), "--output-dir", str(out)]  # fmt: skip
        made[case.__name__] = (Job("train.py", argv), out, expected)
    batch = ScriptBatch.start([job for job, _, _ in made.values()], os.environ, tmp_path_factory.mktemp("batch"))
    results = batch.wait()
    return {name: Refusal(r, out, exp) for (name, (_, out, exp)), r in zip(made.items(), results, strict=True)}


# On one xdist worker: split between two, each made the module's `refusals` (4.2 CPU-s: the child's imports).
@pytest.mark.xdist_group("train-cli-refusals")
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_no_bundle(case: Case, refusals: dict[str, Refusal]) -> None:
    refusal = refusals[case.__name__]
    res, out = refusal.result, refusal.out
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in refusal.expected:
        assert text in lines[0], (text, lines[0])
    assert res.stdout == ""
    assert not (out / "bundle.json").exists()
    if case is not output_dir_is_a_file:
        assert not out.exists()  # refused before anything was written


def test_shared_student_between_valid_and_test_files_is_refused(
    sim_dir: Path, config_file: Path, tmp_path: Path
) -> None:
    train, test = rows(sim_dir), rows(sim_dir, "test.csv")
    users = sorted(train["userID"].unique())
    t = write(train[train["userID"].isin(users[:-5])], tmp_path / "t.csv")
    shared = sorted(test["userID"].unique())[:2]
    v = write(
        pd.concat([train[train["userID"].isin(users[-5:])], test[test["userID"].isin(shared)]]), tmp_path / "v.csv"
    )
    res = train_cli(
        "--config", config_file, "--train-file", t, "--valid-file", v, "--test-file", sim_dir / "test.csv",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"error: {sim_dir / 'test.csv'}: user '{shared[0]}' is in both --valid-file and --test-file "
        "(and 1 more); the sets must not share students"
    )


def few_users(sim_dir: Path, tmp: Path, n: int) -> Path:
    """The first ``n`` training users: enough to train on, small enough to keep the test quick."""
    df = rows(sim_dir)
    return write(df[df["userID"].isin(sorted(df["userID"].unique())[:n])], tmp / f"train{n}.csv")


@pytest.mark.slow  # real trainings through the CLI
def test_training_that_diverges_writes_no_bundle(sim_dir: Path, tmp_path: Path) -> None:
    # A learning rate this large turns the weights into inf / NaN within the first steps: no epoch gives a
    # finite validation figure, so there is no model to keep.
    cfg = tmp_path / "diverge.json"
    cfg.write_text(json.dumps({**TINY, "train": {**TINY["train"], "lr": 1e30, "warmup_ratio": 0}}))
    out = tmp_path / "out"
    res = train_cli(
        "--config", cfg, "--train-file", few_users(sim_dir, tmp_path, 20), "--test-file", sim_dir / "test.csv",
        "--output-dir", out,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (out / "bundle.json").exists()
    with pytest.raises(BundleError, match=r"bundle\.json missing"):
        verify_bundle(out)


@pytest.mark.slow  # real trainings through the CLI
def test_undefined_auc_is_null_with_a_reason_in_every_json_and_selection_falls_back_to_loss(
    sim_dir: Path, config_file: Path, tmp_path: Path
) -> None:
    train = rows(sim_dir)
    users = sorted(train["userID"].unique())
    t = write(train[train["userID"].isin(users[:30])], tmp_path / "t.csv")
    v = write(train[train["userID"].isin(users[-6:])].assign(answerCode="1"), tmp_path / "v.csv")
    test = write(rows(sim_dir, "test.csv").assign(answerCode="0"), tmp_path / "test.csv")
    out = tmp_path / "out"
    res = train_cli(
        "--config", config_file, "--train-file", t, "--valid-file", v, "--test-file", test, "--output-dir", out,
        "--epochs", "2", "--seed", "5",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "selecting epochs by valid loss" in res.stderr
    summary = strict_json(res.stdout.strip().splitlines()[-1])
    assert summary["test_auc"] is None and summary["test_auc_reason"] == "only one class in test labels (all wrong)"
    metrics = strict_json((out / "metrics.json").read_text())
    meta = strict_json((out / "bundle.json").read_text())
    history = strict_json((out / "history.json").read_text())
    for doc in (metrics, meta["metrics"]):
        assert doc["test_auc"] is None and doc["test_auc_last"] is None
        assert "only one class" in doc["test_auc_reason"] and "only one class" in doc["test_auc_last_reason"]
        assert doc["valid_auc"] is None and "only one class in validation labels" in doc["valid_auc_reason"]
        assert doc["selected_by"] == "valid_loss"
        assert 0 <= doc["test_acc"] <= 1  # accuracy is defined with one class
    assert [h["valid_auc"] for h in history] == [None, None]
    losses = [h["valid_loss"] for h in history]
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))  # the kept epoch is the lowest-loss one
    # The bundle loads and scores (train.py checked it before writing bundle.json).
    assert verify_bundle(out)["smoke_rows"] > 0


def is_commit_of_this_checkout(sha: str) -> bool:
    """``sha`` is HEAD or an ancestor of it (others may commit while the test runs)."""
    res = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=ROOT, capture_output=True)
    return res.returncode == 0


@pytest.mark.slow
def test_same_data_version_and_seed_reproduce_the_model(sim_dir: Path, tmp_path: Path) -> None:
    """Two fresh train.py processes with the same data and seed write the same weights, bit for bit; another
    seed writes other weights. The second same-seed run and the other-seed run share one child process (the
    other seed's run follows it there: tests/support/scripts.py), which runs beside the first."""
    cfg = tmp_path / "lstm.json"
    cfg.write_text(json.dumps(TINY))
    train = few_users(sim_dir, tmp_path, 20)

    def argv(name: str, seed: str) -> list[str]:
        return ["--device", "cpu", "--no-progress", "--config", str(cfg), "--train-file", str(train),
                "--test-file", str(sim_dir / "test.csv"), "--output-dir", str(tmp_path / name), "--seed", seed,
                "--data-version", "sim-11"]  # fmt: skip

    batch = ScriptBatch.start([Job("train.py", argv("b", "7")), Job("train.py", argv("other-seed", "13"))],
                              os.environ, tmp_path / "batch")  # fmt: skip
    first = subprocess.run([sys.executable, "train.py", *argv("a", "7")], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    results = [first, *batch.wait()]
    for res in results:
        assert res.returncode == 0, res.stderr[-3000:]
    runs = [strict_json(res.stdout.strip().splitlines()[-1]) for res in results]
    a, b, other = (read_meta(tmp_path / n) for n in ("a", "b", "other-seed"))
    print(f"reproducibility: test_auc {runs[0]['test_auc']:.6f} / {runs[1]['test_auc']:.6f} (seed 7), "
          f"{runs[2]['test_auc']:.6f} (seed 13)")  # fmt: skip
    weights = {n: (tmp_path / n / "weights.pt").read_bytes() for n in ("a", "b", "other-seed")}
    assert weights["a"] == weights["b"]  # the same model, bit for bit
    assert runs[0] == {**runs[1], "train_seconds": runs[0]["train_seconds"]}  # and the same figures
    # What the model was made from is the same (the commit too, unless someone committed between the runs).
    same = ("data_version", "config_hash", "seed")
    assert {k: a[k] for k in same} == {k: b[k] for k in same} and set(LINEAGE_KEYS) <= set(a)
    assert a["data_version"] == "sim-11" and a["seed"] == 7 and other["seed"] == 13
    assert a["config_hash"] == other["config_hash"] and a["config_hash"].startswith("sha256:")
    # Run from a checkout: the exact commit is recorded, and whether tracked files differed from it.
    assert len(a["code_commit"]) == 40 and is_commit_of_this_checkout(a["code_commit"])
    assert isinstance(a["code_dirty"], bool) and a["code_version"].startswith(f"0.1.0+{a['code_commit'][:12]}")
    # The seed is what makes it repeatable: another seed gives another model.
    assert weights["other-seed"] != weights["a"] and runs[2]["test_auc"] != runs[0]["test_auc"]
