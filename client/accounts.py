"""Accounts: who a request is (docs/accounts.md).

Students register with a username and a password and join a class with its code; teachers own classes
(a teacher creates one and hands its code out); operators run the deployment. Teacher and operator accounts
are made on the command line (``dkt client create-user --role teacher NAME``), which prints a generated
password once. Passwords are kept as argon2id hashes with OWASP's recommended parameters (19 MiB, t=2, p=1).

Names: what the student typed is shown (NFKC); sign-in compares ``key`` (NFKC + casefold, so ``Ada`` and
``ＡＤＡ`` are one name); and no two accounts may share a ``skeleton`` (each character replaced by the
smallest character it can be confused with, after the Unicode confusables data of confusable-homoglyphs), so
``аda`` with a Cyrillic ``а`` cannot sit beside ``ada``. Names mixing scripts with look-alikes are refused.

Before accounts a student was their nickname (``students.nickname``): such a record has no account and its
name stays reserved. An operator prints a one-time claim code for it (``dkt client claim-code NICKNAME``);
the student enters it with a new password on /claim, and keeps their answers.

Failed sign-ins are counted in the database (``login_failures``), so every gunicorn worker sees the same
count: more than ``DKT_LOGIN_MAX_FAILURES`` for one name, or ``DKT_LOGIN_MAX_FAILURES_PER_ADDRESS`` from
one address, within ``DKT_LOGIN_WINDOW_S`` and further attempts are refused until the oldest ages out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from confusable_homoglyphs import confusables
from flask import Flask, flash, redirect, render_template, request, session, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from client import db

ROLES = ("student", "teacher", "operator")
USERNAME = re.compile(r"^[\w .-]{1,32}$")  # letters and digits of any script, spaces, dots, dashes, underscores
PASSWORD_MIN, PASSWORD_MAX = 8, 128  # argon2 takes any length; a cap keeps a pasted novel from costing more
# Class and claim codes are read aloud and typed by children: no 0/O, 1/I/L.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CLASS_CODE_LEN = 8  # 31^8 ~ 8.5e11: a class code admits to a class, it is no password
CLAIM_CODE_LEN = 12  # 31^12 ~ 7.9e17, and guessing is rate-limited per address
CLAIM_CODE_TTL = timedelta(days=14)
GENERATED_PASSWORD_BYTES = 12  # 16 URL-safe characters, 96 bits

# OWASP's Password Storage Cheat Sheet argon2id configuration (m=19 MiB, t=2, p=1) rather than argon2-cffi's
# default (RFC 9106's low-memory profile, 64 MiB, t=3, p=4): about 8x less CPU and a third of the memory per
# hash (0.05 s against 0.44 s measured on the 2-core host under load), so a burst of sign-ins in a 0.5-CPU,
# 512 MB client container neither times out nor runs out of memory. A stored hash with other parameters is
# re-hashed at its next sign-in (check_needs_rehash).
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified when the name is unknown, so an unknown name costs as long as a wrong password (no name probing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """Something the person typed cannot be used; the message says what, in words for them."""


class RateLimited(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Too many failed tries; try again in {max(1, -(-retry_after_s // 60))} minutes.")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    max_failures: int
    max_failures_per_address: int
    window_s: float


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    role: str
    student_id: int | None
    # Bumped by a password reset; a session signed in under another generation is ended (docs/accounts.md).
    session_generation: int = 0


# -- names ---------------------------------------------------------------------------------------------------
def display_name(name: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", name).split())


def name_key(name: str) -> str:
    """The sign-in name: NFKC, casefolded, NFKC again (casefolding can denormalise), spaces collapsed."""
    return unicodedata.normalize("NFKC", display_name(name).casefold())


@cache
def _representative(char: str) -> str:
    """The smallest character ``char`` can be confused with (itself included): one per look-alike group."""
    found = confusables.confusables_data.get(char, [])
    return min([char, *(h["c"] for h in found if len(h["c"]) == 1)])


def skeleton(name: str) -> str:
    """Equal for names that look alike: ``ada``, ``ADA``, ``аda`` (Cyrillic а), ``ａｄａ`` (fullwidth)."""
    return "".join(_representative(c) for c in name_key(name))


def check_username(name: str) -> str:
    """The name to store (NFKC, spaces collapsed), or AccountError saying what is wrong with it."""
    shown = display_name(name)
    if not USERNAME.fullmatch(shown):
        raise AccountError("Choose a username of 1 to 32 letters, digits, spaces, dots, dashes or underscores.")
    if confusables.is_dangerous(shown):
        raise AccountError("That username mixes alphabets with look-alike letters; please use one alphabet.")
    return shown


def _taken(conn: sqlite3.Connection, name: str, except_student: int | None = None) -> bool:
    """Whether an account, or a nickname record not yet claimed, has a name that looks like ``name``."""
    key, skel = name_key(name), skeleton(name)
    if conn.execute("SELECT 1 FROM accounts WHERE username_key = ? OR skeleton = ?", (key, skel)).fetchone():
        return True
    # Records from before accounts keep their names reserved until claimed (their number only shrinks).
    unclaimed = conn.execute(
        "SELECT id, nickname FROM students WHERE id NOT IN (SELECT student_id FROM accounts"
        " WHERE student_id IS NOT NULL) AND id IS NOT ?",
        (except_student,),
    )
    return any(skeleton(r["nickname"]) == skel for r in unclaimed)


# -- passwords -----------------------------------------------------------------------------------------------
def check_password(password: str) -> str:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AccountError(f"Choose a password of {PASSWORD_MIN} to {PASSWORD_MAX} characters.")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def _code(length: int) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def normalize_code(code: str) -> str:
    """What a person typed as a code: case, spaces and dashes do not matter."""
    return re.sub(r"[\s-]", "", code).upper()


def _code_hash(code: str) -> str:
    # A claim code has 60 random bits and lives 14 days: a plain digest is enough (no password stretching).
    return hashlib.sha256(normalize_code(code).encode()).hexdigest()


# -- accounts ------------------------------------------------------------------------------------------------
def _account(row: sqlite3.Row) -> Account:
    sid = row["student_id"]
    generation = int(row["session_generation"])
    return Account(int(row["id"]), str(row["username"]), str(row["role"]), int(sid) if sid is not None else None,
                   generation)  # fmt: skip


def create_account(
    conn: sqlite3.Connection, username: str, password: str, role: str, student_id: int | None = None
) -> Account:
    """A new account; a student account gets a new student record unless ``student_id`` (a claimed one)."""
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    shown = check_username(username)
    check_password(password)
    digest = _hasher.hash(password)  # outside the write transaction: it takes a while by design
    conn.execute("BEGIN IMMEDIATE")  # the name check and the insert are one step across workers
    try:
        if _taken(conn, shown, except_student=student_id):
            raise AccountError("That username is taken (or looks like one that is); please choose another.")
        now = db.now()
        if role == "student" and student_id is None:
            student_id = int(
                conn.execute("INSERT INTO students (nickname, created_at) VALUES (?, ?)", (shown, now)).lastrowid or 0
            )
        cur = conn.execute(
            "INSERT INTO accounts (username, username_key, skeleton, password_hash, role, student_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (shown, name_key(shown), skeleton(shown), digest, role, student_id, now),
        )
        conn.execute("COMMIT")
    except sqlite3.IntegrityError:  # accounts.student_id is UNIQUE: two claims of one record, one wins
        conn.execute("ROLLBACK")
        raise AccountError("That student record already has an account.") from None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Account(int(cur.lastrowid or 0), shown, role, student_id)


def find(conn: sqlite3.Connection, username: str) -> Account | None:
    row = conn.execute("SELECT * FROM accounts WHERE username_key = ?", (name_key(username),)).fetchone()
    return _account(row) if row is not None else None


def get(conn: sqlite3.Connection, account_id: int) -> Account | None:
    row = conn.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return _account(row) if row is not None else None


def set_password(conn: sqlite3.Connection, account_id: int, password: str, end_sessions: bool = True) -> None:
    """A new password hash; unless ``end_sessions`` is False (the same password re-hashed at sign-in), every
    session signed in before ends at its next request: a reset password must lock out whoever had the old one."""
    digest = _hasher.hash(check_password(password))
    conn.execute(
        "UPDATE accounts SET password_hash = ?, session_generation = session_generation + ? WHERE id = ?",
        (digest, int(end_sessions), account_id),
    )


def session_generation(conn: sqlite3.Connection, account_id: int) -> int | None:
    """The account's current session generation; None when the account no longer exists."""
    row = conn.execute("SELECT session_generation FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return int(row[0]) if row is not None else None


def _recent_failures(conn: sqlite3.Connection, scope: str, subject: str, since: float) -> list[float]:
    rows = conn.execute(
        "SELECT at FROM login_failures WHERE scope = ? AND subject = ? AND at > ? ORDER BY at", (scope, subject, since)
    )
    return [float(r[0]) for r in rows]


def _check_limits(conn: sqlite3.Connection, subjects: dict[str, str], limits: Limits, now: float) -> None:
    caps = {"account": limits.max_failures, "address": limits.max_failures_per_address}
    for scope, subject in subjects.items():
        failures = _recent_failures(conn, scope, subject, now - limits.window_s)
        if len(failures) >= caps[scope]:
            # Allowed again when enough of them have aged out of the window.
            raise RateLimited(int(failures[-caps[scope]] + limits.window_s - now) + 1)


def _record_failure(conn: sqlite3.Connection, subjects: dict[str, str], limits: Limits, now: float) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM login_failures WHERE at <= ?", (now - limits.window_s,))  # the table stays small
        for scope, subject in subjects.items():
            conn.execute("INSERT INTO login_failures (scope, subject, at) VALUES (?, ?, ?)", (scope, subject, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _guarded(
    conn: sqlite3.Connection,
    subjects: dict[str, str],
    limits: Limits,
    attempt: Callable[[], Account | None],
    failed: str,
) -> Account:
    """Run ``attempt`` unless ``subjects`` are over their limits; a None (a failure) is counted against them
    and raises AccountError(``failed``)."""
    now = time.time()
    _check_limits(conn, subjects, limits, now)
    account = attempt()
    if account is None:
        _record_failure(conn, subjects, limits, now)
        raise AccountError(failed)
    return account


def authenticate(conn: sqlite3.Connection, username: str, password: str, address: str, limits: Limits) -> Account:
    """The account, or AccountError (wrong name or password: one message for both) or RateLimited."""

    def attempt() -> Account | None:
        row = conn.execute("SELECT * FROM accounts WHERE username_key = ?", (name_key(username),)).fetchone()
        try:
            _hasher.verify(row["password_hash"] if row is not None else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or len(password) > PASSWORD_MAX:  # longer than any password that can be set
            return None
        if _hasher.check_needs_rehash(row["password_hash"]):  # parameters raised since it was hashed
            set_password(conn, int(row["id"]), password, end_sessions=False)
        conn.execute("UPDATE accounts SET last_login_at = ? WHERE id = ?", (db.now(), row["id"]))
        return _account(row)

    subjects = {"account": name_key(username), "address": address}
    return _guarded(conn, subjects, limits, attempt, "Wrong username or password.")


# -- nickname records from before accounts -------------------------------------------------------------------
def issue_claim_code(conn: sqlite3.Connection, nickname: str) -> str:
    """A one-time code for the unclaimed nickname record ``nickname`` (exact, as stored); replaces an older one."""
    row = conn.execute(
        "SELECT s.id, a.id AS account FROM students s LEFT JOIN accounts a ON a.student_id = s.id WHERE s.nickname = ?",
        (nickname,),
    ).fetchone()
    if row is None:
        raise AccountError(f"no student record with nickname {nickname!r}")
    if row["account"] is not None:
        raise AccountError(f"student {nickname!r} already has an account (reset its password instead)")
    code = _code(CLAIM_CODE_LEN)
    expires = (db.utc_now() + CLAIM_CODE_TTL).strftime(db.TIMESTAMP_FORMAT)
    conn.execute(
        "INSERT OR REPLACE INTO claim_codes (student_id, code_hash, expires_at) VALUES (?, ?, ?)",
        (row["id"], _code_hash(code), expires),
    )
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"


def claim(conn: sqlite3.Connection, code: str, password: str, username: str, address: str, limits: Limits) -> Account:
    """Turn the nickname record the code was issued for into a student account with this password.

    ``username`` empty keeps the nickname as the username. The code is used up; answers stay with the record.
    """
    check_password(password)
    # Wrong codes count against the address only: a claim names no account until its code is right.
    subjects = {"address": address}

    def attempt() -> Account | None:
        row = conn.execute(
            "SELECT c.student_id, s.nickname FROM claim_codes c JOIN students s ON s.id = c.student_id"
            " WHERE c.code_hash = ? AND c.expires_at > ?",
            (_code_hash(code), db.now()),
        ).fetchone()
        if row is None:
            return None
        account = create_account(conn, username.strip() or row["nickname"], password, "student", int(row["student_id"]))
        conn.execute("DELETE FROM claim_codes WHERE student_id = ?", (row["student_id"],))
        return account

    failed = "That claim code is not valid (or has expired); ask your teacher for a new one."
    return _guarded(conn, subjects, limits, attempt, failed)


# -- classes -------------------------------------------------------------------------------------------------
def create_class(conn: sqlite3.Connection, teacher: Account, name: str) -> str:
    """A class owned by ``teacher``; returns its join code."""
    if teacher.role != "teacher":
        raise AccountError("only a teacher account owns classes")
    name = display_name(name)
    if not 1 <= len(name) <= 64:
        raise AccountError("Give the class a name of 1 to 64 characters.")
    for _ in range(5):  # a code collision is ~1e-12 per class; retry rather than fail
        code = _code(CLASS_CODE_LEN)
        try:
            conn.execute(
                "INSERT INTO classes (name, code, teacher_id, created_at) VALUES (?, ?, ?, ?)",
                (name, code, teacher.id, db.now()),
            )
            return code
        except sqlite3.IntegrityError:
            continue
    raise RuntimeError("could not draw an unused class code")


def classes_of(conn: sqlite3.Connection, teacher: Account) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT c.id, c.name, c.code, c.created_at, COUNT(m.student_id) AS students FROM classes c"
        " LEFT JOIN class_members m ON m.class_id = c.id WHERE c.teacher_id = ? GROUP BY c.id ORDER BY c.id",
        (teacher.id,),
    ).fetchall()


def join_class(conn: sqlite3.Connection, student_id: int, code: str) -> str:
    """Add the student to the class with this code (again: nothing changes); returns the class's name."""
    row = conn.execute("SELECT id, name FROM classes WHERE code = ?", (normalize_code(code),)).fetchone()
    if row is None:
        raise AccountError("No class has that code; check it with your teacher.")
    conn.execute(
        "INSERT OR IGNORE INTO class_members (class_id, student_id, joined_at) VALUES (?, ?, ?)",
        (row["id"], student_id, db.now()),
    )
    return str(row["name"])


def classes_joined(conn: sqlite3.Connection, student_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT c.name FROM classes c JOIN class_members m ON m.class_id = c.id WHERE m.student_id = ? ORDER BY c.id",
        (student_id,),
    )
    return [str(r[0]) for r in rows]


# -- pages ---------------------------------------------------------------------------------------------------
def register_routes(
    app: Flask, conn: Callable[[], sqlite3.Connection], student_signed_in: Callable[[int], None]
) -> None:
    """Sign-in, registration, claim, class pages on ``app``. ``student_signed_in(student_id)`` prepares a
    signed-in student's first question. The session holds ``account_id``, ``role`` (the operator page checks
    ``role == "operator"``) and, for a student, ``student_id``: the signed cookie is the proof of sign-in."""
    limits = Limits(
        int(app.config["DKT_LOGIN_MAX_FAILURES"]),
        int(app.config["DKT_LOGIN_MAX_FAILURES_PER_ADDRESS"]),
        float(app.config["DKT_LOGIN_WINDOW_S"]),
    )
    if proxies := int(app.config["DKT_TRUSTED_PROXIES"]):
        # remote_addr becomes the address the nearest trusted proxy saw (the swarm's haproxy adds it): without
        # this every student behind the proxy shares one address, and one failure limit.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]

    def sign_in(account: Account) -> Response:
        messages = session.get("_flashes")  # what this request flashed (Flask keeps them in the session)
        session.clear()  # a new session for a new identity: nothing else carries over from before sign-in
        if messages:
            session["_flashes"] = messages
        session["account_id"] = account.id
        session["role"] = account.role
        session["generation"] = account.session_generation
        if account.student_id is not None:
            session["student_id"] = account.student_id
            student_signed_in(account.student_id)
        return redirect(url_for("index"))

    @app.before_request
    def end_reset_sessions() -> None:
        """A session from before its account's last password reset (or of a deleted account) is signed out
        here, before any page reads it: the signed cookie alone cannot be revoked, the generation in the
        database can. Sessions from before generations existed carry none and count as generation 0."""
        aid = session.get("account_id")
        if aid is not None and session_generation(conn(), int(aid)) != session.get("generation", 0):
            session.clear()

    def signed_in() -> Account | None:
        aid = session.get("account_id")
        return get(conn(), int(aid)) if aid is not None else None

    def address() -> str:
        return request.remote_addr or "unknown"

    def refused(template: str, e: Exception, status: int, **form: object) -> tuple[str, int]:
        """The form again with what was wrong (429 when rate-limited); its fields as typed, never a password."""
        flash(str(e), "error")
        return render_template(template, **form), 429 if isinstance(e, RateLimited) else status

    @app.post("/login")
    def login() -> str | Response | tuple[str, int]:
        username = request.form.get("username", "")
        try:
            account = authenticate(conn(), username, request.form.get("password", ""), address(), limits)
        except (RateLimited, AccountError) as e:
            return refused("signin.html", e, 401, username=display_name(username)[:32])
        return sign_in(account)

    @app.route("/register", methods=["GET", "POST"])
    def register() -> str | Response | tuple[str, int]:
        if request.method == "GET":
            return render_template("register.html")
        username, code = request.form.get("username", ""), request.form.get("class_code", "").strip()
        try:
            if code:  # checked first: a typo in the code must not leave an account behind
                class_id = conn().execute("SELECT 1 FROM classes WHERE code = ?", (normalize_code(code),)).fetchone()
                if class_id is None:
                    raise AccountError("No class has that code; check it with your teacher.")
            account = create_account(conn(), username, request.form.get("password", ""), "student")
            if code and account.student_id is not None:
                flash(f"You joined {join_class(conn(), account.student_id, code)}.", "ok")
        except AccountError as e:
            return refused("register.html", e, 400, username=display_name(username)[:32], class_code=code[:16])
        return sign_in(account)

    @app.route("/claim", methods=["GET", "POST"])
    def claim_record() -> str | Response | tuple[str, int]:
        if request.method == "GET":
            return render_template("claim.html")
        username = request.form.get("username", "")
        try:
            account = claim(
                conn(), request.form.get("code", ""), request.form.get("password", ""), username, address(), limits
            )
        except (RateLimited, AccountError) as e:
            return refused("claim.html", e, 400, username=display_name(username)[:32])
        flash("Welcome back: your earlier answers are kept.", "ok")
        return sign_in(account)

    @app.route("/join", methods=["GET", "POST"])
    def join() -> str | Response | tuple[str, int]:
        sid = session.get("student_id")
        if sid is None:
            return redirect(url_for("index"))
        if request.method == "POST":
            try:
                flash(f"You joined {join_class(conn(), int(sid), request.form.get('class_code', ''))}.", "ok")
                return redirect(url_for("practice"))
            except AccountError as e:
                return refused("join.html", e, 400, classes=classes_joined(conn(), int(sid)))
        return render_template("join.html", classes=classes_joined(conn(), int(sid)))

    @app.route("/classes", methods=["GET", "POST"])
    def classes() -> str | Response | tuple[str, int]:
        account = signed_in()
        if account is None or account.role != "teacher":
            return redirect(url_for("index"))
        status = 200
        if request.method == "POST":
            try:
                code = create_class(conn(), account, request.form.get("name", ""))
                flash(f"Class created: its code is {code}. Give it to your students.", "ok")
                return redirect(url_for("classes"))
            except AccountError as e:
                flash(str(e), "error")
                status = 400
        return render_template("classes.html", account=account, classes=classes_of(conn(), account)), status

    @app.post("/logout")
    def logout() -> Response:
        session.clear()
        return redirect(url_for("index"))
