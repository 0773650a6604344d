"""The client's SQLite database: students and their answers, each answer committed before the page answers.

``interactions.id`` is an AUTOINCREMENT key: ids only grow and are never reused,
and SQLite serialises writers, so an answer with a larger id is always committed
after one with a smaller id. That id is the export watermark.

Time (docs/time-semantics.md): each answer keeps when its question was first
rendered to the student (``shown_at``) and when the answer arrived
(``answered_at``), both server side, naive UTC with microseconds. ``Timestamp``
is ``shown_at`` in whole seconds, so what a model sees at an item never includes
the time spent answering it.

The schema is versioned with ``PRAGMA user_version``; ``init`` applies the
numbered migrations a database has not seen yet, each in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
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


# (version, migration): applied in order to a database whose user_version is below the version.
# Version 1 is SCHEMA as first shipped; never edit a released step, append a new one.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (2, _add_shown_and_answered_at),
    (3, _add_prediction_log),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)  # autocommit; explicit transactions below
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (several gunicorn workers)
    conn.execute("PRAGMA synchronous=FULL")  # an answered page means the answer is on disk
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def init(conn: sqlite3.Connection) -> None:
    """Create the tables if needed and bring the schema to ``SCHEMA_VERSION``; safe to run any number of times.

    Several gunicorn workers start at once: BEGIN IMMEDIATE lets one migrate while the others wait,
    and the version is re-read inside the transaction so a step never runs twice. DDL is
    transactional in SQLite, so a crash mid-migration leaves the previous version intact.
    """
    conn.executescript(SCHEMA)
    for version, migrate in MIGRATIONS:
        if schema_version(conn) >= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) < version:
                migrate(conn)
                conn.execute(f"PRAGMA user_version = {int(version)}")
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

    ``predictions`` (each: role, model_name, model_version, probability) are what the service call
    ``request_id`` predicted for ``item``; they are logged in the same transaction, and the student's
    answer to ``item`` is joined to them (``record_answer``). Without them the question has no prediction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        predicted_at = utc_now().isoformat(sep=" ")
        for p in predictions or []:
            conn.execute(
                "INSERT INTO predictions (student_id, assessmentItemID, request_id, role, model_name, model_version,"
                " probability, predicted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    student_id,
                    item,
                    request_id,
                    p.get("role", "production"),
                    p.get("model_name"),
                    p["model_version"],
                    float(p["probability"]),
                    predicted_at,
                ),
            )
        # SQLite evaluates every SET expression on the row as it was: ``current_item IS ?`` compares the old item.
        conn.execute(
            "UPDATE students SET current_item = ?, insights = ?, current_request_id = ?,"
            " current_shown_at = CASE WHEN current_item IS ? THEN current_shown_at ELSE NULL END WHERE id = ?",
            (
                item,
                json.dumps(insights) if insights is not None else None,
                request_id if predictions else None,
                item,
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


def record_answer(
    conn: sqlite3.Connection,
    student_id: int,
    question: dict[str, Any],
    correct: bool,
    given: str,
    shown_at: datetime | None = None,
) -> int:
    """Store one graded answer, answered now; returns its id. Committed when this returns.

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
            " KnowledgeTag, given, shown_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "UPDATE students SET current_item = NULL, current_shown_at = NULL, current_request_id = NULL WHERE id = ?",
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
)


def scored_predictions(conn: sqlite3.Connection, after_interaction: int = 0) -> pd.DataFrame:
    """Predictions whose answer has arrived, in answer order: ``PREDICTION_COLUMNS`` plus ``day`` (the answer's
    UTC date), the table ``dkt.quality.quality_table`` reads. ``after_interaction``: only answers with a larger
    id (an export watermark; the metrics collector reads on from where it stopped, as ids only grow)."""
    rows = conn.execute(
        "SELECT p.request_id, p.role, p.model_name, p.model_version, p.probability, p.predicted_at,"
        " p.interaction_id, p.answerCode, i.KnowledgeTag, i.answered_at"
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
