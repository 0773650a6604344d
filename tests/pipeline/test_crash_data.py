"""Crash tests: real processes killed with SIGKILL, then nothing lost, nothing duplicated, and a rerun completes.

The answers come from the real client (gunicorn, answered over HTTP), the export from its real exporter
(``dkt client export-interactions``), the steps are ``dkt data <step>`` as update_data_dag runs
them. Each crashed process dies at a named point (``DKT_FAULT_POINT``, pipeline/data_update.py) or is killed from
outside. More answers arrive while the pipeline is down; then the DAG's retry of the same run, or a new run,
must leave every answer exactly once in the latest data version. Run with -s to see the table of results.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests

from data.cli import main as data_cli
from pipeline.data_update import FAULT_ENV, FAULT_POINTS
from pipeline.store import VersionedStore
from pipeline.workdir import work_dir
from tests.serving.servers import free_port
from tests.support.students import CSRF, ITEM, answer_key, client_server, run_students, sign_up_form

pytestmark = pytest.mark.slow

STEPS = ("export", "prepare", "publish", "advance-watermark")
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[str] = []  # one line per crash test, printed at the end of the module (the docs' table)


@dataclass(frozen=True)
class Answers:
    before: Path  # the client database after the first answers
    after: Path  # the same database after more answers arrived (a superset: same ids, more rows)


def client_env(db: Path, sim_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DKT_CLIENT_DB": str(db),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        # inference down: the client still stores every answer (the page says predictions are unavailable)
        "DKT_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
        "DKT_INFERENCE_URL_FILE": "",
        "DKT_INFERENCE_RETRIES": "1",
        "DKT_SECRET_KEY": "crash-test",
    }


def copy_db(src: Path, dest: Path) -> None:
    """A consistent copy with SQLite's backup API (a plain file copy could miss what sits in the WAL)."""
    dest.unlink(missing_ok=True)
    with sqlite3.connect(src) as s, sqlite3.connect(dest) as d:
        s.backup(d)


