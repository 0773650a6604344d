"""The helpers tests and benchmarks share (tests/support): a free port, simulated students on the real client."""

from __future__ import annotations

import os
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ports import ephemeral_range, free_port, free_port_pair
from tests.support.students import answer_key, answering, client_server, run_students
from tests.support.zygote import Zygote


def test_free_port_can_be_listened_on_at_once() -> None:
    ports = [free_port() for _ in range(5)]
    for port in ports:
        assert 1024 <= port <= 65535
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()


def test_free_port_pair_is_outside_the_ports_the_kernel_hands_out() -> None:
    """tests/support/ports.free_port_pair: P and P + 1 free and below ip_local_port_range, where a connect() never
    takes one (a real outgoing connection's port lands inside that range)."""
    low, high = ephemeral_range()
    for _ in range(20):
        port = free_port_pair()
        assert 1024 <= port < port + 1 < low
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        client.connect(server.getsockname())
        assert low <= client.getsockname()[1] <= high


PROBE = """
import os, sys
print(sys.argv[1:], os.getcwd(), os.environ.get("PROBE"), __name__)
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise RuntimeError("probe failed")
sys.exit(int(sys.argv[1]))
"""


def test_a_zygote_run_is_what_python_m_gives(tmp_path: Path) -> None:
    """tests/support/zygote.py: exit code, stdout, stderr, argv, environment, working folder and __main__ as
    `python -m MODULE` gives them; an uncaught exception is exit 1 with its traceback's last line."""
    (tmp_path / "zygote_probe.py").write_text(PROBE)
    env = {**os.environ, "PROBE": "p1"}

    def both(*args: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        forked = subprocess.run(shlex.split(zygote.command("zygote_probe", *args)), cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        direct = subprocess.run([sys.executable, "-m", "zygote_probe", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        return forked, direct

    with Zygote.started([], tmp_path) as zygote:
        for code in ("0", "3"):
            forked, direct = both(code, "two words")
            assert (forked.returncode, forked.stdout, forked.stderr) == (
                direct.returncode,
                direct.stdout,
                direct.stderr,
            )
            assert forked.returncode == int(code) and f"'two words'] {tmp_path} p1 __main__" in forked.stdout
        forked, direct = both("raise")
        assert forked.returncode == direct.returncode == 1
        assert forked.stderr.splitlines()[-1] == direct.stderr.splitlines()[-1] == "RuntimeError: probe failed"


@pytest.mark.slow
def test_students_answer_through_the_real_client(tmp_path: Path, sim_dir: Path) -> None:
    """Sessions, questions and answers over HTTP land in the client's database, graded as the students meant."""
    db, questions = tmp_path / "client.db", sim_dir / "questions.csv"
    env = {
        **os.environ,
        "DKT_CLIENT_DB": str(db),
        "DKT_QUESTIONS": str(questions),
        # No inference service: every answer is still stored, and the page says predictions are unavailable.
        "DKT_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
        "DKT_INFERENCE_URL_FILE": "",
        "DKT_INFERENCE_RETRIES": "1",
        "DKT_SECRET_KEY": "support-test",
    }
    with client_server(env, free_port(), tmp_path / "gunicorn.log") as base:
        tally = run_students(base, questions, 2, 3, seed=5, prefix="support")
        with answering(base, questions, seed=50, prefix="during") as during:
            deadline = time.monotonic() + 60
            while during.answers < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
    assert tally.answers == 6
    assert tally.failed == 6 and set(tally.errors) == {"POST /answer -> page says predictions are unavailable"}
    assert during.answers >= 5
    key = answer_key(questions)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.nickname, i.assessmentItemID, i.given, i.answerCode FROM interactions i"
            " JOIN students s ON s.id = i.student_id"
        ).fetchall()
    mine = [r for r in rows if r[0].startswith("support-5-")]
    assert len(mine) == 6 and {r[0] for r in mine} == {"support-5-0", "support-5-1"}
    assert len(rows) - len(mine) >= 5  # the background students' answers too
    for _, item, given, code in rows:  # a given answer is right exactly when it is the key's answer
        assert code == int(given == key[item]), (item, given, key[item])
