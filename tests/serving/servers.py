"""Real servers for tests: `bentoml serve` and gunicorn started as subprocesses, stopped by process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.ports import free_port  # also imported from here by many tests

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@contextmanager
def running(
    cmd: list[str], env: dict[str, str], url: str, ready_path: str, log: Path, timeout: float = 180
) -> Iterator[Server]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}{ready_path} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        server.stop()


@contextmanager
def together(*managers: AbstractContextManager[Server]) -> Iterator[list[Server]]:
    """Enter ``managers`` at once, each in a thread (servers boot side by side: a test waits for the slowest
    start-up, not for the sum); every one that started is stopped at the end, also when another failed."""
    with ExitStack() as stack, ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
        servers, errors = [], []
        for manager, future in zip(managers, futures, strict=True):
            try:
                servers.append(future.result())
            except BaseException as e:  # re-raised below, once every started one is registered
                errors.append(e)
            else:
                stack.push(manager)
        if errors:
            raise errors[0]
        yield servers


def bentoml_env(home: Path, model_tag: str | None = None) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT)}
    if model_tag:
        env["DKT_MODEL_TAG"] = model_tag
    return env


@contextmanager
def bentoml_service(target: str, env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    cmd = [PY, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, env, f"http://127.0.0.1:{port}", "/readyz", log) as server:
        yield server


@contextmanager
def gunicorn_client(env: dict[str, str], log: Path, workers: int = 2) -> Iterator[Server]:
    port = free_port()
    cmd = [
        PY,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "60",
        "client:create_app()",
    ]
    with running(cmd, {**env, "PYTHONPATH": str(ROOT)}, f"http://127.0.0.1:{port}", "/", log) as server:
        yield server
