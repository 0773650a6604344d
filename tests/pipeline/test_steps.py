"""``dkt steps`` (pipeline/steps.py): a DAG task's steps in one process, each with its own error line and exit code.

The DAG tasks' commands are checked in tests/dags/test_dags.py; the chains run for real in tests/dags/test_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import steps


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    return tmp_path / "work"


def test_the_first_failing_step_ends_the_run_with_its_code(store_env: Path, capsys: pytest.CaptureFixture) -> None:
    # promote-if-better without an evaluation fails with its own line, and pull-data after it never runs
    code = steps.main(["--run-id", "run 1", "models promote-if-better", "models pull-data"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0].startswith("error: no ") and "evaluation.json" in err[0]
    assert err[1:] == ["steps: models promote-if-better exited 2; the steps after it do not run"]
    work = store_env / "retrain_and_push" / "run_1"
    doc = json.loads((work / "timings.json").read_text())
    assert list(doc) == ["task models promote-if-better, models pull-data"]
    assert set(doc["task models promote-if-better, models pull-data"]) == {"total", "models promote-if-better"}
    assert not (work / "data").exists()  # what pull-data would have pulled


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--run-id", "r", "data nope"], "step 'data nope' is not a DAG step"),
        (["--run-id", "r", "models list"], "step 'models list' is not a DAG step"),
        (["--run-id", "r", "data export --run-id x"], "--run-id is given once"),
        (["--run-id", "r", "data 'export"], 'step "data \'export": No closing quotation'),
        (["data export"], "the following arguments are required: --run-id"),
    ],
)
def test_bad_steps_are_refused_before_any_runs(
    argv: list[str], said: str, store_env: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        steps.main(argv)
    [line] = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and line.startswith("error: dkt steps: ") and said in line
    assert not store_env.exists()


def test_a_step_s_own_bad_option_is_its_exit_code(store_env: Path, capsys: pytest.CaptureFixture) -> None:
    assert steps.main(["--run-id", "r", "deploy deploy --replicas many", "deploy verify"]) == 2
    err = capsys.readouterr().err
    assert "error: dkt deploy: argument --replicas: invalid int value: 'many'" in err
    assert "steps: deploy deploy exited 2" in err
