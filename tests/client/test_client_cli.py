"""`dkt client` (Flask's command line over the app) and `dkt file-export`, run as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dkt.data.io import read_csv

DKT = Path(sys.executable).with_name("dkt")


def dkt(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DKT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def client_env(tmp_path: Path, sim_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DKT_CLIENT_DB": str(tmp_path / "client.db"),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_SECRET_KEY": "cli-test-secret",
    }


def test_client_commands_list_and_export(tmp_path: Path, sim_dir: Path) -> None:
    env = client_env(tmp_path, sim_dir)
    helped = dkt(["client", "--help"], env, tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "export-interactions" in helped.stdout and "run" in helped.stdout
    out = tmp_path / "export.csv"
    done = dkt(["client", "export-interactions", "--since", "0", "--out", str(out)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "watermark: 0"  # an empty database: nothing after the watermark
    assert pd.read_csv(out).empty and "answerCode" in pd.read_csv(out).columns  # a header, no rows


def test_client_bad_input_is_one_line(tmp_path: Path, sim_dir: Path) -> None:
    env = client_env(tmp_path, sim_dir)
    bad = dkt(["client", "export-interactions", "--since", "-1", "--out", str(tmp_path / "x.csv")], env, tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: dkt client:") and "Traceback" not in bad.stderr
    missing = dkt(["client", "routes"], {**env, "DKT_QUESTIONS": str(tmp_path / "nope.csv")}, tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == f"error: dkt client: {tmp_path / 'nope.csv'}: item bank not found"


def test_file_export_keeps_rows_after_the_watermark(tmp_path: Path, sim_dir: Path) -> None:
    rows = read_csv(sim_dir / "train.csv").head(4)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows.to_csv(inbox / "drop.csv", index=False)
    since = str(pd.to_datetime(rows["Timestamp"]).sort_values().iloc[1])
    out = tmp_path / "out.csv"
    done = dkt(["file-export", "--source", str(inbox), "--since", since, "--out", str(out)], dict(os.environ), tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(read_csv(out)) == 2  # strictly after the second-earliest of four distinct times
    assert done.stdout.strip().startswith("watermark: ")
    bad = dkt(["file-export", "--source", str(inbox)], dict(os.environ), tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--out" in bad.stderr
