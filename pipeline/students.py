"""Simulated students using the real client over HTTP: for the end-to-end test and the cycle benchmark.

Each student is a browser-like session: start with a nickname, then read the current
question from /practice and post an answer (right with probability ``skill``, using the
answer key in questions.csv). A request that does not end in HTTP 200 counts as failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import requests

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ITEM = re.compile(r'name="item" value="([^"]+)"')


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


def student_session(base: str, nickname: str, tally: Tally) -> requests.Session | None:
    s = requests.Session()
    r = s.get(base + "/", timeout=30)
    m = CSRF.search(r.text)
    if r.status_code != 200 or not m:
        tally.fail(f"GET / -> {r.status_code}")
        return None
    r = s.post(base + "/start", data={"nickname": nickname, "csrf_token": m.group(1)}, timeout=30)
    if r.status_code != 200:
        tally.fail(f"POST /start -> {r.status_code}")
        return None
    return s


def answer_once(s: requests.Session, base: str, key: dict[str, str], rng: np.random.Generator, skill: float,
                tally: Tally) -> None:  # fmt: skip
    r = s.get(base + "/practice", timeout=30)
    csrf, item = CSRF.search(r.text), ITEM.search(r.text)
    if r.status_code != 200 or not csrf or not item:
        tally.fail(f"GET /practice -> {r.status_code}")
        return
    right = key.get(item.group(1), "0")
    given = right if rng.random() < skill else str(int(float(right)) + 1) if right.lstrip("-").isdigit() else "x"
    r = s.post(base + "/answer", data={"item": item.group(1), "answer": given, "csrf_token": csrf.group(1)},
               timeout=30)  # fmt: skip
    if r.status_code != 200:
        tally.fail(f"POST /answer -> {r.status_code}")
        return
    tally.answers += 1


def run_students(base: str, questions_csv: Path, n_students: int, answers_each: int, seed: int = 0,
                 prefix: str = "sim") -> Tally:  # fmt: skip
    key = answer_key(questions_csv)
    rng = np.random.default_rng(seed)
    tally = Tally()
    for i in range(n_students):
        s = student_session(base, f"{prefix}-{seed}-{i}", tally)
        if s is None:
            continue
        skill = float(rng.uniform(0.3, 0.9))
        for _ in range(answers_each):
            answer_once(s, base, key, rng, skill, tally)
    return tally
