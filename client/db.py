"""The client's SQLite database: students and their answers, each answer committed before the page answers.

``interactions.id`` is an AUTOINCREMENT key: ids only grow and are never reused,
and SQLite serialises writers, so an answer with a larger id is always committed
after one with a smaller id. That id is the export watermark.

Time (docs/time-semantics.md): each answer keeps when its question was first
rendered to the student (``shown_at``) and when the answer arrived
(``answered_at``), both server side, naive UTC with microseconds. ``Timestamp``
is ``shown_at`` in whole seconds, so what a model sees at an item never includes
the time spent answering it.

Schema changes are numbered migrations (``MIGRATIONS``): ``init`` applies each one a database has not
seen yet, in order, each in its own transaction, and records its number in ``schema_migrations``
(``PRAGMA user_version`` mirrors the highest, for tools). Start-up is serialised across processes with a
lock on the database's folder, so any number of gunicorn workers may open a fresh database at once.

Answers are stored exactly once: each showing of a question carries a one-time token
(``students.current_token``); ``record_answer`` stores an answer only while its token is the current one, in
the transaction that consumes it, and ``interactions.answer_token`` is UNIQUE besides. A second submit of the
same form (two tabs, the back button, a retry) stores nothing and finds the recorded answer instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from dkt.data.schema import COLUMNS

SCHEMA = """
CREATE TABLE IF NOT EXISTS students (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nickname TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    current_item TEXT,
    insights TEXT
);
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    student_id INTEGER NOT NULL REFERENCES students(id),
    userID TEXT NOT NULL,
    assessmentItemID TEXT NOT NULL,
    testId TEXT NOT NULL,
    answerCode INTEGER NOT NULL CHECK (answerCode IN (0, 1)),
    Timestamp TEXT NOT NULL,
    KnowledgeTag INTEGER NOT NULL,
    given TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_student ON interactions(student_id, id);
"""


def _create_base_tables(conn: sqlite3.Connection) -> None:
    """Migration 1: ``SCHEMA`` as first shipped (IF NOT EXISTS: a database from before the migrations table
    already has it)."""
    # One statement per execute: executescript would COMMIT the migration's transaction first.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _add_shown_and_answered_at(conn: sqlite3.Connection) -> None:
    """Version 2: when each question was shown and answered.

    Rows written before it keep their Timestamp (already exported rows must compare equal on
    re-export) and get shown_at = Timestamp. Their Timestamp was stamped when the answer
    arrived, so their answered_at is not known separately: it stays NULL, and so does their
    ResponseTime in the export, rather than a made-up zero.
    """
    columns = {r[1] for r in conn.execute("PRAGMA table_info(interactions)")}
    if "shown_at" not in columns:
        conn.execute("ALTER TABLE interactions ADD COLUMN shown_at TEXT")
    if "answered_at" not in columns:
        conn.execute("ALTER TABLE interactions ADD COLUMN answered_at TEXT")
    if "current_shown_at" not in {r[1] for r in conn.execute("PRAGMA table_info(students)")}:
        conn.execute("ALTER TABLE students ADD COLUMN current_shown_at TEXT")
    conn.execute("UPDATE interactions SET shown_at = Timestamp WHERE shown_at IS NULL")


ROLES = ("production", "shadow")  # production: what the student saw; shadow: scored beside it, never shown
PREDICTION_LOG_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        student_id INTEGER NOT NULL REFERENCES students(id),
        assessmentItemID TEXT NOT NULL,
        request_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('production', 'shadow')),
        model_name TEXT,
        model_version TEXT NOT NULL,
        probability REAL NOT NULL CHECK (probability >= 0 AND probability <= 1),
        predicted_at TEXT NOT NULL,
        interaction_id INTEGER REFERENCES interactions(id),
        answerCode INTEGER CHECK (answerCode IN (0, 1)),
        UNIQUE (request_id, role, model_version)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS predictions_request ON predictions(student_id, request_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS predictions_interaction ON predictions(interaction_id)
    """,
    """
    CREATE INDEX IF NOT EXISTS predictions_role ON predictions(role, id)
    """,
    """
    CREATE TABLE IF NOT EXISTS model_versions (
        model_version TEXT PRIMARY KEY,
        model_name TEXT,
        test_auc REAL,
        metadata TEXT,
        first_seen_at TEXT NOT NULL
    )
    """,
)


