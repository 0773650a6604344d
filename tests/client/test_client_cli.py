"""`dkt client` (Flask's command line over the app) and `dkt file-export`, as an operator runs them.

In the test's process (tests/support/cli.py: a `dkt client` process pays Flask's and pandas' imports, about 1.5 CPU-s,
six of them here): what these commands do and print is the point. Both commands' process contract (exit 2, one
``error:`` line, the installed script run from outside the checkout) is tests/test_cli.py's bad-input test, which
runs `dkt client routes` without an item bank and `dkt file-export` without --out as real processes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dkt.data.io import read_csv
from tests.support.cli import in_process, product_env


@pytest.fixture
def client_env(tmp_path: Path, sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    product_env(
        monkeypatch,
        DKT_CLIENT_DB=tmp_path / "client.db",
        DKT_QUESTIONS=sim_dir / "questions.csv",
        DKT_SECRET_KEY="cli-test-secret",
    )
    monkeypatch.chdir(tmp_path)


def test_client_commands_list_and_export(tmp_path: Path, client_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(["client", "--help"], capsys)
    assert code == 0, err
    assert "export-interactions" in out and "run" in out
    export = tmp_path / "export.csv"
    code, out, err = in_process(["client", "export-interactions", "--since", "0", "--out", export], capsys)
    assert code == 0, err
    assert out.strip() == "watermark: 0"  # an empty database: nothing after the watermark
    assert pd.read_csv(export).empty and "answerCode" in pd.read_csv(export).columns  # a header, no rows


def test_client_bad_input_is_one_line(
    tmp_path: Path, client_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = in_process(["client", "export-interactions", "--since", "-1", "--out", tmp_path / "x.csv"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: dkt client:") and "Traceback" not in err
    monkeypatch.setenv("DKT_QUESTIONS", str(tmp_path / "nope.csv"))
    code, _, err = in_process(["client", "routes"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: dkt client: {tmp_path / 'nope.csv'}: item bank not found"


def test_file_export_keeps_rows_after_the_watermark(
    tmp_path: Path, sim_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    product_env(monkeypatch)
    rows = read_csv(sim_dir / "train.csv").head(4)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows.to_csv(inbox / "drop.csv", index=False)
    since = str(pd.to_datetime(rows["Timestamp"]).sort_values().iloc[1])
    out = tmp_path / "out.csv"
    code, stdout, err = in_process(["file-export", "--source", inbox, "--since", since, "--out", out], capsys)
    assert code == 0, err
    assert len(read_csv(out)) == 2  # strictly after the second-earliest of four distinct times
    assert stdout.strip().startswith("watermark: ")
    code, _, err = in_process(["file-export", "--source", inbox], capsys)
    assert code == 2 and err.count("\n") == 1 and "--out" in err
