"""Running the real DAGs with ``airflow dags test`` from the Airflow virtualenv, in a throwaway AIRFLOW_HOME.

Two ways: ``migrate`` / ``dags_test`` start one ``airflow`` process per command; ``AirflowCLI`` keeps one
process that runs Airflow's own command functions (the ones the ``airflow`` script calls) for a series of
commands, so a test that runs several DAGs pays Airflow's start-up and the in-process execution API's build
(20-35 s per ``airflow dags test`` on a busy 2-core machine) once, and can start both before it needs them."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VENV = Path(os.environ.get("DKT_AIRFLOW_VENV", ROOT / ".venv-airflow"))
AIRFLOW = AIRFLOW_VENV / "bin" / "airflow"
DAG_IDS = ("update_data_dag", "retrain_and_push_dag", "update_inference_server_dag", "promote_shadow_dag")


def require_airflow() -> None:
    if not AIRFLOW.exists():
        raise RuntimeError(f"{AIRFLOW} not found: run `make test-setup` (creates .venv-airflow)")


def airflow_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
        **extra,
    }


def migrate(home: Path) -> None:
    require_airflow()
    proc = subprocess.run([str(AIRFLOW), "db", "migrate"], env=airflow_env(home, {}), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def dags_test_argv(dag_id: str, conf: dict[str, object] | None) -> list[str]:
    """``airflow dags test`` of one DAG, with run ``conf`` (the params a UI trigger sets)."""
    return ["dags", "test", dag_id, *(["-c", json.dumps(conf)] if conf else [])]


def checked_run(dag_id: str, returncode: int, log: Path) -> str:
    """The run's log; raises with its tail unless the command succeeded and the run ended in success."""
    text = log.read_text(errors="replace")
    if returncode != 0 or "state=success" not in text:
        raise AssertionError(f"{dag_id} failed (exit {returncode}); log {log}:\n{text[-6000:]}")
    return text


def dags_test(
    home: Path, dag_id: str, env: dict[str, str], log: Path, timeout: int = 900, conf: dict[str, object] | None = None
) -> str:
    """Run one DAG to the end (with run ``conf``, the params a UI trigger sets); returns its log.
    Raises with the log's tail when the run fails."""
    with log.open("w") as out:
        proc = subprocess.run([str(AIRFLOW), *dags_test_argv(dag_id, conf)], env=airflow_env(home, env), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)  # fmt: skip
    return checked_run(dag_id, proc.returncode, log)


# Runs in the Airflow venv. Requests come one JSON line each on stdin ({"argv": [...], "log": path}), a reply
# ({"rc": N}) goes out on stdout per request, in order. Each command's output (Airflow's logs, the tasks'
# subprocesses) goes to its log at the file-descriptor level; stdin is /dev/null for everything the commands
# start. What `airflow` itself does before a command (write the default config) is done once. "warm" builds
# and starts the in-process execution API that `dags test` runs tasks through (cached for the process; its
# first request alone took 44 s on a busy 2-core machine) ahead of the first run.
SERVE_CLI = r"""
import json, os, sys, traceback
requests_in = os.fdopen(os.dup(0))
replies = os.fdopen(os.dup(1), "w", buffering=1)
quiet = os.open(os.devnull, os.O_RDWR)
os.dup2(quiet, 0)
from airflow.cli import cli_parser
from airflow.configuration import write_default_airflow_configuration_if_needed
write_default_airflow_configuration_if_needed()
parser = cli_parser.get_parser()
for line in requests_in:
    req = json.loads(line)
    with open(req["log"], "ab") as log:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)
        try:
            if req["argv"] == ["warm"]:
                import httpx
                from airflow.sdk.execution_time.supervisor import in_process_api_server
                api = in_process_api_server()
                # The app's start-up and its routes' first build happen on the first request.
                httpx.Client(transport=api.transport, base_url="http://in-process").get("/health").raise_for_status()
            else:
                args = parser.parse_args(req["argv"])
                args.func(args)
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(f"SystemExit: {e.code}")
        except BaseException:
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(quiet, 1); os.dup2(quiet, 2)
    replies.write(json.dumps({"rc": rc}) + "\n")
"""


class AirflowCLI:
    """One Airflow process on ``home`` with ``env`` that runs Airflow CLI commands in order.

    ``start`` queues a command and returns; ``run`` queues one and waits for it and everything before it,
    raising on the first that failed (with its log's tail). Use as a context manager."""

    def __init__(self, home: Path, env: dict[str, str], log: Path) -> None:
        require_airflow()
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen([str(AIRFLOW_VENV / "bin" / "python"), "-c", SERVE_CLI], cwd=ROOT,
                                         env=airflow_env(home, env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, start_new_session=True)  # fmt: skip
        self.pending: list[tuple[list[str], Path]] = []

    def start(self, argv: list[str], log: Path) -> None:
        assert self.proc.stdin is not None
        log.write_bytes(b"")
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        self.pending.append((argv, log))

    def wait(self, timeout: float) -> None:
        """Every queued command's end, within ``timeout`` seconds in all; raises on the first that failed."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while self.pending:
                argv, log = self.pending[0]
                left = deadline - time.monotonic()
                line = self.proc.stdout.readline() if left > 0 and sel.select(left) else ""
                if not line:
                    why = "exited" if self.proc.poll() is not None else f"did not finish within {timeout:.0f}s"
                    self.close()
                    raise AssertionError(f"airflow {' '.join(argv)} {why}; log {log}:\n"
                                         f"{log.read_text(errors='replace')[-4000:]}\n--- {self.log}\n"
                                         f"{self.log.read_text(errors='replace')[-2000:]}")  # fmt: skip
                self.pending.pop(0)
                rc = json.loads(line)["rc"]
                if rc != 0:
                    raise AssertionError(f"airflow {' '.join(argv)} failed (exit {rc}); log {log}:\n"
                                         f"{log.read_text(errors='replace')[-6000:]}")  # fmt: skip

    def run(self, argv: list[str], log: Path, timeout: float = 900) -> None:
        self.start(argv, log)
        self.wait(timeout)

    def dags_test(self, dag_id: str, log: Path, timeout: float = 900, conf: dict[str, object] | None = None) -> str:
        """As ``dags_test``: one DAG to the end, in this process; returns its log."""
        self.run(dags_test_argv(dag_id, conf), log, timeout)
        return checked_run(dag_id, 0, log)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the loop ends at end of input
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # with a task's subprocesses, in its session
                self.proc.wait(30)

    def __enter__(self) -> AirflowCLI:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
