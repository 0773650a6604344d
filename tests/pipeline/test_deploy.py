"""The deploy steps: bad replica counts and modes are refused before anything is touched, and the production
pointer follows what is really served (a failed deploy puts it back)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline import deploy, deploy_served
from pipeline.store import VersionedStore
from pipeline.workdir import work_dir
from tests.serving.fixtures import Packed
from tests.serving.servers import Server
from tests.support.ports import free_port_pair


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
                 "BENTOML_HOME": str(tmp_path / "bentoml"), "DKT_SERVE_PORT": str(free_port_pair()),
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


# -- the swap: a new model into the running server ---------------------------------------------------
def perturbed(bundle: Path, out: Path, version: str, broken: bool = False) -> Path:
    """A copy of ``bundle`` as ``version``: its weights moved by noise (it predicts otherwise), or not a torch file."""
    import torch

    shutil.copytree(bundle, out)
    meta = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps({**meta, "model_version": version}))
    if broken:
        (out / "weights.pt").write_bytes(b"not a torch file")
        return out
    state = torch.load(out / "weights.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.3 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(noisy, out / "weights.pt")
    return out


def metadata(url: str) -> dict[str, Any]:
    """/metadata, or {} while the server does not answer (a loaded machine: polled until a deadline)."""
    try:
        r = requests.get(url + "/metadata", timeout=30)
        return r.json() if r.ok else {}
    except (requests.RequestException, ValueError):
        return {}


def until(what: str, check: Callable[[], bool], deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, f"not within {deadline_s:.0f} s: {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_swap_serves_a_new_bundle_refuses_a_broken_one_and_fails_no_request(
    packed: Packed, service: Server, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The session's `bentoml serve` follows a served-model file. The deploy steps (swap strategy) swap a new version
    in while four threads keep asking /predict: no request fails, each answer is the in-process prediction of the
    version it names, /metadata and the state cache follow. A bundle that does not load is refused: the deploy fails,
    the old model keeps serving, the failure is in /metadata and /metrics, production goes back on what is served."""
    from tests.serving.test_service import items, local, student

    served = Path(metadata(service.url)["swap"]["file"])
    run = served.parent  # the deploy's DKT_RUN_DIR: its served_model.json is the one the server follows
    store = local_store(tmp_path, monkeypatch)
    v2 = perturbed(packed.bundle, tmp_path / "v2", "test-swap-v2")
    broken = perturbed(packed.bundle, tmp_path / "broken", "test-swap-broken", broken=True)
    store.push("models", packed.bundle, "test-v1", move_pointers=("latest", "production"))
    for bundle, version in ((v2, "test-swap-v2"), (broken, "test-swap-broken")):
        store.push("models", bundle, version)
    for k, v in {"DKT_RUN_DIR": str(run), "DKT_WORK_ROOT": str(tmp_path / "work"), "DKT_DEPLOY_MODE": "local",
                 "DKT_DEPLOY_STRATEGY": "swap", "DKT_INFERENCE_URL_FILE": str(run / "inference_url"),
                 "DKT_VERIFY_TIMEOUT": "180"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    (run / "inference_url").write_text(service.url + "\n")
    # What `dkt deploy` records when it starts a server that follows the file (pipeline/deploy_local.start_server).
    (run / "serving.json").write_text(json.dumps({"pid": service.proc.pid, "url": service.url, "port": 0,
        "model_tag": packed.model_tag, "model_version": "test-v1", "served_model_file": str(served)}))  # fmt: skip

    history, cands, at = student(sim_dir, 30), items(sim_dir, 10), "2031-01-01 00:00:00"
    expected = {v: local(b, history, cands, pd.Timestamp(at)) for v, b in (("test-v1", packed.bundle),
                                                                            ("test-swap-v2", v2))}  # fmt: skip
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def ask(n: int) -> None:
        while not stop.is_set():
            body = {"history": history, "candidates": cands, "at": at, "student_id": f"swap-{n}"}
            try:
                r = requests.post(service.url + "/predict", json=body, timeout=120)
                answers.append((r.status_code, r.json() if r.ok else r.text))
            except requests.RequestException as exc:  # a failed request: what the swap must never cause
                answers.append((0, str(exc)))

    def deploy_steps(run_id: str) -> list[int]:
        rcs = []
        for step in ("pull-model", "pack", "deploy", "verify"):
            rcs.append(deploy.main([step, "--run-id", run_id]))
            if rcs[-1]:
                break
        return rcs

    t0 = time.monotonic()
    try:
        store.set_pointer("models", "production", "test-swap-v2", reason="promote")
        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(ask, n)
            until("answers before the swap", lambda: len(answers) >= 4)
            rcs = deploy_steps("swap")
            until("answers after the swap", lambda: sum(a[1]["model_version"] == "test-swap-v2" for a in answers
                                                         if a[0] == 200) >= 4)  # fmt: skip
            stop.set()
        err = capsys.readouterr().err
        swapped = time.monotonic() - t0
        assert rcs == [0, 0, 0, 0], err[-3000:]
        assert "packer.py skipped" in err and not (run / "bentoml-home").exists()  # no Bento, no new server
        failed = [a for a in answers if a[0] != 200]
        assert not failed, failed[:3]
        assert {a[1]["model_version"] for a in answers} == {"test-v1", "test-swap-v2"}
        for _, body in answers:  # every answer is its named version's own prediction
            got = [p["probability"] for p in body["predictions"]]
            np.testing.assert_allclose(got, expected[body["model_version"]], atol=1e-5)
        assert np.abs(expected["test-v1"] - expected["test-swap-v2"]).max() > 1e-3  # the two really differ
        meta = metadata(service.url)
        assert (meta["model_version"], meta["state_cache"]["model_version"]) == ("test-swap-v2", "test-swap-v2")
        assert meta["model_tag"] == f"bundle:{run / 'bundles' / 'test-swap-v2'}" and meta["swap"]["failed"] is None
        assert meta["config"] == json.loads((v2 / "config.json").read_text())
        assert store.get_state(deploy_served.SERVING_STATE)["model_version"] == "test-swap-v2"

        # A bundle that does not load: refused at once (no wait for the deadline), the old model keeps serving.
        store.set_pointer("models", "production", "test-swap-broken", reason="promoted before loadability checks")
        rcs = deploy_steps("broken")
        err = capsys.readouterr().err
        assert rcs == [0, 0, deploy.EXIT_USAGE], err[-3000:]
        assert "refused the swap to test-swap-broken" in err and "production pointer back on test-swap-v2" in err
        meta = metadata(service.url)
        assert meta["model_version"] == "test-swap-v2" and meta["swap"]["failed"]["model_version"] == "test-swap-broken"
        assert json.loads(served.read_text())["model_version"] == "test-swap-v2"  # the file back on the old bundle
        assert store.pointed("models", "production") == "test-swap-v2"
        metrics = requests.get(service.url + "/metrics", timeout=30).text
        assert re.search(r"^dkt_model_swap_failures_total(\{[^}]*\})? 1\.0$", metrics, re.M), metrics[-2000:]
        body = {"history": history, "candidates": cands, "at": at}
        got = [p["probability"] for p in requests.post(service.url + "/predict", json=body, timeout=60).json()[
            "predictions"]]  # fmt: skip
        np.testing.assert_allclose(got, expected["test-swap-v2"], atol=1e-5)
        print(f"\n[swap] {len(answers)} answers, 0 failed; swapped in {swapped:.1f} s (steps and polling)")
    finally:
        stop.set()
        served.unlink(missing_ok=True)  # the session's server goes back on the packed model (serving/swap.py)
        until("the packed model served again", lambda: metadata(service.url).get("model_tag") == packed.model_tag)


@pytest.mark.slow
def test_a_server_that_cannot_bind_its_port_fails_the_deploy_with_the_reason(
    packed: Packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `bentoml serve` on a port something else holds exits at once: the deploy's error carries the log's
    last line (the bind error), not only the log's path (stop 21's CI showed only "failed with 2")."""
    from pipeline import deploy_local

    monkeypatch.setenv("BENTOML_HOME", str(packed.home))
    monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
    port = free_port_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        server = deploy_local.start_server(packed.model_tag, port)
        try:
            with pytest.raises(deploy_local.DeployError) as err:
                deploy_local.wait_ready(server, timeout=120)
        finally:
            deploy_local.stop_server(server["pid"], grace=5)
    assert f"bentoml serve on port {port} exited (" in str(err.value)
    assert "Address already in use" in str(err.value) and server["log"] in str(err.value)
