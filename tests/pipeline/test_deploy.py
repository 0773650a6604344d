"""The deploy steps: bad replica counts and modes are refused before anything is touched, and the production
pointer follows what is really served (a failed deploy puts it back)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline import deploy, deploy_served
from pipeline.store import VersionedStore
from pipeline.workdir import work_dir
from tests.serving.fixtures import Packed
from tests.serving.servers import Server, free_port


@pytest.fixture
def packed_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
    work = work_dir(deploy.FLOW, "r1")
    work.mkdir(parents=True)
    (work / "pack.json").write_text(json.dumps({"model_tag": "dkt-model:v9", "model_version": "v9"}))
    return work


@pytest.mark.parametrize("mode", ["local", "swarm"])
def test_zero_replicas_is_refused_in_either_mode(
    packed_work: Path, mode: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_DEPLOY_MODE", mode)
    assert deploy.main(["deploy", "--run-id", "r1", "--replicas", "0"]) == deploy.EXIT_USAGE
    assert "replicas must be at least 1, got 0" in capsys.readouterr().err
    assert not (packed_work / "deploy.json").exists()


def test_unknown_deploy_mode_names_the_variable(
    packed_work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DKT_DEPLOY_MODE", "kubernetes")
    assert deploy.main(["deploy", "--run-id", "r1"]) == deploy.EXIT_USAGE
    err = capsys.readouterr().err
    assert "DKT_DEPLOY_MODE" in err and "'kubernetes'" in err


# -- the production pointer follows what is served ---------------------------------------------------
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VersionedStore:
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "store"))
    return VersionedStore.from_env()


def tiny_version(store: VersionedStore, tmp_path: Path, version: str) -> None:
    d = tmp_path / f"b-{version}"
    d.mkdir()
    (d / "weights.bin").write_bytes(version.encode())
    store.push("models", d, version)


def test_a_verified_retry_moves_production_back_to_the_version_a_failed_try_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store(tmp_path, monkeypatch)
    for v in ("v1", "v2"):
        tiny_version(store, tmp_path, v)
    store.set_pointer("models", "production", "v2", reason="promote")
    store.set_pointer("models", "production", "v1", reason="deploy of v2 failed: not ready", only_if="v2")
    assert deploy_served.production_on_verified(store, "v2", "http://127.0.0.1:9/metadata") == "v2"
    assert store.pointed("models", "production") == "v2"
    assert store.get_state(deploy_served.SERVING_STATE)["model_version"] == "v2"
    # A pointer someone else moved is not touched by a late verify of another version.
    tiny_version(store, tmp_path, "v3")
    store.set_pointer("models", "production", "v3", reason="manual promote")
    assert deploy_served.production_on_verified(store, "v2", "http://127.0.0.1:9/metadata") == "v3"
    assert store.pointed("models", "production") == "v3"


@pytest.mark.slow
def test_failed_deploy_puts_production_back_on_the_served_model(
    packed: Packed, service: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A real `bentoml serve` serves test-v1; a model that cannot be served is promoted; its deploy fails.
    The store then names test-v1 again, and `models list` marks it serving."""
    store = local_store(tmp_path, monkeypatch)
    store.push("models", packed.bundle, "test-v1", move_pointers=("latest", "production"))
    broken = tmp_path / "broken"
    shutil.copytree(packed.bundle, broken)
    meta = json.loads((broken / "bundle.json").read_text())
    (broken / "bundle.json").write_text(json.dumps({**meta, "model_version": "broken-v2"}))
    for w in broken.glob("*.pt"):
        w.write_bytes(b"not a torch file")
    store.push("models", broken, "broken-v2")
    store.set_pointer("models", "production", "broken-v2", reason="promoted before loadability checks")

    run = tmp_path / "run"
    run.mkdir()
    (run / "inference_url").write_text(service.url + "\n")  # what the client uses: the served test-v1
    for k, v in {"DKT_RUN_DIR": str(run), "DKT_WORK_ROOT": str(tmp_path / "work"), "DKT_DEPLOY_MODE": "local",
                 "BENTOML_HOME": str(tmp_path / "bentoml"), "DKT_SERVE_PORT": str(free_port()),
                 "DKT_READY_TIMEOUT": "120"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    rcs = []
    for step in ("pull-model", "pack", "deploy"):
        rcs.append(deploy.main([step, "--run-id", "r1"]))
        if rcs[-1]:
            break
    err = capsys.readouterr().err
    print(f"\n[deploy] steps {rcs} in {time.monotonic() - t0:.0f} s; {err.strip().splitlines()[-1]}")
    assert rcs[0] == 0 and rcs[-1] == deploy.EXIT_USAGE, err[-3000:]
    assert "production pointer back on test-v1" in err
    ptr = store.pointer("models", "production")
    assert ptr["version"] == "test-v1" and ptr["log"][-1]["reason"].startswith("deploy of broken-v2 failed")
    assert store.get_state(deploy_served.SERVING_STATE)["metadata_url"] == service.url + "/metadata"
    assert (run / "inference_url").read_text().strip() == service.url  # the client was never switched

    from models.cli import main as models_cli

    capsys.readouterr()
    assert models_cli(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("test-v1 ") and lines[0].endswith("<- production, serving"), lines
    assert lines[1].startswith("broken-v2 ") and lines[1].endswith("<- latest"), lines


# The local blue/green switch itself (the four steps twice, the client's URL file following, each server's own
# metric files, the old server stopped, `stop` ending the last) is checked on the two deploys of
# tests/pipeline/test_shadow_e2e.py: a test of its own here ran the same steps on two more `bentoml serve`.
