"""bench/position_auc.py on a pair of 3-line files of its own: each bucket's AUC is that of the bundle's served
predictions on the answers at those positions, the last row the bundle's own test AUC; --window changes the windows;
bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import kt_benchmark, position_auc
from dkt.data.io import read_kt3
from dkt.metrics import auc
from dkt.predictor import load_predictor


@pytest.fixture(scope="module")
def bundle(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, test = pair
    work = tmp_path_factory.mktemp("work")
    # Windows of 20 and batches of 160 positions (8 windows): the config's 2,048 would make a few steps an epoch.
    argv = ["--pair", f"tiny={train},{test}", "--models", "lstm", "--epochs", "3", "--threads", "1",
            "--work", str(work), "--set", "train.max_seq_len=20", "--set", "train.window_stride=20",
            "--set", "train.batch_tokens=160"]  # fmt: skip
    assert kt_benchmark.main(argv) == 0
    return work / "tiny" / "lstm"


def table_of(
    pair: tuple[Path, Path], bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> dict[str, list[str]]:
    """bench/position_auc.py's table of ``bundle`` on ``pair`` (one thread), by bucket: [answers, AUC]."""
    argv = [f"m={bundle}", "--train", str(pair[0]), "--test", str(pair[1]), "--threads", "1", *extra]
    assert position_auc.main(argv) == 0
    lines = [
        ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and not ln.startswith("| position")
    ]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines)}


def test_each_bucket_is_the_auc_of_its_positions(
    pair: tuple[Path, Path],
    bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = table_of(pair, bundle, capsys)
    assert list(rows) == ["0", "1-4", "5-19", "20-49", "50-99", "100-199", "200-399", "400 and after", "all"]
    df = read_kt3(pair[1])
    p = load_predictor(bundle).predict_rows(df)
    y = df["answerCode"].to_numpy()
    pos = df.groupby("userID").cumcount().to_numpy()  # read_kt3 writes each student's answers in time order
    for name, lo, hi in (("5-19", 5, 20), ("20-49", 20, 50), ("all", 0, 10**9)):
        pick = (pos >= lo) & (pos < hi)
        assert rows[name][0] == f"{int(pick.sum()):,}"
        assert float(rows[name][1]) == pytest.approx(auc(y[pick], p[pick]), abs=5e-5)
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert float(rows["all"][1]) == pytest.approx(metrics["test_auc"], abs=5e-5)
    assert int(rows["0"][0].replace(",", "")) == df["userID"].nunique()


def test_window_scores_with_other_windows(
    pair: tuple[Path, Path],
    bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    own = table_of(pair, bundle, capsys)
    assert table_of(pair, bundle, capsys, "--window", "20") == own  # the bundle's own windows: the same table
    short = table_of(pair, bundle, capsys, "--window", "2")  # one answer of history at most
    assert short["0"] == own["0"]  # a first answer has no history in either
    assert short["all"] != own["all"] and short["20-49"] != own["20-49"]


def test_bad_input_is_one_line_and_exit_2(
    pair: tuple[Path, Path],
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train, _ = pair
    missing = tmp_path / "missing.csv"
    assert position_auc.main([f"m={bundle}", "--train", str(train), "--test", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file"
    for argv, said in (([f"m={tmp_path}"], "not a model bundle"), ([f"m={bundle}", "--window", "1"], "at least 2")):
        with pytest.raises(SystemExit) as exit_:
            position_auc.main(argv)
        assert exit_.value.code == 2
        assert said in capsys.readouterr().err
