"""The teacher pages: a teacher's classes, what each student knows, who needs help, which questions go wrong.

    /teach                                  the teacher's classes
    /teach/class/<id>                       students x skills grid of mastery levels (sortable)
    /teach/class/<id>/student/<student>     one student's mastery over time (server-side SVG)
    /teach/class/<id>/at-risk               students the at-risk rules flag, with the reason
    /teach/class/<id>/items                 item report: first-try % correct, predicted vs observed, wrong answers
    /teach/class/<id>/time                  time on task per student
    each of them + ``.csv``                 the same view as a CSV download

Access: a signed-in teacher account sees only the classes it owns. Signed out: sent to the sign-in page; signed in
with another role: 403; a class that is not the teacher's (or does not exist), or a student not in it: 404, so a
teacher cannot even learn which class numbers exist.

Mastery comes from the service's ``/knowledge_state`` for each student's history, with the level and evidence
per skill of ``dkt/mastery.py``; a class's students are asked concurrently (the service's adaptive batcher merges
concurrent requests into one model call), and the first failure stops the rest: the page then says the service
did not answer and shows the levels the answers alone support (``dkt.mastery.level`` with no model figure). The
item report and time on task read the client database only. Rules and CSV columns: docs/teacher.md.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import statistics
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response

from client import accounts, db, plots
from client.inference import InferenceClient, InferenceUnavailable
from dkt import mastery
from dkt.itembank import skill_name

bp = Blueprint("teacher", __name__, url_prefix="/teach")

HISTORY_SENT = 500  # answers sent per student (as the student page: the service keeps its last max_seq_len)
PARALLEL = 4  # concurrent /knowledge_state calls per page: enough for the service to batch, few enough to share
PAGE_DEADLINE_FACTOR = 3  # a page waits at most this many DKT_INFERENCE_DEADLINE_S for all of its calls
DRILL_POINTS = 12  # the drill-down plot asks the service about at most this many points of the history
MAX_COUNTED_S = 600.0  # time on task: a question open longer than 10 minutes counts as 10 (the student was away)
WRONG_SHOWN = 3  # the item report lists this many of the most common wrong answers
SERVICE_DOWN = (
    "Mastery is unavailable right now: the prediction service did not answer. Levels below use the answers alone."
)


# -- access ---------------------------------------------------------------------------------------------------
def _conn() -> sqlite3.Connection:
    return db.connect(str(current_app.config["DKT_CLIENT_DB"]))


def _teacher(conn: sqlite3.Connection) -> accounts.Account:
    """The signed-in teacher; else a redirect to sign in (nobody signed in) or 403 (another role)."""
    aid = session.get("account_id")
    account = accounts.get(conn, int(aid)) if aid is not None else None
    if account is None:
        abort(redirect(url_for("index")))
    if account.role != "teacher":
        abort(403)
    return account


def owned_class(conn: sqlite3.Connection, teacher: accounts.Account, class_id: int) -> sqlite3.Row:
    """The class if ``teacher`` owns it; 404 otherwise (whether it exists is none of another teacher's business)."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT id, name, code FROM classes WHERE id = ? AND teacher_id = ?", (class_id, teacher.id)
    ).fetchone()
    if row is None:
        abort(404)
    return row


@dataclass(frozen=True)
class Member:
    student_id: int
    name: str


def members(conn: sqlite3.Connection, class_id: int) -> list[Member]:
    """The class's students by name: the account's username, or the nickname of a record not yet claimed."""
    rows = conn.execute(
        "SELECT s.id, COALESCE(a.username, s.nickname) AS name FROM class_members m JOIN students s ON s.id ="
        " m.student_id LEFT JOIN accounts a ON a.student_id = s.id WHERE m.class_id = ? ORDER BY name COLLATE NOCASE",
        (class_id,),
    )
    return [Member(int(r["id"]), str(r["name"])) for r in rows]


# -- mastery from the service ---------------------------------------------------------------------------------
@dataclass
class Skill:
    tag: int
    name: str
    mastery: float | None  # the model's P(correct) on the skill now; None: the service did not answer
    level: str
    evidence: int


