"""The student web page: answer questions, see what the model thinks you know.

    gunicorn 'client:create_app()'
    dkt client export-interactions --since 0 --out new.csv
    dkt client export-predictions --since 0 --out predictions.csv

Every answer is graded and committed to SQLite before the page answers; then
the inference service is asked for the knowledge state, the expected score on
the current test and the next question (predicted success closest to the
target difficulty). If the service is slow or down, the answer is still saved
and the page says predictions are unavailable.

The prediction the page acted on (the chosen question's probability, the model's name and version, the
request id sent with the calls) is logged with the question and joined with its answer (client/db.py);
``/metrics`` serves the online quality computed from that log (client/metrics.py, docs/monitoring.md).

Time (docs/time-semantics.md): a question is stamped shown when it is first
rendered (reloads keep that stamp) and its answer is stamped when it arrives,
both server side. The next question is scored ``at`` the time it will be shown.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from flask import Flask, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wrappers import Response

from client import accounts, db, metrics, operator, progress, teacher
from client import practice as sessions  # `practice` is the page's view function
from client.inference import BaseURL, InferenceClient, InferenceUnavailable
from client.settings import load_settings
from client.tutor import ItemBank, logged_predictions, skill_label, unavailable
from dkt.itembank import grade, parse_number

ACCOUNT_HOME = {"teacher": "/classes", "operator": "/operator"}  # where / sends a signed-in non-student
MAX_ANSWER_CHARS = 32
METADATA_RETRY_S = 60.0  # a model version whose /metadata could not be read is asked again after this


def create_app(config: dict[str, Any] | None = None) -> Flask:
    cfg = load_settings(config)
    app = Flask(__name__)
    app.config.update(cfg)
    app.config.update(
        MAX_CONTENT_LENGTH=16 * 1024,  # forms here are tiny; anything bigger is not a student typing
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,  # a student may leave a question open for hours
    )
    CSRFProtect(app)
    app.register_blueprint(operator.bp)  # /operator: the operator page (client/operator.py, docs/monitoring.md)
    app.register_blueprint(teacher.bp)  # /teach: a teacher's class views (client/teacher.py, docs/teacher.md)
    bank = ItemBank(str(cfg["DKT_QUESTIONS"]))
    client = InferenceClient(
        BaseURL(str(cfg["DKT_INFERENCE_URL"]), str(cfg["DKT_INFERENCE_URL_FILE"])),
        timeout_s=float(cfg["DKT_INFERENCE_TIMEOUT_S"]),
        retries=int(cfg["DKT_INFERENCE_RETRIES"]),
        deadline_s=float(cfg["DKT_INFERENCE_DEADLINE_S"]),
    )
    db_path = str(cfg["DKT_CLIENT_DB"])
    with db.connect(db_path) as conn:
        db.init(conn)
    app.extensions["dkt"] = {"bank": bank, "client": client}
    tutor = sessions.Tutor(bank, client, cfg)  # sessions, diagnostic, summaries (client/practice.py)
    metadata_asked: dict[str, float] = {}  # model version -> when /metadata was asked about it (inf: stored)
    metrics_registry = metrics.registry(db_path, float(cfg["DKT_METRICS_WINDOW_DAYS"]), str(cfg["DKT_TERM_DATES"]))

    def conn() -> sqlite3.Connection:
        if "db" not in g:
            g.db = db.connect(db_path)
        return g.db  # type: ignore[no-any-return]

    @app.teardown_appcontext
    def close_db(_: BaseException | None) -> None:
        c = g.pop("db", None)
        if c is not None:
            c.close()

    def current_student() -> sqlite3.Row | None:
        sid = session.get("student_id")
        return db.student(conn(), int(sid)) if sid is not None else None

    def refresh(student_id: int) -> None:
        """Ask the service about this student, choose the next question, store both (a refresh shows the same)."""
        request_id = uuid.uuid4().hex  # one per page decision: sent with each of its service calls
        nxt, shown, failed = tutor.next_question(conn(), student_id, request_id)
        if shown is None:
            shown = unavailable(failed or "")
        predictions = logged_predictions(shown)
        db.set_current(conn(), student_id, nxt["assessmentItemID"], shown, request_id, predictions)
        for p in predictions:
            remember_model(p["model_version"])

    def remember_model(version: str) -> None:
        """Keep the offline test AUC of a model version the first time it serves (dkt_model_test_auc).

        /metadata is asked once per version and process (again after METADATA_RETRY_S if it failed), and
        only kept when it still names that version: a deploy may switch models between the two calls."""
        asked = metadata_asked.get(version)
        if asked is not None and time.monotonic() - asked < METADATA_RETRY_S:
            return
        metadata_asked[version] = time.monotonic()
        if version in db.known_model_versions(conn()):
            metadata_asked[version] = math.inf
            return
        try:
            meta = client.get("/metadata")
        except InferenceUnavailable:
            return
        # A shadow model's version is described under the service's "shadow" (serving/shadow.py).
        shadow = meta.get("shadow")
        for described in (meta, shadow if isinstance(shadow, dict) else {}):
            if str(described.get("model_version")) == version:
                db.remember_model_version(conn(), described)
                metadata_asked[version] = math.inf
                return

    @app.get("/")
    def index() -> str | Response:
        if current_student() is not None:
            return redirect(url_for("practice"))
        role = session.get("role")  # teachers and operators have their own pages (client/accounts.py)
        if role in ACCOUNT_HOME:
            return redirect(ACCOUNT_HOME[role])
        return render_template("signin.html")

    def student_signed_in(student_id: int) -> None:
        row = db.student(conn(), student_id)
        if row is not None and row["current_item"] is None:
            refresh(student_id)

    # Sign-in, registration, claim of a nickname record, classes, sign-out (docs/accounts.md).
    accounts.register_routes(app, conn, student_signed_in)

    def signed_in_student() -> int | None:
        row = current_student()
        return int(row["id"]) if row is not None else None

    # Choosing a skill, ending a session, its summary (client/practice.py); the progress page (client/progress.py).
    sessions.register_routes(app, conn, tutor, signed_in_student, refresh)
    progress.register_routes(app, conn, signed_in_student)

    @app.get("/practice")
    def practice() -> str | Response:
        row = current_student()
        if row is None:  # signed out, or a teacher/operator: no student record (their session stays)
            return redirect(url_for("index"))
        shown = _json(row["insights"])
        sess = db.open_session(conn(), int(row["id"]))
        if (
            row["current_item"] is None
            or bank.item(row["current_item"]) is None
            or not shown.get("available")
            or sess is None  # the student ended the session: the next one starts here
        ):
            refresh(int(row["id"]))  # the service may be back: try again on each visit until it answers
            row = db.student(conn(), int(row["id"]))
            assert row is not None
            shown = _json(row["insights"])
        question = bank.item(row["current_item"])
        if question is not None:  # the first render of this question is when it was shown; reloads keep it
            db.mark_shown(conn(), int(row["id"]), str(row["current_item"]))
        n, correct = db.counts(conn(), int(row["id"]))
        ended = db.last_ended_session(conn(), int(row["id"]))
        # The summary of a session that ended by a rule shows above the next question until the next answer.
        just_ended = (
            json.loads(ended["summary"])
            if ended is not None
            and ended["end_reason"] != "student"
            and ended["end_interaction"] == db.last_interaction_id(conn(), int(row["id"]))
            and n > 0
            else None
        )
        return render_template(
            "practice.html",
            nickname=row["nickname"],
            question=question,
            question_skill=skill_label(int(question["KnowledgeTag"])) if question else "",
            shown=shown,
            n_answers=n,
            n_correct=correct,
            max_answer=MAX_ANSWER_CHARS,
            token=row["current_token"] or "",
            just_ended=just_ended,
            choices=[(t, skill_label(t)) for t in bank.tags],
        )

    def verdict(question: dict[str, Any], given: str, correct: bool, again: bool = False) -> None:
        worked = question["question"].replace("?", str(question["answer"]))
        note = " (this answer was already recorded)" if again else ""
        if correct:
            flash(f"Correct! {worked}{note}", "ok")
        else:
            flash(f"Not quite: {worked} (you typed {given}){note}", "bad")

    def already_answered(student_id: int, token: str) -> Response:
        """A form whose one-time token is spent: show what was recorded with it, store nothing."""
        done = db.answer_by_token(conn(), student_id, token) if token else None
        question = bank.item(done["assessmentItemID"]) if done is not None else None
        if done is None or question is None:
            flash("That question was already answered; here is your current one.", "info")
        else:
            verdict(question, str(done["given"]), bool(done["answerCode"]), again=True)
        return redirect(url_for("practice"))

    @app.post("/answer")
    def answer() -> Response:
        row = current_student()
        if row is None:
            return redirect(url_for("index"))
        student_id = int(row["id"])
        item_id = request.form.get("item", "")
        # A form without the token (rendered before the upgrade, or a script posting the fields it knows) answers
        # the question on show if it names it: the database still stores it once, under the current token.
        token = request.form.get("token") or (row["current_token"] if item_id == row["current_item"] else "")
        given = request.form.get("answer", "").strip()
        if item_id != row["current_item"] or not token or token != row["current_token"]:
            return already_answered(student_id, token)  # two tabs, the back button, a retried POST
        if not given or len(given) > MAX_ANSWER_CHARS:
            flash(f"Type an answer of 1 to {MAX_ANSWER_CHARS} characters.", "error")
            return redirect(url_for("practice"))
        if parse_number(given) is None:  # a typo is not a wrong answer: refused, nothing stored
            flash(f"“{given}” is not a number: type a whole number such as 42. Nothing was recorded.", "error")
            return redirect(url_for("practice"))
        question = bank.item(item_id)
        if question is None:  # the item bank changed under this student: give them a question that exists
            refresh(student_id)
            flash("That question is no longer in the bank; here is another one.", "info")
            return redirect(url_for("practice"))
        correct = grade(given, str(question["answer"]))
        try:  # committed when it returns; the token is checked and consumed in the same transaction
            db.record_answer(conn(), student_id, question, correct, given, token=token)
        except db.AlreadyAnswered:
            return already_answered(student_id, token)  # another worker stored this very submit first
        verdict(question, given, correct)
        tag = int(question["KnowledgeTag"])
        before = next((s for s in _json(row["insights"]).get("skills", []) if s.get("tag") == tag), None)
        refresh(student_id)
        after_row = db.student(conn(), student_id)
        after = next(
            (s for s in _json(after_row["insights"] if after_row else None).get("skills", []) if s.get("tag") == tag),
            None,
        )
        if after is not None:  # how this answer moved the skill's mastery (none while the service is down)
            was = f"{100 * before['mastery']:.0f}%" if before and before.get("evidence") else "not started"
            flash(f"{skill_label(tag)}: {was} → {100 * after['mastery']:.0f}% ({after['level']})", "move")
        return redirect(url_for("practice"))

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        """Online quality per model version and the answer flow (docs/monitoring.md), read from the store now."""
        return Response(generate_latest(metrics_registry), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError) -> tuple[str, int]:
        return render_template("error.html", message="Your form expired. Please go back and try again."), 400

    @app.errorhandler(413)
    def too_large(e: Exception) -> tuple[str, int]:
        return render_template("error.html", message="That was far too long."), 413

    @app.cli.command("export-interactions")
    @click.option("--since", type=int, default=0, show_default=True, help="watermark: export answers with id > this")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file to write")
    def export_interactions(since: int, out: Path) -> None:
        """Write answers newer than the watermark as a canonical CSV (Timestamp = shown at, plus ResponseTime
        in seconds); print the new watermark."""
        if since < 0:
            raise click.BadParameter("must be >= 0", param_hint="--since")
        with db.connect(db_path) as c:
            df, watermark = db.export_since(c, since)
        _write_csv(df, out)
        click.echo(f"exported {len(df)} interactions to {out}", err=True)
        click.echo(f"watermark: {watermark}")
        sys.stdout.flush()

    @app.cli.command("export-predictions")
    @click.option("--since", type=int, default=0, show_default=True, help="watermark: answers with id > this")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file to write")
    def export_predictions(since: int, out: Path) -> None:
        """Write the logged predictions of the answers export-interactions writes for the same watermark (joined:
        interaction_id, answerCode, KnowledgeTag, answered_at), so the prediction log travels with its answers."""
        if since < 0:
            raise click.BadParameter("must be >= 0", param_hint="--since")
        with db.connect(db_path) as c:
            df = db.scored_predictions(c, after_interaction=since)
        _write_csv(df.loc[:, list(db.PREDICTION_COLUMNS)], out)
        click.echo(f"exported {len(df)} predictions to {out}", err=True)

    return app


def _write_csv(df: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)  # a crash never leaves a half-written export behind


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
