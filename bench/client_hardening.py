"""Figures of the client's hardening (docs/hardening.md), against real gunicorn processes:

    .venv/bin/python bench/client_hardening.py [--starts 10] [--workers 4] [--tries 10]

1. ``gunicorn -w N`` started ``--starts`` times, each on a fresh database: how many start with every worker
   booted and the page answering (the failure was `database is locked` on PRAGMA journal_mode=WAL).
2. ``gunicorn -w 2 --threads 4``: one shown question's form submitted by two connections at the same instant,
   ``--tries`` times: rows stored per form (the target is 1).
3. The same server with an inference service that drips its reply a byte at a time: seconds to answer a
   page, against DKT_INFERENCE_DEADLINE_S.
Timings are wall-clock on whatever machine runs it (say how loaded it was).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import create_app, db  # noqa: E402
from tests.client.conftest import serving  # noqa: E402
from tests.client.test_answer_once import Drip  # noqa: E402
from tests.serving.servers import free_port  # noqa: E402

SECRET = "bench-secret"


def gunicorn(folder: Path, workers: int, inference_url: str, deadline: float = 5.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DKT_CLIENT_DB": str(folder / "client.db"),
           "DKT_QUESTIONS": str(folder / "sim" / "questions.csv"), "DKT_INFERENCE_URL": inference_url,
           "DKT_INFERENCE_URL_FILE": "", "DKT_SECRET_KEY": SECRET, "DKT_INFERENCE_DEADLINE_S": str(deadline),
           "DKT_INFERENCE_TIMEOUT_S": "0.5"}  # fmt: skip
    log = (folder / f"gunicorn-{port}.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-w", str(workers), "--threads", "4", "-b",
         f"127.0.0.1:{port}", "client:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def booted(proc: subprocess.Popen, url: str, workers: int, log: Path, timeout: float = 180) -> bool:
    """Every worker booted (one 'Booting worker' line each, no failure) and the page answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text(errors="replace")
        if "Worker failed to boot" in text or "Traceback" in text:
            return False
        if text.count("Booting worker") >= workers:
            try:
                if requests.get(url + "/", timeout=10).status_code == 200:
                    time.sleep(2)  # a worker dying just after boot would show now
                    text = log.read_text(errors="replace")
                    return proc.poll() is None and "Traceback" not in text
            except requests.RequestException:
                pass
        time.sleep(0.3)
    return False


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cookie_for(student_id: int, folder: Path) -> str:
    """The signed session cookie the sign-in page would set for this student (same secret as the server)."""
    questions = str(folder / "sim" / "questions.csv")
    app = create_app({"DKT_CLIENT_DB": str(folder / "signer.db"), "DKT_QUESTIONS": questions, "SECRET_KEY": SECRET})
    signer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return str(signer.dumps({"student_id": student_id}))


def field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, html[:500]
    return m.group(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--tries", type=int, default=10)
    args = ap.parse_args()
    from dkt.simulate import simulate, write

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write(simulate(20, seed=1), base / "sim", test_ratio=0.25, seed=1)
        dead = f"http://127.0.0.1:{free_port()}"

        ok = 0
        for i in range(args.starts):
            folder = base / f"start{i}"
            (folder / "sim").mkdir(parents=True)
            (folder / "sim" / "questions.csv").write_bytes((base / "sim" / "questions.csv").read_bytes())
            proc, url = gunicorn(folder, args.workers, dead)
            good = booted(proc, url, args.workers, folder / f"gunicorn-{url.rsplit(':', 1)[1]}.log")
            ok += good
            stop(proc)
            print(f"start {i + 1}: {'ok' if good else 'FAILED'}", flush=True)
        print(f"1. gunicorn -w {args.workers} on a fresh database: {ok} of {args.starts} starts clean", flush=True)

        folder = base / "submits"
        (folder / "sim").mkdir(parents=True)
        (folder / "sim" / "questions.csv").write_bytes((base / "sim" / "questions.csv").read_bytes())
        proc, url = gunicorn(folder, 2, dead)
        try:
            assert booted(proc, url, 2, next(folder.glob("gunicorn-*.log")))
            with db.connect(folder / "client.db") as conn:
                sid = db.get_or_create_student(conn, "two-tabs")
            browser = requests.Session()
            browser.cookies.set("session", cookie_for(sid, folder))
            stored = []
            for _ in range(args.tries):
                page = browser.get(url + "/practice", timeout=60).text  # sets the session's CSRF token too
                cookies = browser.cookies.get_dict()
                data = {"item": field(page, "item"), "token": field(page, "token"), "answer": "1",
                        "csrf_token": field(page, "csrf_token")}  # fmt: skip
                barrier = threading.Barrier(2)
                codes: list[int] = []

                def submit(data: dict[str, str] = data, barrier: threading.Barrier = barrier, cookies: dict = cookies,
                           codes: list[int] = codes) -> None:  # fmt: skip
                    s = requests.Session()  # its own connection: gunicorn may hand each to another worker
                    barrier.wait()
                    codes.append(s.post(url + "/answer", data=data, cookies=cookies, timeout=60,
                                        allow_redirects=False).status_code)  # fmt: skip

                threads = [threading.Thread(target=submit) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                with sqlite3.connect(folder / "client.db") as c:
                    n = c.execute("SELECT COUNT(*) FROM interactions WHERE answer_token = ?", (data["token"],))
                    stored.append(int(n.fetchone()[0]))
                assert codes == [302, 302], codes
            print(f"2. two concurrent submits of one form, {args.tries} tries against gunicorn -w 2: rows stored "
                  f"per form {stored}; {stored.count(1)} of {args.tries} stored exactly one", flush=True)  # fmt: skip
        finally:
            stop(proc)

        for where in ("body", "headers"):
            with serving(Drip(where)) as drip:
                folder = base / f"drip-{where}"
                (folder / "sim").mkdir(parents=True)
                (folder / "sim" / "questions.csv").write_bytes((base / "sim" / "questions.csv").read_bytes())
                deadline = 5.0
                proc, url = gunicorn(folder, 2, drip.url, deadline)
                try:
                    assert booted(proc, url, 2, next(folder.glob("gunicorn-*.log")))
                    with db.connect(folder / "client.db") as conn:
                        sid = db.get_or_create_student(conn, "drip")
                    began = time.monotonic()
                    r = requests.get(url + "/practice", cookies={"session": cookie_for(sid, folder)}, timeout=600)
                    took = time.monotonic() - began
                    degraded = "Predictions are unavailable" in r.text
                    print(f"3. service dripping its {where}: /practice answered {r.status_code} in {took:.2f}s"
                          f" (DKT_INFERENCE_DEADLINE_S={deadline:g}), degraded: {degraded}", flush=True)  # fmt: skip
                finally:
                    stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