@dataclass
class StudentState:
    member: Member
    answers: int
    skills: dict[int, Skill]
    score: float | None = None  # predicted score out of 100: mean mastery over all skills
    score_before: float | None = None  # the same before the last DKT_AT_RISK_WINDOW answers

    def level_rank(self, tag: int) -> tuple[int, float]:
        s = self.skills[tag]
        return mastery.LEVELS.index(s.level), s.mastery if s.mastery is not None else -1.0


@dataclass
class ClassState:
    students: list[StudentState]
    tags: list[int]
    message: str | None = None  # why mastery is missing (the service did not answer)
    notes: list[str] = field(default_factory=list)


def _skills(tags: Sequence[int], history: list[dict[str, Any]], state: dict[str, Any] | None) -> dict[int, Skill]:
    """Per skill: the service's mastery, level and evidence; without ``state`` the level the answers alone give."""
    given = {int(s["KnowledgeTag"]): s for s in (state or {}).get("skills", [])}
    evidence = mastery.skill_evidence(history)
    out = {}
    for tag in tags:
        n, recent = evidence.get(tag, (0, []))
        s = given.get(tag)
        p = mastery.shown_mastery(s) if s is not None else None  # as on the student's page (docs/mastery.md)
        # The service's level when it sent one (the same dkt/mastery.py rules); else computed here from its figure.
        lvl = str(s["level"]) if s is not None and s.get("level") in mastery.LEVELS else mastery.level(p, n, recent)
        out[tag] = Skill(tag, skill_name(tag), p, lvl, int(s.get("evidence", n)) if s is not None else n)
    return out


def _score(state: dict[str, Any]) -> float | None:
    values = [float(s["mastery"]) for s in state.get("skills", [])]
    return 100.0 * sum(values) / len(values) if values else None


def ask_all(
    client: InferenceClient, histories: Sequence[list[dict[str, Any]]], page_deadline_s: float
) -> tuple[list[dict[str, Any] | None], str | None]:
    """``/knowledge_state`` for each history, ``PARALLEL`` at a time; the first failure cancels the rest.

    Returns one answer per history (None where it was not asked or failed) and why, when anything failed."""
    answers: list[dict[str, Any] | None] = [None] * len(histories)
    failed: list[str] = []
    stop = threading.Event()

    def one(i: int) -> None:
        if stop.is_set():
            return
        try:
            answers[i] = client.post("/knowledge_state", {"history": histories[i]})
        except InferenceUnavailable as e:
            failed.append(str(e))
            stop.set()  # a stopped service: no point making every student wait for their own timeout

    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="teacher-state")
    try:
        futures = [pool.submit(one, i) for i in range(len(histories))]
        _, pending = wait(futures, timeout=page_deadline_s)
        if pending:
            stop.set()
            failed.append(f"no answer for {len(pending)} students within {page_deadline_s:g} s")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return answers, (failed[0] if failed else None)


def class_state(
    conn: sqlite3.Connection,
    client: InferenceClient | None,
    people: Sequence[Member],
    tags: Sequence[int],
    window: int,
    page_deadline_s: float,
) -> ClassState:
    """Every student's skills now and their predicted score now and ``window`` answers ago.

    Students without answers are not asked: every skill is "not started" whatever the model would say. ``client``
    None: answers alone (no service call)."""
    histories = {m.student_id: db.history(conn, m.student_id, HISTORY_SENT) for m in people}
    asked = [m for m in people if histories[m.student_id]]
    requests_: list[list[dict[str, Any]]] = []
    for m in asked:
        h = histories[m.student_id]
        requests_.append(h)
        requests_.append(h[:-window])  # before the last `window` answers (empty: the population's start)
    answers: list[dict[str, Any] | None] = [None] * len(requests_)
    message = None
    if client is not None and requests_:
        answers, why = ask_all(client, requests_, page_deadline_s)
        if why is not None:
            message = SERVICE_DOWN
            current_app.logger.warning("teacher page: /knowledge_state unavailable: %s", why)
    by_student = {m.student_id: (answers[2 * i], answers[2 * i + 1]) for i, m in enumerate(asked)}
    students = []
    for m in people:
        now, before = by_student.get(m.student_id, (None, None))
        h = histories[m.student_id]
        st = StudentState(m, len(h), _skills(tags, h, now))
        if now is not None and before is not None:
            st.score, st.score_before = _score(now), _score(before)
        students.append(st)
    return ClassState(students, list(tags), message)