def _add_prediction_log(conn: sqlite3.Connection) -> None:
    """Version 3: the prediction log, joined with answers as they arrive; the test AUC of each served model.

    One row per prediction the page acted on: the model's P(correct) for the question it chose, from the
    service call identified by ``request_id``. ``role`` is ``production`` (what the student saw); a shadow
    model's prediction for the same question and request sits beside it with role ``shadow``. When the
    answer arrives, the rows of the student's current request get its ``interaction_id`` and ``answerCode``
    in the answer's own transaction. A question shown while the service was down has no row.
    """
    # One statement per execute: executescript would COMMIT the migration's transaction first.
    for statement in PREDICTION_LOG_SCHEMA:
        conn.execute(statement)
    if "current_request_id" not in {r[1] for r in conn.execute("PRAGMA table_info(students)")}:
        conn.execute("ALTER TABLE students ADD COLUMN current_request_id TEXT")


def _add_answer_tokens(conn: sqlite3.Connection) -> None:
    """Migration 4: answers exactly once. ``students.current_token`` is the one-time token of the question on
    show; an answer stores it in ``interactions.answer_token`` (UNIQUE: one row per token, whatever the
    application does). Rows from before have none (NULL; SQLite's UNIQUE allows many NULLs)."""
    if "current_token" not in {r[1] for r in conn.execute("PRAGMA table_info(students)")}:
        conn.execute("ALTER TABLE students ADD COLUMN current_token TEXT")
    if "answer_token" not in {r[1] for r in conn.execute("PRAGMA table_info(interactions)")}:
        conn.execute("ALTER TABLE interactions ADD COLUMN answer_token TEXT")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS interactions_answer_token ON interactions(answer_token)")
    # A question on show now gets its token, so a form rendered before the upgrade is answered once too.
    conn.execute("UPDATE students SET current_token = lower(hex(randomblob(16))) WHERE current_item IS NOT NULL")


