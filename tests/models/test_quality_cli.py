"""`dkt models quality` on a client store filled through the client's db functions (in-process: the entry point
`dkt models` is the same main() the other model commands go through)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from models.cli import main
from tests.client.test_metrics import fill, logged


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality") / "client.db"
    fill(path, ["v1"] * 50 + ["v2"] * 30, seed=4)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_table_and_json(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKT_CLIENT_DB", str(store))  # the settings' store when --db is not given
    code, out, _ = run(capsys, "quality", "--n-boot", "30")
    assert code == 0
    head, *lines = out.splitlines()
    assert head.split() == ["model_version", "n", "auc", "logloss", "accuracy", "ece"]
    y, p = logged(store)["v1"]
    assert lines[0].split()[:3] == ["v1", "50", f"{roc_auc_score(y, p):.4f}"]
    assert lines[0].count("[") == 4 and lines[1].split()[:2] == ["v2", "30"]  # an interval per metric

    code, out, _ = run(capsys, "quality", "--db", str(store), "--json", "--model-version", "v2", "--by", "tag")
    rows = json.loads(out)
    assert code == 0 and [(r["model_version"], r["KnowledgeTag"]) for r in rows] == [("v2", 7), ("v2", 8), ("v2", 9)]
    assert sum(r["n"] for r in rows) == 30 and len(rows[0]["reliability"]) == 10 and set(rows[0]["ci"]) >= {"auc"}
    code, out, _ = run(capsys, "quality", "--db", str(store), "--by", "day", "--n-boot", "0")
    assert code == 0 and len(out.splitlines()) == 3 and "[" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-version", "v9"], "no scored predictions of model version 'v9' (logged: v1, v2)"),
        (["--by", "week"], "argument --by: invalid choice: 'week'"),
        (["--n-boot", "-1"], "--n-boot must be >= 0"),
        (["--db", "{tmp}/missing.db"], "missing.db: no such client database"),
        (["--db", "{tmp}/text.db"], "text.db: cannot read the prediction log: file is not a database"),
        (["--db", "{tmp}/v2.db"], "v2.db: cannot read the prediction log: no such table: predictions"),
    ],
)
def test_bad_input_is_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "text.db").write_text("not sqlite")
    with sqlite3.connect(tmp_path / "v2.db") as old:  # a store from before the prediction log
        old.execute("CREATE TABLE interactions (id INTEGER PRIMARY KEY)")
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, "quality", *(["--db", str(store)] if "--db" not in argv else []), *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: dkt models quality: ") and message in err
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created