# -- sorting --------------------------------------------------------------------------------------------------
def sort_students(state: ClassState, key: str, descending: bool) -> list[StudentState]:
    """``key``: ``name``, ``answers``, ``score`` or a skill's tag (by level, then mastery). Ties: by name."""
    by_name = sorted(state.students, key=lambda s: s.member.name.casefold())
    if key == "answers":
        return sorted(by_name, key=lambda s: s.answers, reverse=descending)
    if key == "score":
        missing = -1.0  # no score (no answers, or the service down) sorts as the lowest
        return sorted(by_name, key=lambda s: s.score if s.score is not None else missing, reverse=descending)
    if key.isdigit() and int(key) in state.tags:
        return sorted(by_name, key=lambda s: s.level_rank(int(key)), reverse=descending)
    return list(reversed(by_name)) if descending else by_name


# -- at risk --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rules:
    attempts: int
    score_drop: float
    window: int
    inactive_days: float


def rules_from(cfg: Any) -> Rules:
    return Rules(
        int(cfg["DKT_AT_RISK_ATTEMPTS"]),
        float(cfg["DKT_AT_RISK_SCORE_DROP"]),
        int(cfg["DKT_AT_RISK_WINDOW"]),
        float(cfg["DKT_AT_RISK_INACTIVE_DAYS"]),
    )


def last_answers(conn: sqlite3.Connection, class_id: int) -> dict[int, datetime]:
    """student -> when their last answer arrived (its Timestamp for rows from before answered_at)."""
    rows = conn.execute(
        "SELECT i.student_id, MAX(COALESCE(i.answered_at, i.Timestamp)) FROM interactions i JOIN class_members m"
        " ON m.student_id = i.student_id WHERE m.class_id = ? GROUP BY i.student_id",
        (class_id,),
    )
    return {int(r[0]): datetime.fromisoformat(r[1]) for r in rows}


def at_risk(state: ClassState, last: dict[int, datetime], now: datetime, rules: Rules) -> list[tuple[Member, str]]:
    """(student, reason in words) for each rule a student meets; a student may appear once per reason."""
    proficient = mastery.LEVELS.index("proficient")
    flagged = []
    for st in state.students:
        m = st.member
        when = last.get(m.student_id)
        if when is None:
            flagged.append((m, "has not answered any question yet"))
        elif now - when > timedelta(days=rules.inactive_days):
            flagged.append((m, f"inactive for {(now - when).days} days (last answer {when:%Y-%m-%d})"))
        for s in st.skills.values():
            # Levels need the model's figure: without the service no skill can pass "practising", so no flag.
            if s.evidence >= rules.attempts and s.mastery is not None and mastery.LEVELS.index(s.level) < proficient:
                flagged.append((m, f"{s.evidence} answers in {s.name} and still {s.level}"))
        if st.score is not None and st.score_before is not None and st.score_before - st.score >= rules.score_drop:
            flagged.append(
                (
                    m,
                    f"predicted score fell from {st.score_before:.0f} to {st.score:.0f} over the last"
                    f" {min(rules.window, st.answers)} answers",
                )
            )
    return flagged


# -- item report ----------------------------------------------------------------------------------------------
@dataclass
class ItemRow:
    question: str
    skill: str
    answers: int
    students: int
    first_try_pct: float
    observed_pct: float
    predicted_pct: float | None  # mean logged P(correct) of the answers that had a prediction
    predicted_observed_pct: float | None  # observed rate of those same answers (what the prediction is compared to)
    predicted_answers: int
    wrong: list[tuple[str, int]]