ACCOUNTS_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        skeleton TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('student', 'teacher', 'operator')),
        student_id INTEGER UNIQUE REFERENCES students(id),
        created_at TEXT NOT NULL,
        last_login_at TEXT,
        CHECK ((role = 'student') = (student_id IS NOT NULL))
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS classes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        code TEXT NOT NULL UNIQUE,
        teacher_id INTEGER NOT NULL REFERENCES accounts(id),
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS class_members (
        class_id INTEGER NOT NULL REFERENCES classes(id),
        student_id INTEGER NOT NULL REFERENCES students(id),
        joined_at TEXT NOT NULL,
        PRIMARY KEY (class_id, student_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS login_failures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL CHECK (scope IN ('account', 'address')),
        subject TEXT NOT NULL,
        at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS login_failures_subject ON login_failures(scope, subject, at)",
    """
    CREATE TABLE IF NOT EXISTS claim_codes (
        student_id INTEGER PRIMARY KEY REFERENCES students(id),
        code_hash TEXT NOT NULL UNIQUE,
        expires_at TEXT NOT NULL
    )
    """,
)


def _add_accounts(conn: sqlite3.Connection) -> None:
    """Migration 5: accounts (client/accounts.py, docs/accounts.md). A student account points at its
    ``students`` row, which keeps the answers; teachers own ``classes``, students join them. Failed sign-ins
    are rows, so every worker counts the same. Nickname records from before have no account until claimed
    with a one-time code (``claim_codes``, a digest of it)."""
    for statement in ACCOUNTS_SCHEMA:
        conn.execute(statement)


def _add_explored(conn: sqlite3.Connection) -> None:
    """Migration 6: ``predictions.explored``, 1 when the question was drawn at random from the candidate pool
    (DKT_EXPLORE_RATE) rather than chosen by the production model's probability; both roles of a request carry
    it. Rows from before are 0: every question then was chosen by target difficulty."""
    if "explored" not in {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}:
        conn.execute("ALTER TABLE predictions ADD COLUMN explored INTEGER NOT NULL DEFAULT 0")


def _add_session_generation(conn: sqlite3.Connection) -> None:
    """Migration 11 (7-10 are reserved for work in progress elsewhere): ``accounts.session_generation``, bumped by a
    password reset; a signed session carries the generation it was made under and is ended when it differs
    (client/accounts.py), since a signed cookie cannot be revoked by itself. Existing accounts start at 0, the
    generation a session from before this step is read as: they stay signed in until a reset."""
    if "session_generation" not in {r[1] for r in conn.execute("PRAGMA table_info(accounts)")}:
        conn.execute("ALTER TABLE accounts ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0")


SESSIONS_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS practice_sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        student_id INTEGER NOT NULL REFERENCES students(id),
        kind TEXT NOT NULL CHECK (kind IN ('diagnostic', 'practice')),
        skill INTEGER,
        reason TEXT NOT NULL,
        started_at TEXT NOT NULL,
        after_interaction INTEGER NOT NULL,
        start_state TEXT,
        ended_at TEXT,
        end_interaction INTEGER,
        end_reason TEXT,
        summary TEXT,
        CHECK ((kind = 'practice') = (skill IS NOT NULL))
    )
    """,
    "CREATE INDEX IF NOT EXISTS practice_sessions_student ON practice_sessions(student_id, id)",
)


def _add_practice_sessions(conn: sqlite3.Connection) -> None:
    """Migration 7: practice sessions (client/practice.py, docs/student.md). A session is a diagnostic (skills
    across the bank) or the practice of one ``skill`` (a KnowledgeTag); its answers are the student's
    interactions with ids in (``after_interaction``, ``end_interaction``]. ``start_state`` is the knowledge
    state when it began (JSON), ``summary`` what its end showed (JSON), so a summary reads the same later."""
    for statement in SESSIONS_SCHEMA:
        conn.execute(statement)


def _add_mastery_log(conn: sqlite3.Connection) -> None:
    """Migration 8: the knowledge state after each answer (JSON: KnowledgeTag -> mastery, level, evidence), as
    the service computed it then: the progress page plots it without asking the model about the past again
    (and a later model does not rewrite what the student saw). An answer given while the service was down
    gets its row at the next page that reaches the service, for the latest answer only."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS mastery_log (interaction_id INTEGER PRIMARY KEY REFERENCES interactions(id),"
        " student_id INTEGER NOT NULL REFERENCES students(id), logged_at TEXT NOT NULL, model_version TEXT,"
        " state TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS mastery_log_student ON mastery_log(student_id, interaction_id)")


# (number, migration): applied in order, each once, in its own transaction (``init``). Never edit or renumber
# a released step: append a new function with the next number. Steps 1-3 predate the migrations table; a
# database from then is adopted by its ``PRAGMA user_version`` (see ``_adopt_user_version``).
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _create_base_tables),
    (2, _add_shown_and_answered_at),
    (3, _add_prediction_log),
    (4, _add_answer_tokens),
    (5, _add_accounts),
    (6, _add_explored),
    (7, _add_practice_sessions),
    (8, _add_mastery_log),
    (11, _add_session_generation),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (number INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)
LOCK_WAIT_S = 60.0  # how long a starting worker waits for another one's start-up (a migration of a large database)


