"""bench/kt_benchmark.py on a pair of 3-line KT files of its own: one table, RMSE included, every row's figures
those of the bundle it trained; a bad pair is one error line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import kt_benchmark
from dkt.data.io import read_kt3
from dkt.predictor import load_predictor


def test_a_pair_of_kt3_files_gives_one_table_with_rmse(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = pair
    argv = ["--pair", f"tiny={train},{test}", "--models", "lgbm,lstm", "--epochs", "1", "--threads", "1",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "rows.json")]  # fmt: skip
    assert kt_benchmark.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split("|")[1:-1] == [
        " data ", " model ", " AUC ", " AUC last ", " acc ", " RMSE ", " params ", " s/epoch ", " epochs (best) ",
        " wall s ", " AUC/oracle ", " gap ",
    ]  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["data"], r["model"]) for r in rows] == [("tiny", "lgbm"), ("tiny", "lstm")]  # only the pair ran
    test_df = read_kt3(test)
    y = test_df["answerCode"].to_numpy()
    for r in rows:
        bundle = tmp_path / "work" / "tiny" / r["model"]
        p = load_predictor(bundle).predict_rows(test_df)
        assert r["test_rmse"] == pytest.approx(float(np.sqrt(np.mean((p - y) ** 2))), abs=1e-9)
        assert r["test_rmse"] == json.loads((bundle / "metrics.json").read_text())["test_rmse"]
        cells = next(ln for ln in lines if ln.startswith(f"| tiny | {r['model']} |")).split("|")
        assert float(cells[6]) == pytest.approx(r["test_rmse"], abs=5e-5)
    assert "published" not in out  # the published figures are ASSISTments 2009's, not this pair's


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("tiny={train}", "expected NAME=TRAIN,TEST"),
        ("tiny=,{train}", "expected NAME=TRAIN,TEST"),
        ("tiny={train},{missing}", "missing.csv: no such file"),
        ("assist2009={train},{train}", "the name 'assist2009' is taken"),
    ],
)
def test_a_bad_pair_is_one_line_and_exit_2(
    pair: tuple[Path, Path], tmp_path: Path, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    arg = value.format(train=pair[0], missing=tmp_path / "missing.csv")
    with pytest.raises(SystemExit) as exit_:
        kt_benchmark.main(["--pair", arg, "--work", str(tmp_path / "work")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()