def item_report(conn: sqlite3.Connection, class_id: int, bank: Any) -> list[ItemRow]:
    """Per item the class answered: the hardest first (lowest first-try % correct)."""
    rows = conn.execute(
        "SELECT i.id, i.student_id, i.assessmentItemID, i.answerCode, i.given, i.KnowledgeTag, p.probability"
        " FROM interactions i JOIN class_members m ON m.student_id = i.student_id AND m.class_id = ?"
        " LEFT JOIN predictions p ON p.interaction_id = i.id AND p.role = 'production' ORDER BY i.id",
        (class_id,),
    ).fetchall()
    by_item: dict[str, list[sqlite3.Row]] = {}
    for r in rows:
        by_item.setdefault(str(r["assessmentItemID"]), []).append(r)
    report = []
    for item, answers in by_item.items():
        first: dict[int, int] = {}
        for r in answers:  # id order: the first row per student is their first try
            first.setdefault(int(r["student_id"]), int(r["answerCode"]))
        predicted = [r for r in answers if r["probability"] is not None]
        wrong = Counter(str(r["given"]) for r in answers if not r["answerCode"])
        q = bank.item(item)
        report.append(
            ItemRow(
                question=str(q["question"]) if q is not None else "(a question no longer in the bank)",
                skill=skill_name(int(answers[0]["KnowledgeTag"])),
                answers=len(answers),
                students=len(first),
                first_try_pct=100.0 * sum(first.values()) / len(first),
                observed_pct=100.0 * sum(int(r["answerCode"]) for r in answers) / len(answers),
                predicted_pct=_pct(float(r["probability"]) for r in predicted),
                predicted_observed_pct=_pct(float(r["answerCode"]) for r in predicted),
                predicted_answers=len(predicted),
                wrong=wrong.most_common(WRONG_SHOWN),
            )
        )
    return sorted(report, key=lambda r: (r.first_try_pct, r.skill, r.question))


def _pct(values: Iterable[float]) -> float | None:
    v = list(values)
    return 100.0 * sum(v) / len(v) if v else None


# -- time on task ---------------------------------------------------------------------------------------------
@dataclass
class TimeRow:
    member: Member
    answers: int
    minutes: float
    median_s: float | None
    days_active: int
    last_answer: datetime | None


def time_on_task(conn: sqlite3.Connection, class_id: int, people: Sequence[Member]) -> list[TimeRow]:
    """Per student: answered_at - shown_at summed (each capped at ``MAX_COUNTED_S``), most time first.

    Answers from before answered_at was recorded have no duration: they count as answers, not as time."""
    rows = conn.execute(
        "SELECT i.student_id, i.shown_at, i.answered_at, i.Timestamp FROM interactions i JOIN class_members m"
        " ON m.student_id = i.student_id WHERE m.class_id = ? ORDER BY i.id",
        (class_id,),
    ).fetchall()
    per: dict[int, list[sqlite3.Row]] = {}
    for r in rows:
        per.setdefault(int(r["student_id"]), []).append(r)
    out = []
    for m in people:
        mine = per.get(m.student_id, [])
        spans = [_seconds(r["shown_at"], r["answered_at"]) for r in mine if r["answered_at"] and r["shown_at"]]
        days = {str(r["answered_at"] or r["Timestamp"])[:10] for r in mine}
        last = max((datetime.fromisoformat(r["answered_at"] or r["Timestamp"]) for r in mine), default=None)
        out.append(
            TimeRow(m, len(mine), sum(spans) / 60.0, statistics.median(spans) if spans else None, len(days), last)
        )
    return sorted(out, key=lambda t: (-t.minutes, t.member.name.casefold()))


def _seconds(shown: str, answered: str) -> float:
    # Clipped below too: a wall clock stepped back (NTP) between render and answer gives no negative time.
    spent = (datetime.fromisoformat(answered) - datetime.fromisoformat(shown)).total_seconds()
    return min(MAX_COUNTED_S, max(0.0, spent))


# -- one student over time ------------------------------------------------------------------------------------
def mastery_over_time(
    client: InferenceClient, history: list[dict[str, Any]], tags: Sequence[int], page_deadline_s: float
) -> tuple[list[tuple[int, dict[int, Skill]]], str | None]:
    """(answers so far, skills then) at up to ``DRILL_POINTS`` evenly spaced points of the history, the last
    being now; and why, if the service did not answer (then: nothing)."""
    n = len(history)
    points = sorted({round(i * n / (DRILL_POINTS - 1)) for i in range(DRILL_POINTS)}) if n else [0]
    answers, why = ask_all(client, [history[:k] for k in points], page_deadline_s)
    if why is not None:
        return [], why
    return [(k, _skills(tags, history[:k], a)) for k, a in zip(points, answers, strict=True)], None


