"""Stop paths kill only what they started: `dkt stack down` (pipeline/stack.py) and the init scripts' --stop /
--stop-worker check /proc/<pid>/cmdline before killing. A pid file left behind whose pid now belongs to an
unrelated process (a real one here) leaves that process alone, with a warning; the real service is stopped."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import stack
from pipeline.blobs import pid_alive
from tests.serving.servers import ROOT


def spawn(argv0: str, *args: str) -> subprocess.Popen[bytes]:
    """A real process in its own session (as the stop paths' targets are) whose command line is argv0, then
    ``300`` (``sleep 300``) or ``-c <a sleep> args`` (a Python sleeping 300 s). Reaped the moment it dies, as
    init reaps a service: a zombie would still answer ``kill -0``."""
    if args:
        argv = [sys.executable, "-c", "import time; time.sleep(300)", *args]
        cmd = f'exec -a "{argv0}" ' + " ".join(f"'{a}'" for a in argv)
    else:
        cmd = f'exec -a "{argv0}" sleep 300'
    p = subprocess.Popen(["bash", "-c", cmd], start_new_session=True)
    threading.Thread(target=p.wait, daemon=True).start()
    return p


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def gone(p: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def settled(p: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Wait until bash has exec-ed into the retitled process: its argv[0] is the title ``spawn`` gave it. (Not
    "until `bash` is gone": mid-exec /proc/<pid>/cmdline reads empty, which once let a test kill bash itself.)"""
    title = p.args[2].split('"')[1].encode()  # type: ignore[index]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[0] != title:
        time.sleep(0.02)
    return p


def test_stack_down_leaves_an_unrelated_process_alone_and_stops_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], procs: list
) -> None:
    monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
    unrelated = settled(spawn("sleep"))
    ours = settled(spawn(str(Path(sys.executable).with_name("gunicorn")), "-w", "2", "client:create_app()"))
    procs += [unrelated, ours]
    stack.pid_file("client").parent.mkdir(parents=True)
    stack.pid_file("client").write_text(str(unrelated.pid))  # stale: the pid now runs something else
    stack.pid_file("airflow-scheduler").write_text(str(ours.pid))  # alive, but not a scheduler either
    stack.down()
    err = capsys.readouterr().err
    assert f"names pid {unrelated.pid}, which runs `sleep 300`, not client: left alone" in err
    assert f"names pid {ours.pid}" in err and "not airflow-scheduler: left alone" in err
    assert pid_alive(unrelated.pid) and pid_alive(ours.pid)
    assert not stack.pid_file("client").exists()  # the stale pid file is forgotten
    stack.pid_file("client").write_text(str(ours.pid))  # now the pid file names what `up` started
    assert stack.running("client") == ours.pid
    stack.stop_part("client")
    assert gone(ours) and pid_alive(unrelated.pid)


def script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / name), *args], env=env, capture_output=True, text=True, timeout=120)


def test_init_scripts_stop_only_the_processes_they_started(tmp_path: Path, procs: list) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "docker").write_text("#!/bin/sh\nexit 1\n")  # no engine: --stop must not touch a real stack
    (fake_bin / "docker").chmod(0o755)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    home = tmp_path / "airflow"
    home.mkdir()
    unrelated = settled(spawn("sleep"))
    worker = settled(spawn("airflow edge worker: trainhost"))  # the title the edge worker gives itself
    api = settled(spawn("airflow api_server -- host:127.0.0.1 port:8081"))
    procs += [unrelated, worker, api]

    (home / "edge-worker.pid").write_text(str(unrelated.pid))
    res = script("init_for_train_server.sh", env, "--stop-worker")
    assert res.returncode == 0, res.stderr
    assert f"names pid {unrelated.pid}, which runs 'sleep 300 ', not the edge worker: left alone" in res.stderr
    assert "no worker running" in res.stdout and pid_alive(unrelated.pid)
    (home / "edge-worker.pid").write_text(str(worker.pid))
    res = script("init_for_train_server.sh", env, "--stop-worker")
    assert res.returncode == 0 and f"worker stopped (pid {worker.pid})" in res.stdout, res.stdout + res.stderr
    assert gone(worker)

    (home / "airflow-api-server.pid").write_text(str(api.pid))
    (home / "airflow-scheduler.pid").write_text(str(unrelated.pid))
    res = script("init_for_inference_server.sh", env, "--stop")
    assert res.returncode == 0, res.stderr
    assert f"stopped airflow api-server (pid {api.pid})" in res.stdout
    assert f"names pid {unrelated.pid}, which runs 'sleep 300 ', not airflow scheduler: left alone" in res.stderr
    assert gone(api) and pid_alive(unrelated.pid)
    assert not list(home.glob("airflow-*.pid"))


def test_the_local_deploys_stop_server_kills_only_a_bentoml_serve(
    procs: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import deploy_local

    stranger = settled(spawn("python"))  # a recorded server pid, since reused by an unrelated process
    server = settled(spawn("bentoml", *deploy_local.SERVER_WORDS, "--port", "1"))
    procs += [stranger, server]
    deploy_local.stop_server(stranger.pid, grace=5)
    assert stranger.poll() is None and "not bentoml serve: left alone" in capsys.readouterr().err
    deploy_local.stop_server(server.pid, grace=5)
    assert gone(server)


def test_a_server_that_ignores_sigterm_is_gone_when_stop_server_returns(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Past the grace, SIGKILL; and stop_server returns only once the process is gone, so `deploy stop` and a switch
    never leave a server running that they reported stopped."""
    from pipeline import deploy_local

    ready = tmp_path / "ignoring-sigterm"  # written once the handler is set: a SIGTERM from then on is ignored
    code = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(300)"
    )
    argv = shlex.join([sys.executable, "-c", code, *deploy_local.SERVER_WORDS, "--port", "1"])
    server = subprocess.Popen(["bash", "-c", f'exec -a "bentoml" {argv}'], start_new_session=True)
    threading.Thread(target=server.wait, daemon=True).start()
    procs.append(settled(server))
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    tick = time.monotonic()
    deploy_local.stop_server(server.pid, grace=1.0)
    assert not deploy_local.alive(server.pid)  # at once: no polling here
    assert time.monotonic() - tick >= 1.0  # it outlived SIGTERM for the whole grace