def db_answers(db: Path) -> Counter[tuple[str, str, int]]:
    """(userID, item, answerCode) of every stored answer. A student never gets an item twice, so this names one."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT userID, assessmentItemID, answerCode FROM interactions").fetchall()
    return Counter((str(u), str(i), int(a)) for u, i, a in rows)


def version_answers(store: VersionedStore, dest: Path) -> Counter[tuple[str, str, int]]:
    store.pull("datasets", "latest", dest)
    df = pd.read_csv(dest / "interactions.csv", dtype={"userID": str, "assessmentItemID": str})
    web = df[df["userID"].str.startswith("web-")]
    return Counter(zip(web["userID"], web["assessmentItemID"], web["answerCode"].astype(int), strict=True))


def max_id(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT MAX(id) FROM interactions").fetchone()[0])


@pytest.fixture(scope="module")
def answers(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Answers]:
    d = tmp_path_factory.mktemp("answers")
    live = d / "live.db"
    with client_server(client_env(live, sim_dir), free_port(), d / "gunicorn.log") as base:
        run_students(base, sim_dir / "questions.csv", 3, 4, seed=1, prefix="crash")
        copy_db(live, d / "before.db")
        run_students(base, sim_dir / "questions.csv", 3, 3, seed=1, prefix="crash")  # the same students go on
        run_students(base, sim_dir / "questions.csv", 1, 3, seed=2, prefix="crash")  # and a new one comes
        copy_db(live, d / "after.db")
    assert sum(db_answers(d / "before.db").values()) == 12 and sum(db_answers(d / "after.db").values()) == 24
    yield Answers(d / "before.db", d / "after.db")
    print("\n[crash] " + "\n[crash] ".join(RESULTS))


@pytest.fixture
def pipeline_env(
    answers: Answers, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VersionedStore]:
    """A local store seeded with the simulated set, the client database holding the first answers, the
    default exporter (the client's own) reading it: what `make up` configures."""
    env = client_env(tmp_path / "client.db", sim_dir)
    for k in ("DKT_CLIENT_DB", "DKT_QUESTIONS", "DKT_SECRET_KEY"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("DKT_STORE", "local")
    monkeypatch.setenv("DKT_STORE_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("DKT_WORK_ROOT", str(tmp_path / "work"))
    monkeypatch.delenv("DKT_EXPORT_CMD", raising=False)
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert data_cli(["push", str(sim_dir), "--version", "d1"]) == 0
    copy_db(answers.before, tmp_path / "client.db")
    yield VersionedStore.from_env()


def step_process(step: str, run_id: str, fault: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **({FAULT_ENV: fault} if fault else {})}
    argv = [sys.executable, "-m", "dkt", "data", step, "--run-id", run_id]
    return subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def recover(store: VersionedStore, recovery: str, crashed_step: str, answers: Answers, tmp_path: Path) -> list[int]:
    """More answers arrive while the pipeline is down; then recover and check that each is stored exactly once."""
    copy_db(answers.after, tmp_path / "client.db")
    # retry: Airflow retries the failed task and runs the rest of that run, then the next run comes.
    # new-run: the run is given up; the next scheduled run starts over.
    rest = STEPS[STEPS.index(crashed_step) :] if recovery == "retry" else ()
    codes = [data_cli([s, "--run-id", "r1"]) for s in rest]
    codes += [data_cli([s, "--run-id", "r2"]) for s in STEPS]
    assert set(codes) <= {0, 99}, codes  # 99: nothing new to publish (a skip)
    got = version_answers(store, tmp_path / "latest")
    want = db_answers(answers.after)
    lost, duplicated = want - got, Counter({k: n - 1 for k, n in got.items() if n > 1})
    assert not lost and not duplicated and got == want, (lost, duplicated)
    assert store.get_state("watermark")["watermark"] == str(max_id(answers.after))
    return codes


@pytest.mark.parametrize("recovery", ["retry", "new-run"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_9_of_a_data_update_step(
    point: str, recovery: str, pipeline_env: VersionedStore, answers: Answers, tmp_path: Path
) -> None:
    store = pipeline_env
    crashed = point.split(":")[0].replace("_", "-")
    before = STEPS[: STEPS.index(crashed)]
    assert [data_cli([s, "--run-id", "r1"]) for s in before] == [0] * len(before)
    proc = step_process(crashed, "r1", fault=point)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    if point.startswith(("export", "prepare", "publish:mid")):
        assert store.pointed("datasets", "latest") == "d1"  # died before anything was visible
    codes = recover(store, recovery, crashed, answers, tmp_path)
    RESULTS.append(f"kill -9 {crashed} at {point}, {recovery}: exit codes after {codes}: 24/24 answers once, ok")


def children(pid: int) -> list[int]:
    """The kernel's list of ``pid``'s children (one per thread that forked): the test polls it every few ms, and
    scanning every /proc/*/stat instead cost 14 ms of CPU per poll, most of a core taken from the step it waits on."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(child) for child in task.read_text().split()]
        except OSError:  # the thread or the process ended meanwhile
            continue
    return out


@pytest.mark.parametrize("recovery", ["retry", "new-run"])
def test_kill_9_of_the_exporter(recovery: str, pipeline_env: VersionedStore, answers: Answers, tmp_path: Path) -> None:
    """The client's exporter (a child of the export step) is killed from outside while it runs."""
    store = pipeline_env
    proc = step_process("export", "r1")
    killed = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        for child in children(proc.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"export-interactions" in cmdline:
                os.kill(child, signal.SIGKILL)
                killed = True
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    assert killed, "the exporter finished before it could be killed"
    assert proc.returncode == 2 and "error: export command failed (exit -9)" in err, err[-2000:]
    assert not (work_dir("update_data", "r1") / "export.json").exists()
    codes = recover(store, recovery, "export", answers, tmp_path)
    RESULTS.append(f"kill -9 of the exporter (flask export-interactions), {recovery}: export exit 2, then {codes}: ok")


# --- the client: a gunicorn worker killed mid-answer ------------------------------------------------------------

# Test-only gunicorn config: the worker wraps the client's record_answer and SIGKILLs itself once (a marker file
# keeps the respawned worker alive), either inside the answer's transaction or right after its commit.
KILLER = """
import os, signal

def post_worker_init(worker):
    import client.db as db
    marker, point = os.environ["DKT_TEST_KILL_MARKER"], os.environ["DKT_TEST_KILL_POINT"]
    original = db.record_answer

    def die():
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    class Conn:
        def __init__(self, conn):
            self._conn = conn

        def execute(self, sql, *args):
            if point == "before_commit" and sql.strip().upper() == "COMMIT":
                die()
            return self._conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self._conn, name)

    def record_answer(conn, *args, **kwargs):
        out = original(Conn(conn), *args, **kwargs)
        if point == "after_commit":
            die()
        return out

    db.record_answer = record_answer
"""


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_kill_9_of_a_client_worker_mid_answer(
    point: str, pipeline_env: VersionedStore, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = pipeline_env
    db = tmp_path / "client.db"
    db.unlink()
    conf = tmp_path / "killer.py"
    conf.write_text(KILLER)
    marker = tmp_path / "killed"
    env = {**client_env(db, sim_dir), "DKT_TEST_KILL_MARKER": str(marker), "DKT_TEST_KILL_POINT": point}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    argv = [gunicorn, "-w", "1", "-c", str(conf), "-b", f"127.0.0.1:{port}", "client:create_app()"]
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    key = answer_key(sim_dir / "questions.csv")
    submitted: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(base + "/", timeout=2)
                break
            except requests.RequestException:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.3)
        s = requests.Session()
        token = CSRF.search(s.get(base + "/", timeout=10).text)
        assert token
        page = s.post(base + "/register", data=sign_up_form(token.group(1), f"k{uuid.uuid4().hex[:6]}"))
        outcomes = []
        for _ in range(6):
            item, token = ITEM.search(page.text), CSRF.search(page.text)
            assert item and token, page.text[:300]
            form = {"csrf_token": token.group(1), "item": item.group(1), "answer": key[item.group(1)]}
            submitted.append(item.group(1))
            try:
                page = s.post(base + "/answer", data=form, timeout=30)
                outcomes.append(page.status_code)
            except requests.ConnectionError:  # the worker died mid-answer: the browser sends the form again
                outcomes.append(-9)
                page = s.post(base + "/answer", data=form, timeout=30)
            assert page.status_code == 200
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert marker.exists() and -9 in outcomes, outcomes
    assert all(data_cli([s, "--run-id", "r1"]) == 0 for s in STEPS)
    got = version_answers(store, tmp_path / "latest")
    per_item = Counter(i for (_u, i, _a) in got.elements())
    assert per_item == Counter(submitted), f"each answered item once: {per_item} vs {submitted}"
    assert got == db_answers(db)
    RESULTS.append(f"kill -9 of a gunicorn worker {point.replace('_', ' ')} of an answer: {len(submitted)} answers, "
                   "each once in the next data version after the browser resent the form: ok")  # fmt: skip