def over_time_plots(series: list[tuple[int, dict[int, Skill]]], tags: Sequence[int]) -> list[Markup]:
    """One small chart per skill the student practised (the others have no evidence to show): mastery in % after
    each point of the history. Small multiples rather than one chart of many lines: each stays readable, and on a
    phone too."""
    practised = [t for t in tags if series and series[-1][1][t].evidence > 0]
    charts = []
    for t in practised:
        points = [(float(k), 100.0 * float(skills[t].mastery or 0.0)) for k, skills in series]
        tips = [
            f"after {k} answers: {100 * float(skills[t].mastery or 0):.0f}% ({skills[t].level})" for k, skills in series
        ]
        chart = plots.line_chart(
            [plots.Series("mastery", points, tips=tips)],
            f"{skill_name(t)}: now {series[-1][1][t].level}",
            "answers so far",
            "mastery (%)",
            x_tick=lambda v: f"{v:.0f}",
            y_range=(0.0, 100.0),
            y_fmt=lambda v: f"{v:.0f}",
            kind="mastery-over-time",
        )
        charts.append(chart)
    return charts


# -- CSV ------------------------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @ first) gets a leading ' (OWASP's CSV injection
    advice); numbers, and answers that are numbers (``-3``), stay as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def csv_response(columns: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in filename)
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'},
    )


def _r(v: float | None, digits: int = 1) -> float | str:
    return round(v, digits) if v is not None else ""


# -- pages ----------------------------------------------------------------------------------------------------
def _client() -> InferenceClient:
    return current_app.extensions["dkt"]["client"]  # type: ignore[no-any-return]


def _tags() -> list[int]:
    return sorted(int(t) for t in current_app.extensions["dkt"]["bank"].df["KnowledgeTag"].unique())


def _page_deadline() -> float:
    return PAGE_DEADLINE_FACTOR * float(current_app.config["DKT_INFERENCE_DEADLINE_S"])


def _view(conn: sqlite3.Connection, class_id: int) -> tuple[accounts.Account, sqlite3.Row, list[Member]]:
    teacher = _teacher(conn)
    klass = owned_class(conn, teacher, class_id)
    return teacher, klass, members(conn, class_id)


def _render_or_csv(
    template: str, csv_rows: Callable[[], tuple[list[str], list[list[Any]]]], fmt: str, name: str, **context: Any
) -> str | Response:
    if fmt == "csv":
        columns, rows = csv_rows()
        return csv_response(columns, rows, name)
    return render_template(template, **context)


