"""Simulated students using the real client over HTTP: for the end-to-end tests and the cycle benchmark.

Each student is a browser-like session: create an account (or sign in to it, when a run with the same
names already made it: its password is derived from the name), then read the current
question from /practice and post an answer (right with probability ``skill``, using the
answer key in questions.csv). A request that does not end in HTTP 200 counts as failed, and so
does a page that says predictions are unavailable (the answer is stored, but the student saw the
service fail).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from dkt.simulate import GUESS, SLOPE

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ITEM = re.compile(r'name="item" value="([^"]+)"')
DEGRADED = 'id="predictions-unavailable"'
REPO_ROOT = Path(__file__).resolve().parents[2]


# P(right answer) from (item id, the student's skill); without one a student is right with probability skill on
# every item (then no model can tell items apart: tests that measure a model's online AUC pass one).
Chance = Callable[[str, float], float]


@dataclass
class Tally:
    answers: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(what)


def answer_key(questions_csv: Path) -> dict[str, str]:
    q = pd.read_csv(questions_csv, dtype=str)
    return dict(zip(q["assessmentItemID"], q["answer"], strict=True))


def password_of(username: str) -> str:
    """A simulated student's password: derived from the name, so the same student signs in again later."""
    return f"pw-{username}-0123"


def sign_up_form(csrf_token: str, username: str) -> dict[str, str]:
    """The /register form of a simulated student (POST it to /register; /login takes the same fields)."""
    return {"csrf_token": csrf_token, "username": username, "password": password_of(username)}


def student_session(base: str, nickname: str, tally: Tally) -> requests.Session | None:
    """A signed-in session of student ``nickname``: registered now, or signed in when it exists already."""
    s = requests.Session()
    r = s.get(base + "/", timeout=30)
    m = CSRF.search(r.text)
    if r.status_code != 200 or not m:
        tally.fail(f"GET / -> {r.status_code}")
        return None
    r = s.post(base + "/register", data=sign_up_form(m.group(1), nickname), timeout=30)
    if r.status_code == 400 and "username is taken" in r.text:
        r = s.post(base + "/login", data=sign_up_form(m.group(1), nickname), timeout=30)
    if r.status_code != 200:
        tally.fail(f"POST /register or /login -> {r.status_code}")
        return None
    return s


def answer_once(s: requests.Session, base: str, key: dict[str, str], rng: np.random.Generator, skill: float,
                tally: Tally, chance: Chance | None = None) -> None:  # fmt: skip
    r = s.get(base + "/practice", timeout=30)
    csrf, item = CSRF.search(r.text), ITEM.search(r.text)
    if r.status_code != 200 or not csrf or not item:
        tally.fail(f"GET /practice -> {r.status_code}")
        return
    right = key.get(item.group(1), "0")
    p_right = chance(item.group(1), skill) if chance else skill
    given = right if rng.random() < p_right else str(int(float(right)) + 1) if right.lstrip("-").isdigit() else "x"
    r = s.post(base + "/answer", data={"item": item.group(1), "answer": given, "csrf_token": csrf.group(1)},
               timeout=30)  # fmt: skip
    if r.status_code != 200:
        tally.fail(f"POST /answer -> {r.status_code}")
        return
    tally.answers += 1
    if DEGRADED in r.text:
        tally.fail("POST /answer -> page says predictions are unavailable")


def irt_students(questions_csv: Path) -> Chance:
    """Students as the training data's (dkt/simulate.py): P(right) = guess + (1 - guess) sigmoid(slope (ability -
    difficulty)), ability from the student's skill (0.3..0.9 -> -3..3, wider than the bank's difficulties)."""
    difficulty = pd.read_csv(questions_csv, dtype={"assessmentItemID": str}).set_index("assessmentItemID")
    diff = difficulty["difficulty"].astype(float).to_dict()

    def chance(item: str, skill: float) -> float:
        return GUESS + (1 - GUESS) / (1 + math.exp(-SLOPE * (10 * (skill - 0.6) - diff[item])))

    return chance


def run_students(base: str, questions_csv: Path, n_students: int, answers_each: int, seed: int = 0,
                 prefix: str = "sim", chance: Chance | None = None) -> Tally:  # fmt: skip
    key = answer_key(questions_csv)
    rng = np.random.default_rng(seed)
    tally = Tally()
    for i in range(n_students):
        s = student_session(base, f"{prefix}-{seed}-{i}", tally)
        if s is None:
            continue
        skill = float(rng.uniform(0.3, 0.9))
        for _ in range(answers_each):
            answer_once(s, base, key, rng, skill, tally, chance)
    return tally


@contextmanager
def answering(base: str, questions_csv: Path, seed: int = 1000, prefix: str = "during") -> Iterator[Tally]:
    """Students answering without pause (new ones, 5 answers each) until the block ends; their tally."""
    tally = Tally()
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            t = run_students(base, questions_csv, 1, 5, seed=seed + i, prefix=prefix)
            tally.answers += t.answers
            tally.failed += t.failed
            tally.errors += t.errors[: max(0, 20 - len(tally.errors))]
            i += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        yield tally
    finally:
        stop.set()
        worker.join(60)


@contextmanager
def client_server(env: Mapping[str, str], port: int, log: Path, timeout: float = 60) -> Iterator[str]:
    """The real client under gunicorn on 127.0.0.1:``port``, configured by ``env``; yields its base URL."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    argv = [gunicorn, "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}", "client:create_app()"]
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(env), stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(base + "/", timeout=2)
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the client did not start on {base}; see {log}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