@contextlib.contextmanager
def _startup_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """An exclusive flock on the database's folder: one process at a time switches to WAL and migrates.

    The folder, not the database file: closing any descriptor of the database file would drop SQLite's own
    POSIX locks held by other connections of this process. A flock goes with its process if it is killed."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"{path}: another process held the start-up lock for {wait_s:.0f}s"
                    raise sqlite3.OperationalError(msg) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the flock


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)  # autocommit; explicit transactions below
    conn.row_factory = sqlite3.Row
    # readers never block the writer (several gunicorn workers). WAL is persistent: switched once, under the
    # start-up lock, since switching needs an exclusive lock that SQLite reports as `database is locked`
    # without waiting when another connection switches at the same moment.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        with _startup_lock(path):
            conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # an answered page means the answer is on disk
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def applied_migrations(conn: sqlite3.Connection) -> list[int]:
    conn.execute(MIGRATIONS_TABLE)
    return [int(r[0]) for r in conn.execute("SELECT number FROM schema_migrations ORDER BY number")]


def _adopt_user_version(conn: sqlite3.Connection) -> None:
    """A database from before the migrations table: its ``user_version`` is the last step it has (1 when the
    base tables exist at version 0 is left to step 1 itself, which is IF NOT EXISTS)."""
    if conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchone() is None:
        conn.executemany(
            "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, 'before the migrations table', ?)",
            [(n, utc_now().isoformat(sep=" ")) for n, _ in MIGRATIONS if n <= schema_version(conn)],
        )


def init(conn: sqlite3.Connection) -> None:
    """Bring the database to ``SCHEMA_VERSION``: safe to run any number of times, from any number of processes.

    Each missing migration runs in its own BEGIN IMMEDIATE transaction with its number recorded in it (DDL is
    transactional in SQLite: a crash mid-step leaves the previous step's schema), under the start-up lock, so
    workers starting together wait for the first one and then find nothing to do."""
    path = Path(conn.execute("PRAGMA database_list").fetchone()["file"])
    with _startup_lock(path):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(MIGRATIONS_TABLE)
            _adopt_user_version(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for number, migrate in MIGRATIONS:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM schema_migrations WHERE number = ?", (number,)).fetchone() is None:
                    migrate(conn)
                    conn.execute(
                        "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
                        (number, migrate.__name__.lstrip("_"), utc_now().isoformat(sep=" ")),
                    )
                    conn.execute(f"PRAGMA user_version = {max(int(number), schema_version(conn))}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise


TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # the canonical Timestamp column, naive UTC


def utc_now() -> datetime:
    """Naive UTC with microseconds: shown_at and answered_at keep sub-second precision for ResponseTime."""
    return datetime.now(UTC).replace(tzinfo=None)


def now() -> str:
    return utc_now().strftime(TIMESTAMP_FORMAT)


def user_id(student_id: int) -> str:
    return f"web-{student_id:06d}"


def get_or_create_student(conn: sqlite3.Connection, nickname: str) -> int:
    conn.execute("INSERT OR IGNORE INTO students (nickname, created_at) VALUES (?, ?)", (nickname, now()))
    row = conn.execute("SELECT id FROM students WHERE nickname = ?", (nickname,)).fetchone()
    return int(row["id"])


def student(conn: sqlite3.Connection, student_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM students WHERE id = ?", (student_id,)).fetchone()
    return row


def set_current(
    conn: sqlite3.Connection,
    student_id: int,
    item: str | None,
    insights: dict[str, Any] | None,
    request_id: str | None = None,
    predictions: list[dict[str, Any]] | None = None,
) -> None:
    """The question to show next. A different question is not shown yet (shown_at cleared); the same one keeps it.

    ``predictions`` (each: role, model_name, model_version, probability, explored) are what the service call
    ``request_id`` predicted for ``item``; they are logged in the same transaction, and the student's
    answer to ``item`` is joined to them (``record_answer``). Without them the question has no prediction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        predicted_at = utc_now().isoformat(sep=" ")
        for p in predictions or []:
            conn.execute(
                "INSERT INTO predictions (student_id, assessmentItemID, request_id, role, model_name, model_version,"
                " probability, predicted_at, explored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    student_id,
                    item,
                    request_id,
                    p.get("role", "production"),
                    p.get("model_name"),
                    p["model_version"],
                    float(p["probability"]),
                    predicted_at,
                    int(bool(p.get("explored"))),
                ),
            )
        # SQLite evaluates every SET expression on the row as it was: ``current_item IS ?`` compares the old item.
        # The same question on show keeps its stamp and its one-time token (a form open in another tab stays
        # valid); a different one is a new showing with a new token.
        conn.execute(
            "UPDATE students SET current_item = ?, insights = ?, current_request_id = ?,"
            " current_shown_at = CASE WHEN current_item IS ? THEN current_shown_at ELSE NULL END,"
            " current_token = CASE WHEN current_item IS ? AND current_token IS NOT NULL THEN current_token"
            " ELSE ? END WHERE id = ?",
            (
                item,
                json.dumps(insights) if insights is not None else None,
                request_id if predictions else None,
                item,
                item,
                new_token() if item is not None else None,
                student_id,
            ),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def mark_shown(conn: sqlite3.Connection, student_id: int, item: str, at: datetime | None = None) -> datetime | None:
    """Stamp the current question as shown, once: rendering the same question again keeps the first stamp.

    Returns the stored shown-at time, or None when ``item`` is no longer the student's current question
    (another tab answered it meanwhile). One conditional UPDATE, so two workers rendering at once agree.
    """
    conn.execute(
        "UPDATE students SET current_shown_at = ? WHERE id = ? AND current_item = ? AND current_shown_at IS NULL",
        ((at or utc_now()).isoformat(sep=" "), student_id, item),
    )
    row = conn.execute(
        "SELECT current_shown_at FROM students WHERE id = ? AND current_item = ?", (student_id, item)
    ).fetchone()
    return datetime.fromisoformat(row[0]) if row is not None and row[0] else None


def _last_timestamp(conn: sqlite3.Connection, student_id: int) -> datetime | None:
    last = conn.execute(
        "SELECT Timestamp FROM interactions WHERE student_id = ? ORDER BY id DESC LIMIT 1", (student_id,)
    ).fetchone()
    return datetime.fromisoformat(last[0]) if last is not None else None


def _stamp(shown_at: datetime, last: datetime | None) -> datetime:
    """The Timestamp for an item shown at ``shown_at``: whole seconds, strictly after the student's last one."""
    stamp = shown_at.replace(microsecond=0)
    return stamp if last is None else max(stamp, last + timedelta(seconds=1))


def next_timestamp(conn: sqlite3.Connection, student_id: int, shown_at: datetime | None = None) -> str:
    """The Timestamp the student's next answer will get if its question is shown at ``shown_at`` (default now).

    The client sends it to the service as ``at``, so a candidate is scored with the same elapsed time
    that the answer will carry in training data.
    """
    return _stamp(shown_at or utc_now(), _last_timestamp(conn, student_id)).strftime(TIMESTAMP_FORMAT)


def new_token() -> str:
    return secrets.token_hex(16)


class AlreadyAnswered(Exception):
    """The token is not the current question's: its answer is stored already (``interaction_id``), or the
    question it was shown for was replaced without an answer (None)."""

    def __init__(self, interaction_id: int | None):
        super().__init__(f"answer token already used (interaction {interaction_id})")
        self.interaction_id = interaction_id


def answer_by_token(conn: sqlite3.Connection, student_id: int, token: str) -> sqlite3.Row | None:
    """The answer stored with this one-time token for this student, if any."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM interactions WHERE student_id = ? AND answer_token = ?", (student_id, token)
    ).fetchone()
    return row


def record_answer(
    conn: sqlite3.Connection,
    student_id: int,
    question: dict[str, Any],
    correct: bool,
    given: str,
    shown_at: datetime | None = None,
    token: str | None = None,
) -> int:
    """Store one graded answer, answered now; returns its id. Committed when this returns.

    ``token`` (the page's one-time token of the question shown): the answer is stored only if it is still the
    student's current token, checked and consumed inside the transaction that inserts; otherwise nothing is
    stored and ``AlreadyAnswered`` names the answer stored with it. Two workers submitting the same form at
    once therefore store one row (BEGIN IMMEDIATE serialises them; the UNIQUE answer_token backs it up).

    ``shown_at`` defaults to the render stamp of the student's current question when ``question`` is
    it (see ``mark_shown``), else to now (a question never rendered: only possible outside the page).
    The stamp is consumed: the same item asked again later is a new showing.

    Timestamps (= shown at) have one-second resolution, and (user, item, Timestamp) identifies an answer
    downstream (the export dedupes on it, the service rejects a history that repeats it). So a student's
    answers get strictly increasing timestamps: one in the same second as the previous one is stamped one
    second later. shown_at and answered_at keep the real times. BEGIN IMMEDIATE makes
    read-last-then-insert atomic across gunicorn workers.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if token is not None:
            cur_token = conn.execute("SELECT current_token FROM students WHERE id = ?", (student_id,)).fetchone()
            if cur_token is None or cur_token[0] != token:
                done = answer_by_token(conn, student_id, token)
                raise AlreadyAnswered(int(done["id"]) if done is not None else None)
        answered_at = utc_now()
        if shown_at is None:
            cur_row = conn.execute(
                "SELECT current_shown_at FROM students WHERE id = ? AND current_item = ?",
                (student_id, question["assessmentItemID"]),
            ).fetchone()
            shown_at = datetime.fromisoformat(cur_row[0]) if cur_row is not None and cur_row[0] else answered_at
        stamp = _stamp(shown_at, _last_timestamp(conn, student_id))
        cur = conn.execute(
            "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
            " KnowledgeTag, given, shown_at, answered_at, answer_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                student_id,
                user_id(student_id),
                question["assessmentItemID"],
                question["testId"],
                int(correct),
                stamp.strftime(TIMESTAMP_FORMAT),
                int(question["KnowledgeTag"]),
                given,
                shown_at.isoformat(sep=" "),
                answered_at.isoformat(sep=" "),
                token,
            ),
        )
        interaction_id = int(cur.lastrowid or 0)
        # The label of the predictions made for this showing of the question (none if the service was down).
        conn.execute(
            "UPDATE predictions SET interaction_id = ?, answerCode = ? WHERE student_id = ? AND request_id ="
            " (SELECT current_request_id FROM students WHERE id = ? AND current_item = ?) AND assessmentItemID = ?"
            " AND interaction_id IS NULL",
            (interaction_id, int(correct), student_id, student_id, question["assessmentItemID"],
             question["assessmentItemID"]),
        )  # fmt: skip
        # The question is consumed with its answer, atomically: if the worker dies before the page answers,
        # the form the browser sends again is refused as already answered instead of storing it twice.
        conn.execute(
            "UPDATE students SET current_item = NULL, current_shown_at = NULL, current_request_id = NULL,"
            " current_token = NULL WHERE id = ?",
            (student_id,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return interaction_id


def history(conn: sqlite3.Connection, student_id: int, limit: int = 1000) -> list[dict[str, Any]]:
    """The student's most recent answers, oldest first, in the canonical columns."""
    rows = conn.execute(
        "SELECT * FROM (SELECT id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag"
        " FROM interactions WHERE student_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
        (student_id, limit),
    ).fetchall()
    return [{c: r[c] for c in COLUMNS} for r in rows]


def answered_items(conn: sqlite3.Connection, student_id: int) -> set[str]:
    rows = conn.execute("SELECT DISTINCT assessmentItemID FROM interactions WHERE student_id = ?", (student_id,))
    return {r[0] for r in rows}


def counts(conn: sqlite3.Connection, student_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(answerCode), 0) AS c FROM interactions WHERE student_id = ?", (student_id,)
    ).fetchone()
    return int(row["n"]), int(row["c"])


EXPORT_COLUMNS: tuple[str, ...] = (*COLUMNS, "ResponseTime")


def export_since(conn: sqlite3.Connection, since: int) -> tuple[pd.DataFrame, int]:
    """Every answer with id > ``since``, in id order, and the new watermark (the last id, or ``since``).

    Columns: the canonical ones (Timestamp = shown at) and ``ResponseTime``, answered - shown in
    seconds (empty for answers stored before answered_at was recorded).
    """
    rows = conn.execute(
        "SELECT id, userID, assessmentItemID, testId, answerCode, Timestamp, KnowledgeTag, shown_at, answered_at"
        " FROM interactions WHERE id > ? ORDER BY id",
        (since,),
    ).fetchall()
    df = pd.DataFrame([tuple(r) for r in rows], columns=["id", *COLUMNS, "shown_at", "answered_at"])
    # ISO 8601 with or without fractional seconds (isoformat drops ".000000"; migrated rows have none).
    shown = pd.to_datetime(df["shown_at"], format="ISO8601")
    seconds = (pd.to_datetime(df["answered_at"], format="ISO8601") - shown).dt.total_seconds()
    # A wall clock stepped back (NTP) between render and answer must not give a negative duration.
    df["ResponseTime"] = seconds.clip(lower=0.0).round(3)
    watermark = int(df["id"].iloc[-1]) if len(df) else since
    return df.loc[:, list(EXPORT_COLUMNS)], watermark


def known_model_versions(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT model_version FROM model_versions")}


def remember_model_version(conn: sqlite3.Connection, metadata: dict[str, Any]) -> None:
    """Keep what the service's /metadata said about a model version the first time it was seen (its offline
    test AUC is what the online AUC is compared with); later sightings change nothing."""
    metrics = metadata.get("metrics") or {}
    auc = metrics.get("test_auc") if isinstance(metrics, dict) else None
    conn.execute(
        "INSERT OR IGNORE INTO model_versions (model_version, model_name, test_auc, metadata, first_seen_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            str(metadata["model_version"]),
            metadata.get("model_name"),
            float(auc) if isinstance(auc, int | float) else None,
            json.dumps(metadata, default=str),
            utc_now().isoformat(sep=" "),
        ),
    )


PREDICTION_COLUMNS: tuple[str, ...] = (
    "request_id",
    "role",
    "model_name",
    "model_version",
    "probability",
    "predicted_at",
    "interaction_id",
    "answerCode",
    "KnowledgeTag",
    "answered_at",
    "explored",
)


def scored_predictions(conn: sqlite3.Connection, after_interaction: int = 0) -> pd.DataFrame:
    """Predictions whose answer has arrived, in answer order: ``PREDICTION_COLUMNS`` plus ``day`` (the answer's
    UTC date), the table ``dkt.quality.quality_table`` reads. ``after_interaction``: only answers with a larger
    id (an export watermark; the metrics collector reads on from where it stopped, as ids only grow).
    ``explored`` is 0 for a store not yet migrated to 6 (read-only readers such as ``dkt models quality`` do not
    migrate): none of its questions was explored."""
    has_explored = "explored" in {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
    rows = conn.execute(
        "SELECT p.request_id, p.role, p.model_name, p.model_version, p.probability, p.predicted_at,"
        " p.interaction_id, p.answerCode, i.KnowledgeTag, i.answered_at,"
        f" {'p.explored' if has_explored else '0'}"
        " FROM predictions p JOIN interactions i ON i.id = p.interaction_id WHERE p.interaction_id > ?"
        " ORDER BY p.interaction_id, p.id",
        (after_interaction,),
    ).fetchall()
    df = pd.DataFrame([tuple(r) for r in rows], columns=list(PREDICTION_COLUMNS))
    df["day"] = df["answered_at"].str.slice(0, 10)
    return df


def model_test_aucs(conn: sqlite3.Connection) -> dict[str, float]:
    rows = conn.execute("SELECT model_version, test_auc FROM model_versions WHERE test_auc IS NOT NULL")
    return {str(r[0]): float(r[1]) for r in rows}


def latest_model_versions(conn: sqlite3.Connection) -> dict[str, str]:
    """role -> the model version of the latest logged prediction in that role (an index seek per role)."""
    latest = {}
    for role in ROLES:
        row = conn.execute(
            "SELECT model_version FROM predictions WHERE role = ? ORDER BY id DESC LIMIT 1", (role,)
        ).fetchone()
        if row is not None:
            latest[role] = str(row[0])
    return latest


def answer_summary(conn: sqlite3.Connection) -> tuple[int, datetime | None]:
    """How many answers are stored, and when the last one arrived (its Timestamp for rows from before
    answered_at was recorded)."""
    n = int(conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])
    last = conn.execute("SELECT COALESCE(answered_at, Timestamp) FROM interactions ORDER BY id DESC LIMIT 1").fetchone()
    return n, datetime.fromisoformat(last[0]) if last is not None else None


# -- practice sessions and the mastery log (migrations 7 and 8; client/practice.py) ---------------------------


def last_interaction_id(conn: sqlite3.Connection, student_id: int) -> int:
    row = conn.execute("SELECT MAX(id) FROM interactions WHERE student_id = ?", (student_id,)).fetchone()
    return int(row[0] or 0)


def open_session(conn: sqlite3.Connection, student_id: int) -> sqlite3.Row | None:
    """The student's session in progress (the latest one not ended), if any."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM practice_sessions WHERE student_id = ? AND ended_at IS NULL ORDER BY id DESC LIMIT 1",
        (student_id,),
    ).fetchone()
    return row


def session(conn: sqlite3.Connection, student_id: int, session_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM practice_sessions WHERE student_id = ? AND id = ?", (student_id, session_id)
    ).fetchone()
    return row


def last_ended_session(conn: sqlite3.Connection, student_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM practice_sessions WHERE student_id = ? AND ended_at IS NOT NULL AND summary IS NOT NULL"
        " ORDER BY id DESC LIMIT 1",
        (student_id,),
    ).fetchone()
    return row


def had_diagnostic(conn: sqlite3.Connection, student_id: int) -> bool:
    q = "SELECT 1 FROM practice_sessions WHERE student_id = ? AND kind = 'diagnostic' LIMIT 1"
    return conn.execute(q, (student_id,)).fetchone() is not None


def start_session(
    conn: sqlite3.Connection, student_id: int, kind: str, skill: int | None, reason: str, state: dict[str, Any]
) -> int:
    """Open a session (ending any open one without a summary: a student has one session at a time)."""
    now = utc_now().isoformat(sep=" ")
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = last_interaction_id(conn, student_id)
        conn.execute(
            "UPDATE practice_sessions SET ended_at = ?, end_interaction = ?, end_reason = 'replaced'"
            " WHERE student_id = ? AND ended_at IS NULL",
            (now, last, student_id),
        )
        cur = conn.execute(
            "INSERT INTO practice_sessions (student_id, kind, skill, reason, started_at, after_interaction,"
            " start_state) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (student_id, kind, skill, reason, now, last, json.dumps(state)),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cur.lastrowid or 0)


def end_session(conn: sqlite3.Connection, session_id: int, reason: str, summary: dict[str, Any]) -> bool:
    """End a session in progress with its summary; False when it had ended already (another request)."""
    cur = conn.execute(
        "UPDATE practice_sessions SET ended_at = ?, end_reason = ?, summary = ?,"
        " end_interaction = (SELECT COALESCE(MAX(i.id), 0) FROM interactions i WHERE i.student_id ="
        " practice_sessions.student_id) WHERE id = ? AND ended_at IS NULL",
        (utc_now().isoformat(sep=" "), reason, json.dumps(summary), session_id),
    )
    return cur.rowcount == 1


def session_answers(conn: sqlite3.Connection, sess: sqlite3.Row) -> list[sqlite3.Row]:
    """The answers given in a session, oldest first."""
    end = sess["end_interaction"] if sess["end_interaction"] is not None else 2**62
    return conn.execute(
        "SELECT * FROM interactions WHERE student_id = ? AND id > ? AND id <= ? ORDER BY id",
        (sess["student_id"], sess["after_interaction"], end),
    ).fetchall()


def skill_activity(conn: sqlite3.Connection, student_id: int, day: str) -> dict[int, tuple[str, int]]:
    """Per KnowledgeTag the student answered: (when they last answered in it, answers in it on UTC ``day``)."""
    rows = conn.execute(
        "SELECT KnowledgeTag, MAX(COALESCE(answered_at, Timestamp)),"
        " SUM(CASE WHEN substr(COALESCE(answered_at, Timestamp), 1, 10) = ? THEN 1 ELSE 0 END)"
        " FROM interactions WHERE student_id = ? GROUP BY KnowledgeTag",
        (day, student_id),
    ).fetchall()
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


def log_mastery(
    conn: sqlite3.Connection, student_id: int, interaction_id: int, state: dict[str, Any], model_version: str | None
) -> None:
    """The knowledge state after ``interaction_id`` (kept once: a later page for the same answer changes nothing)."""
    conn.execute(
        "INSERT OR IGNORE INTO mastery_log (interaction_id, student_id, logged_at, model_version, state)"
        " VALUES (?, ?, ?, ?, ?)",
        (interaction_id, student_id, utc_now().isoformat(sep=" "), model_version, json.dumps(state)),
    )


def latest_mastery(conn: sqlite3.Connection, student_id: int) -> dict[str, Any]:
    """The knowledge state logged after the student's latest logged answer ({} before any)."""
    row = conn.execute(
        "SELECT state FROM mastery_log WHERE student_id = ? ORDER BY interaction_id DESC LIMIT 1", (student_id,)
    ).fetchone()
    return json.loads(row[0]) if row is not None else {}


def mastery_history(conn: sqlite3.Connection, student_id: int) -> list[tuple[int, dict[str, Any]]]:
    """(answer number, state) after each logged answer, oldest first; the answer number counts all the
    student's answers (1 = the first), so gaps show where the service was down."""
    rows = conn.execute(
        "SELECT n.k, m.state FROM mastery_log m JOIN (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS k"
        " FROM interactions WHERE student_id = ?) n ON n.id = m.interaction_id WHERE m.student_id = ?"
        " ORDER BY m.interaction_id",
        (student_id, student_id),
    ).fetchall()
    return [(int(r[0]), json.loads(r[1])) for r in rows]
