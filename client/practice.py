"""Practice sessions: a diagnostic for a new student, then one skill at a time, each ending with a summary.

The rules (docs/student.md):

- a new student (fewer answers than ``DKT_DIAGNOSTIC_ITEMS`` and no diagnostic yet) first answers a diagnostic:
  each question from a skill not answered yet, the one whose P(correct) is closest to 0.5 (an answer tells
  the most where the outcome is least certain: a Bernoulli's variance p(1-p) peaks at 0.5);
- then a session practises one skill, the student's choice or ``recommend``'s with its reason; each question
  is the skill's item closest to ``DKT_TARGET_DIFFICULTY`` (``DKT_EXPLORE_RATE`` of them drawn at random among
  the skill's items instead: the shadow gate's explored answers, docs/monitoring.md#exploration);
- a session ends when its skill is mastered, when the skill reaches ``DKT_DAILY_CAP`` answers today (UTC),
  after ``DKT_SESSION_LENGTH`` answers, or with the "End session" button; its summary is stored with it.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Flask, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from client import db
from client.inference import InferenceClient, InferenceUnavailable
from client.tutor import ItemBank, _item_body, insights, knowledge_state, prerequisites, skill_label, skill_order
from dkt.mastery import LEVELS

HISTORY_SENT = 500  # answers sent to the service; it keeps the last max_seq_len anyway
DIAGNOSTIC_TARGET = 0.5  # the most informative question: see the module docstring
MOVED = 0.01  # a change of mastery under one percentage point reads "unchanged"
ENDED_BY_STUDENT = "you ended it"
END_REASONS = {
    "diagnostic": "the diagnostic is done",
    "mastered": "you mastered the skill",
    "cap": "you reached today's limit for this skill",
    "length": "you answered a full session",
    "student": ENDED_BY_STUDENT,
}

State = dict[int, dict[str, Any]]  # KnowledgeTag -> {mastery, level, evidence}


def state_of(skills: list[dict[str, Any]]) -> State:
    return {int(s["tag"]): {"mastery": s["mastery"], "level": s["level"], "evidence": s["evidence"]} for s in skills}


def _days_since(when: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(when)).total_seconds() / 86400.0


def recommend(
    state: State, activity: dict[int, tuple[str, int]], tags: list[int], now: datetime, cap: int, review_days: float
) -> tuple[int, str]:
    """The skill to practise next and why, first rule that finds one (skills under today's ``cap`` only):

    1. due for review: a started skill not practised for ``review_days`` (the longest ago first);
    2. weakest: the started, not mastered skill with the lowest mastery;
    3. ready to learn: a skill not started whose prerequisites are mastered (easiest first);
    4. more practice: the open skill with the lowest mastery.
    When every skill has reached the cap: the one least practised today ("extra practice")."""
    today = {t: activity.get(t, ("", 0))[1] for t in tags}
    open_ = [t for t in tags if today[t] < cap]
    if not open_:
        return min(tags, key=lambda t: (today[t], skill_order(t))), "extra practice: every skill reached today's limit"

    def mastery(t: int) -> float:
        return float(state.get(t, {}).get("mastery", 0.0))

    def lvl(t: int) -> str:
        return str(state.get(t, {}).get("level", LEVELS[0]))

    started = [t for t in open_ if t in activity]
    due = [t for t in started if _days_since(activity[t][0], now) >= review_days]
    if due:
        t = min(due, key=lambda t: activity[t][0])
        return t, f"due for review: last practised {int(_days_since(activity[t][0], now))} days ago"
    weak = [t for t in started if lvl(t) != "mastered"]
    if weak:
        t = min(weak, key=lambda t: (mastery(t), skill_order(t)))
        return t, f"weakest: your lowest mastery among the skills you have started ({100 * mastery(t):.0f}%)"
    ready = [t for t in open_ if t not in activity and all(lvl(p) == "mastered" for p in prerequisites(t))]
    if ready:
        t = min(ready, key=skill_order)
        before = ", ".join(skill_label(p) for p in prerequisites(t))
        why = f"you have mastered {before}" if before else "a first-level skill: nothing to know before it"
        return t, f"ready to learn: {why}"
    t = min(open_, key=lambda t: (mastery(t), skill_order(t)))
    return t, "more practice"


class Tutor:
    """The session rules over the client database, the item bank and the inference service."""

    def __init__(self, bank: ItemBank, client: InferenceClient, cfg: dict[str, Any]):
        self.bank = bank
        self.client = client
        self.target = float(cfg["DKT_TARGET_DIFFICULTY"])
        self.pool_size = int(cfg["DKT_CANDIDATE_POOL"])
        self.explore_rate = float(cfg["DKT_EXPLORE_RATE"])
        self.diagnostic_items = int(cfg["DKT_DIAGNOSTIC_ITEMS"])
        self.session_length = int(cfg["DKT_SESSION_LENGTH"])
        self.cap = int(cfg["DKT_DAILY_CAP"])
        self.review_days = float(cfg["DKT_REVIEW_AFTER_DAYS"])

    # -- the next question ------------------------------------------------------------------------------------
    def next_question(
        self, conn: sqlite3.Connection, student_id: int, request_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
        """(next question, what to show or None, why the service could not answer or None).

        Asks the service for the knowledge state, logs it against the latest answer, ends the session if a rule
        says so (its summary stored), opens the next one, and picks the question within it."""
        history = db.history(conn, student_id, HISTORY_SENT)
        answered = db.answered_items(conn, student_id)
        seed = zlib.crc32(f"{student_id}:{len(history)}".encode())
        at = db.next_timestamp(conn, student_id)  # the next question is rendered right after this
        try:
            with self.client.budget():  # one total deadline for the page's calls: a dripping service cannot hang it
                skills = knowledge_state(self.client, history, request_id)
                state = state_of(skills)
                if history:
                    db.log_mastery(conn, student_id, db.last_interaction_id(conn, student_id), _jsonable(state), None)
                sess = self.settle(conn, student_id, state, request_id)
                pool, target = self.pool(sess, answered, seed)
                nxt, shown = insights(
                    self.client, self.bank, history, pool, target, seed, skills, at, request_id, self.explore_rate
                )
        except (InferenceUnavailable, KeyError, TypeError, ValueError) as e:
            sess = self.settle(conn, student_id, self.last_state(conn, student_id), None)
            pool, _ = self.pool(sess, answered, seed)
            return pool[seed % len(pool)], None, str(e)
        shown["session"] = self.view(conn, sess)
        return nxt, shown, None

    def pool(self, sess: sqlite3.Row, answered: set[str], seed: int) -> tuple[list[dict[str, Any]], float]:
        """The candidates of the session's next question and the P(correct) it aims at."""
        if sess["kind"] == "diagnostic":
            seen = frozenset(int(self.bank.by_id[i]["KnowledgeTag"]) for i in answered if i in self.bank.by_id)
            return self.bank.pool(answered, self.pool_size, seed, skip_tags=seen), DIAGNOSTIC_TARGET
        return self.bank.skill_items(int(sess["skill"]), answered)[: self.pool_size], self.target

    def last_state(self, conn: sqlite3.Connection, student_id: int) -> State:
        """The knowledge state logged after the student's latest logged answer ({} before any)."""
        return {int(t): v for t, v in db.latest_mastery(conn, student_id).items()}

    # -- sessions ---------------------------------------------------------------------------------------------
    def settle(self, conn: sqlite3.Connection, student_id: int, state: State, request_id: str | None) -> sqlite3.Row:
        """The session the next question belongs to: the open one, unless a rule ends it; then a new one."""
        sess = db.open_session(conn, student_id)
        if sess is not None and (why := self.end_reason(conn, sess, state)):
            self.end(conn, sess, why, state, request_id)
            sess = None
        if sess is None:
            n_answers, _ = db.counts(conn, student_id)
            if (
                self.diagnostic_items > 0
                and n_answers < self.diagnostic_items
                and not db.had_diagnostic(conn, student_id)
            ):
                db.start_session(conn, student_id, "diagnostic", None, "a short diagnostic", _jsonable(state))
            else:
                tag, why = self.recommendation(conn, student_id, state)
                db.start_session(conn, student_id, "practice", tag, why, _jsonable(state))
            sess = db.open_session(conn, student_id)
        assert sess is not None
        return sess

    def end_reason(self, conn: sqlite3.Connection, sess: sqlite3.Row, state: State) -> str | None:
        answers = db.session_answers(conn, sess)
        if sess["kind"] == "diagnostic":
            tags = {int(a["KnowledgeTag"]) for a in db.history(conn, int(sess["student_id"]), HISTORY_SENT)}
            done = len(answers) >= self.diagnostic_items or not set(self.bank.tags) - tags
            return "diagnostic" if done else None
        skill = int(sess["skill"])
        if answers and state.get(skill, {}).get("level") == "mastered":
            return "mastered"
        today = db.skill_activity(conn, int(sess["student_id"]), db.utc_now().date().isoformat())
        if answers and today.get(skill, ("", 0))[1] >= self.cap:
            return "cap"
        if len(answers) >= self.session_length:
            return "length"
        return None

    def recommendation(self, conn: sqlite3.Connection, student_id: int, state: State) -> tuple[int, str]:
        now = db.utc_now()
        activity = db.skill_activity(conn, student_id, now.date().isoformat())
        return recommend(state, activity, self.bank.tags, now, self.cap, self.review_days)

    def start(self, conn: sqlite3.Connection, student_id: int, tag: int) -> None:
        """The student chose a skill: the session in progress ends (its summary kept) and one of ``tag`` starts."""
        state = self.last_state(conn, student_id)
        sess = db.open_session(conn, student_id)
        if sess is not None and db.session_answers(conn, sess):
            self.end(conn, sess, "student", state, None)
        db.start_session(conn, student_id, "practice", tag, "your choice", _jsonable(state))

    def end(
        self, conn: sqlite3.Connection, sess: sqlite3.Row, why: str, state: State, request_id: str | None
    ) -> dict[str, Any]:
        summary = self.summary(conn, sess, why, state, request_id)
        db.end_session(conn, int(sess["id"]), why, summary)
        return summary

    def summary(
        self, conn: sqlite3.Connection, sess: sqlite3.Row, why: str, state: State, request_id: str | None
    ) -> dict[str, Any]:
        """What the session changed: skills up, down and unchanged (mastery before -> after, levels), the
        predicted score on the tests of its skills (the service's /score) and what to do next."""
        start = {int(t): v for t, v in json.loads(sess["start_state"] or "{}").items()}
        answers = db.session_answers(conn, sess)
        practised = sorted({int(a["KnowledgeTag"]) for a in answers}, key=skill_order)
        moves = []
        for tag in sorted(set(start) | set(state), key=skill_order):
            before, after = start.get(tag, {}), state.get(tag, {})
            if "mastery" not in after or not int(after.get("evidence", 0)):
                continue  # a skill without answers is "not started", whatever the model's figure did
            change = float(after["mastery"]) - float(before.get("mastery", after["mastery"]))
            moves.append(
                {
                    "name": skill_label(tag),
                    "before": float(before.get("mastery", after["mastery"])),
                    "after": float(after["mastery"]),
                    "change": change,
                    "level_before": str(before.get("level", LEVELS[0])),
                    "level_after": str(after.get("level", LEVELS[0])),
                    "way": "up" if change >= MOVED else "down" if change <= -MOVED else "same",
                }
            )
        scores, scores_note = self.test_scores(conn, int(sess["student_id"]), practised, request_id)
        tag, reason = self.recommendation(conn, int(sess["student_id"]), state)
        return {
            "kind": sess["kind"],
            "skill": skill_label(int(sess["skill"])) if sess["skill"] is not None else None,
            "ended": END_REASONS.get(why, why),
            "answers": len(answers),
            "correct": sum(int(a["answerCode"]) for a in answers),
            "moves": moves,
            "scores": scores,
            "scores_note": scores_note,
            "next": {"name": skill_label(tag), "reason": reason},
        }

    def test_scores(
        self, conn: sqlite3.Connection, student_id: int, tags: list[int], request_id: str | None
    ) -> tuple[list[dict[str, Any]], str]:
        """Predicted score out of 100 on each test of the practised skills (the first test of each after a
        diagnostic: six skills times four tests would be 24 calls)."""
        history = db.history(conn, student_id, HISTORY_SENT)
        tests = [t for tag in tags for t in self.bank.tests_of.get(tag, [])[: 1 if len(tags) > 1 else None]]
        out = []
        try:
            with self.client.budget():
                for test in tests:
                    questions = [_item_body(self.bank.by_id[i]) for i in self.bank.by_test[test]]
                    score = self.client.post("/score", {"history": history, "questions": questions}, request_id)
                    out.append({"name": self.bank.test_label(test), "score": float(score["expected_score"])})
        except (InferenceUnavailable, KeyError, TypeError, ValueError):
            return out, "Predicted scores are unavailable right now."
        return out, ""

    def view(self, conn: sqlite3.Connection, sess: sqlite3.Row) -> dict[str, Any]:
        """The session as the practice page shows it."""
        answered = len(db.session_answers(conn, sess))
        if sess["kind"] == "diagnostic":
            return {"kind": "diagnostic", "answered": answered, "of": self.diagnostic_items}
        return {
            "kind": "practice",
            "skill": skill_label(int(sess["skill"])),
            "tag": int(sess["skill"]),
            "reason": sess["reason"],
            "answered": answered,
            "of": self.session_length,
        }


def _jsonable(state: State) -> dict[str, Any]:
    return {str(t): v for t, v in state.items()}


def register_routes(
    app: Flask,
    conn: Callable[[], sqlite3.Connection],
    tutor: Tutor,
    student_id: Callable[[], int | None],
    refresh: Callable[[int], None],
) -> None:
    """/session/start (choose a skill), /session/end (the button), /summary/<id>, /progress."""

    @app.post("/session/start")
    def start_session() -> Response:
        sid = student_id()
        if sid is None:
            return redirect(url_for("index"))
        try:
            tag = int(request.form.get("skill", ""))
        except ValueError:
            tag = -1
        if tag in tutor.bank.tags:
            tutor.start(conn(), sid, tag)
            refresh(sid)
        return redirect(url_for("practice"))

    @app.post("/session/end")
    def end_session() -> Response:
        sid = student_id()
        if sid is None:
            return redirect(url_for("index"))
        sess = db.open_session(conn(), sid)
        if sess is None:
            return redirect(url_for("practice"))
        tutor.end(conn(), sess, "student", tutor.last_state(conn(), sid), None)
        return redirect(url_for("summary", session_id=int(sess["id"])))

    @app.get("/summary/<int:session_id>")
    def summary(session_id: int) -> str | Response:
        sid = student_id()
        if sid is None:
            return redirect(url_for("index"))
        sess = db.session(conn(), sid, session_id)
        if sess is None or not sess["summary"]:
            return redirect(url_for("practice"))
        return render_template("summary.html", summary=json.loads(sess["summary"]))