def page_and_csv(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Route ``path`` to the view as a page (endpoint: the function's name) and ``path.csv`` to the same view as
    a CSV download (endpoint: the name + ``_csv``): two endpoints, so ``url_for`` never picks one for the other."""

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        def page(**kw: Any) -> Any:
            return view(fmt="html", **kw)

        def as_csv(**kw: Any) -> Any:
            return view(fmt="csv", **kw)

        bp.add_url_rule(path, view.__name__, page, methods=["GET"])
        bp.add_url_rule(path + ".csv", view.__name__ + "_csv", as_csv, methods=["GET"])
        return view

    return register


@bp.get("")
def home() -> str:
    with closing(_conn()) as conn:
        teacher = _teacher(conn)
        return render_template("teacher_home.html", account=teacher, classes=accounts.classes_of(conn, teacher))


@page_and_csv("/class/<int:class_id>")
def grid(class_id: int, fmt: str) -> str | Response:
    with closing(_conn()) as conn:
        teacher, klass, people = _view(conn, class_id)
        rules = rules_from(current_app.config)
        state = class_state(conn, _client(), people, _tags(), rules.window, _page_deadline())
    key = request.args.get("sort", "name")
    descending = request.args.get("order") == "desc"
    ordered = sort_students(state, key, descending)

    def rows() -> tuple[list[str], list[list[Any]]]:
        columns = ["student", "skill", "level", "mastery_pct", "answers_in_skill", "predicted_score"]
        return columns, [
            [
                st.member.name,
                s.name,
                s.level,
                _r(100 * s.mastery if s.mastery is not None else None),
                s.evidence,
                _r(st.score),
            ]
            for st in ordered
            for s in (st.skills[t] for t in state.tags)
        ]

    return _render_or_csv(
        "teacher_grid.html",
        rows,
        fmt,
        f"{klass['name']}-grid",
        account=teacher,
        klass=klass,
        state=state,
        students=ordered,
        sort=key,
        descending=descending,
        levels=mastery.LEVELS,
        view="grid",
    )


@page_and_csv("/class/<int:class_id>/at-risk")
def risk(class_id: int, fmt: str) -> str | Response:
    with closing(_conn()) as conn:
        teacher, klass, people = _view(conn, class_id)
        rules = rules_from(current_app.config)
        state = class_state(conn, _client(), people, _tags(), rules.window, _page_deadline())
        flagged = at_risk(state, last_answers(conn, class_id), db.utc_now(), rules)

    def rows() -> tuple[list[str], list[list[Any]]]:
        return ["student", "reason"], [[m.name, why] for m, why in flagged]

    return _render_or_csv(
        "teacher_risk.html",
        rows,
        fmt,
        f"{klass['name']}-at-risk",
        account=teacher,
        klass=klass,
        state=state,
        flagged=flagged,
        rules=rules,
        view="at-risk",
    )


@page_and_csv("/class/<int:class_id>/items")
def items(class_id: int, fmt: str) -> str | Response:
    with closing(_conn()) as conn:
        teacher, klass, _ = _view(conn, class_id)
        report = item_report(conn, class_id, current_app.extensions["dkt"]["bank"])

    def rows() -> tuple[list[str], list[list[Any]]]:
        columns = [
            "question",
            "skill",
            "answers",
            "students",
            "first_try_correct_pct",
            "observed_correct_pct",
            "predicted_correct_pct",
            "observed_correct_pct_of_predicted",
            "answers_with_prediction",
            "common_wrong_answers",
        ]
        return columns, [
            [
                r.question,
                r.skill,
                r.answers,
                r.students,
                _r(r.first_try_pct),
                _r(r.observed_pct),
                _r(r.predicted_pct),
                _r(r.predicted_observed_pct),
                r.predicted_answers,
                "; ".join(f"{g} ({n})" for g, n in r.wrong),
            ]
            for r in report
        ]

    return _render_or_csv(
        "teacher_items.html",
        rows,
        fmt,
        f"{klass['name']}-items",
        account=teacher,
        klass=klass,
        report=report,
        view="items",
    )


@page_and_csv("/class/<int:class_id>/time")
def time_view(class_id: int, fmt: str) -> str | Response:
    with closing(_conn()) as conn:
        teacher, klass, people = _view(conn, class_id)
        table = time_on_task(conn, class_id, people)

    def rows() -> tuple[list[str], list[list[Any]]]:
        columns = ["student", "answers", "minutes_on_task", "median_seconds_per_answer", "days_active", "last_answer"]
        return columns, [
            [
                t.member.name,
                t.answers,
                _r(t.minutes),
                _r(t.median_s),
                t.days_active,
                f"{t.last_answer:%Y-%m-%d %H:%M}" if t.last_answer else "",
            ]
            for t in table
        ]

    return _render_or_csv(
        "teacher_time.html",
        rows,
        fmt,
        f"{klass['name']}-time",
        account=teacher,
        klass=klass,
        table=table,
        view="time",
        cap_min=MAX_COUNTED_S / 60,
    )


@page_and_csv("/class/<int:class_id>/student/<int:student_id>")
def student(class_id: int, student_id: int, fmt: str) -> str | Response:
    with closing(_conn()) as conn:
        teacher, klass, people = _view(conn, class_id)
        member = next((m for m in people if m.student_id == student_id), None)
        if member is None:
            abort(404)
        history = db.history(conn, student_id, HISTORY_SENT)
    tags = _tags()
    series, why = mastery_over_time(_client(), history, tags, _page_deadline())
    if why is not None:
        current_app.logger.warning("teacher page: /knowledge_state unavailable: %s", why)
    now = series[-1][1] if series else _skills(tags, history, None)
    charts = over_time_plots(series, tags)

    def rows() -> tuple[list[str], list[list[Any]]]:
        return ["answers_so_far", "skill", "level", "mastery_pct"], [
            [k, s.name, s.level, _r(100 * s.mastery if s.mastery is not None else None)]
            for k, skills in series
            for s in skills.values()
            if now[s.tag].evidence > 0
        ]

    return _render_or_csv(
        "teacher_student.html",
        rows,
        fmt,
        f"{member.name}-over-time",
        account=teacher,
        klass=klass,
        member=member,
        skills=[now[t] for t in tags],
        charts=charts,
        message=SERVICE_DOWN if why else None,
        answers=len(history),
        view="student",
    )
