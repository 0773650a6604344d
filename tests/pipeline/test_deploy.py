"""The deploy step's command line: bad replica counts and modes are refused before anything is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import deploy
from pipeline.workdir import work_dir


@pytest.fixture
def packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
    work = work_dir(deploy.FLOW, "r1")
    work.mkdir(parents=True)
    (work / "pack.json").write_text(json.dumps({"model_tag": "dkt-model:v9", "model_version": "v9"}))
    return work


@pytest.mark.parametrize("mode", ["local", "swarm"])
def test_zero_replicas_is_refused_in_either_mode(
    packed: Path, mode: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_DEPLOY_MODE", mode)
    assert deploy.main(["deploy", "--run-id", "r1", "--replicas", "0"]) == deploy.EXIT_USAGE
    assert "replicas must be at least 1, got 0" in capsys.readouterr().err
    assert not (packed / "deploy.json").exists()


def test_unknown_deploy_mode_names_the_variable(
    packed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_DEPLOY_MODE", "kubernetes")
    assert deploy.main(["deploy", "--run-id", "r1"]) == deploy.EXIT_USAGE
    err = capsys.readouterr().err
    assert "DKT_DEPLOY_MODE" in err and "'kubernetes'" in err
