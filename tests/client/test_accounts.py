"""Accounts (client/accounts.py, docs/accounts.md): passwords, look-alike names, rate limits shared by workers,
classes, the operator's CLI, nickname records claimed with a one-time code, and the session secret."""

from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import stat
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from client import accounts, db
from client.cli import main as client_cli
from client.settings import load_settings
from dkt import secret_file
from tests.client.conftest import make_app
from tests.serving.servers import free_port
from tests.support.students import CSRF, client_server, password_of, sign_up_form

NICK = re.compile(r'id="nickname">([^<]*)<')


def token(html: str) -> str:
    m = CSRF.search(html)
    assert m, html[:300]
    return m.group(1)


def post(c: FlaskClient, path: str, form: dict[str, str], page: str = "/") -> tuple[int, str]:
    """POST ``form`` to ``path`` with the CSRF token of ``page``; the status and the page it ends on."""
    r = c.post(path, data={**form, "csrf_token": token(c.get(page).get_data(as_text=True))}, follow_redirects=True)
    return r.status_code, r.get_data(as_text=True)


def register(c: FlaskClient, username: str, **extra: str) -> tuple[int, str]:
    form = sign_up_form("", username)
    del form["csrf_token"]
    return post(c, "/register", {**form, **extra})


def login(c: FlaskClient, username: str, password: str, address: str = "127.0.0.1") -> tuple[int, str]:
    r = c.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token(c.get("/").get_data(as_text=True))},
        environ_base={"REMOTE_ADDR": address},
        follow_redirects=True,
    )
    return r.status_code, r.get_data(as_text=True)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_path: Path, *args: str) -> str:
    """`dkt client ARGS` in-process (the account commands need only DKT_CLIENT_DB); its stdout."""
    monkeypatch.setenv("DKT_CLIENT_DB", str(db_path))
    assert client_cli(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip()


@pytest.fixture
def app(tmp_path: Path, sim_dir: Path, dead_url: str) -> Flask:
    return make_app(tmp_path, sim_dir, dead_url, DKT_INFERENCE_RETRIES=1)


def test_names_are_normalized_and_look_alikes_refused(app: Flask) -> None:
    assert accounts.name_key(" Ａda  Lovelace ") == accounts.name_key("ada lovelace") == "ada lovelace"
    assert accounts.skeleton("coe") == accounts.skeleton("сое")  # all Cyrillic: one script, still a look-alike
    assert accounts.skeleton("ada") != accounts.skeleton("adb")
    c = app.test_client()
    assert register(c, "coe")[0] == 200
    for twin in ("COE", "ｃｏｅ", "сое"):  # case, fullwidth, Cyrillic с о е
        status, page = register(app.test_client(), twin)
        assert status == 400 and "username is taken" in page, twin
    status, page = register(app.test_client(), "cоe")  # Latin c, e with a Cyrillic о: mixed scripts
    assert status == 400 and "mixes alphabets" in page
    assert register(app.test_client(), "Zoë")[0] == 200  # any one script is fine
    with sqlite3.connect(app.config["DKT_CLIENT_DB"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 2


def test_a_name_is_no_longer_a_key_to_the_record(app: Flask) -> None:
    ada = app.test_client()
    status, page = register(ada, "ada")
    assert status == 200 and NICK.search(page).group(1) == "ada"  # type: ignore[union-attr]
    # Typing the name, as the nickname page allowed, gets no one into ada's record.
    intruder = app.test_client()
    status, page = register(intruder, "ada")
    assert status == 400 and "username is taken" in page
    assert login(intruder, "ada", "not her password")[0] == 401
    assert intruder.get("/practice").status_code == 302  # still signed out
    # Her password signs her in, with any case or width of her name; signing out ends it.
    assert login(intruder, "ADA", password_of("ada"))[0] == 200
    assert post(intruder, "/logout", {}, page="/practice")[0] == 200
    assert intruder.get("/practice").status_code == 302
    with sqlite3.connect(app.config["DKT_CLIENT_DB"]) as conn:
        hashed = conn.execute("SELECT password_hash FROM accounts").fetchone()[0]
    assert hashed.startswith("$argon2id$") and password_of("ada") not in hashed


def test_failed_sign_ins_are_limited_per_name_and_address_across_workers(
    tmp_path: Path, sim_dir: Path, dead_url: str
) -> None:
    limits = {"DKT_LOGIN_MAX_FAILURES": 3, "DKT_LOGIN_MAX_FAILURES_PER_ADDRESS": 5, "DKT_INFERENCE_RETRIES": 1}
    # Two app instances on one database: two gunicorn workers, each with its own memory.
    one, two = make_app(tmp_path, sim_dir, dead_url, **limits), make_app(tmp_path, sim_dir, dead_url, **limits)
    assert register(one.test_client(), "ada")[0] == 200 and register(one.test_client(), "bob")[0] == 200
    for app in (one, two, one):
        assert login(app.test_client(), "ada", "wrong password", "10.0.0.1")[0] == 401
    # The fourth try is refused before the password is looked at, on either worker, even the right password.
    status, page = login(two.test_client(), "ada", password_of("ada"), "10.0.0.2")
    assert status == 429 and "Too many failed tries" in page
    # Another name from the first address still works until that address has used up its own limit.
    assert login(one.test_client(), "bob", password_of("bob"), "10.0.0.1")[0] == 200
    for name in ("carol", "dave"):  # unknown names count too (and cost a hash: no probing for names)
        assert login(two.test_client(), name, "whatever1", "10.0.0.1")[0] == 401
    assert login(one.test_client(), "bob", password_of("bob"), "10.0.0.1")[0] == 429
    assert login(one.test_client(), "bob", password_of("bob"), "10.0.0.3")[0] == 200
    with sqlite3.connect(tmp_path / "client.db") as conn:
        counted = dict(conn.execute("SELECT scope, COUNT(*) FROM login_failures GROUP BY scope").fetchall())
    assert counted == {"account": 5, "address": 5}


def test_failures_age_out_of_the_window(tmp_path: Path, sim_dir: Path, dead_url: str) -> None:
    app = make_app(tmp_path, sim_dir, dead_url, DKT_LOGIN_MAX_FAILURES=1, DKT_LOGIN_WINDOW_S=600.0)
    assert register(app.test_client(), "ada")[0] == 200
    assert login(app.test_client(), "ada", "wrong password")[0] == 401
    assert login(app.test_client(), "ada", password_of("ada"))[0] == 429
    with sqlite3.connect(tmp_path / "client.db") as conn:  # ten minutes later, as far as the window is concerned
        conn.execute("UPDATE login_failures SET at = at - 601")
    assert login(app.test_client(), "ada", password_of("ada"))[0] == 200


@pytest.mark.parametrize("proxies, counted", [(0, "10.0.0.1"), (1, "192.0.2.7")])
def test_the_address_behind_a_trusted_proxy(
    tmp_path: Path, sim_dir: Path, dead_url: str, proxies: int, counted: str
) -> None:
    """Behind the swarm's haproxy every request comes from the proxy: its X-Forwarded-For names the student,
    believed only when DKT_TRUSTED_PROXIES says a proxy is there (else anyone could pick their address)."""
    app = make_app(tmp_path, sim_dir, dead_url, DKT_TRUSTED_PROXIES=proxies)
    c = app.test_client()
    form = {"username": "ada", "password": "wrong password", "csrf_token": token(c.get("/").get_data(as_text=True))}
    headers = {"X-Forwarded-For": "192.0.2.7"}  # what haproxy's `option forwardfor` adds
    assert c.post("/login", data=form, headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 401
    with sqlite3.connect(tmp_path / "client.db") as conn:
        assert conn.execute("SELECT subject FROM login_failures WHERE scope = 'address'").fetchall() == [(counted,)]


def test_teachers_own_classes_students_join_with_the_code(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = cli(monkeypatch, capsys, tmp_path / "client.db", "create-user", "--role", "teacher", "Ms Noether")
    assert len(password) >= 16
    teacher = app.test_client()
    status, page = login(teacher, "ms noether", password)
    assert status == 200 and 'id="classes"' in page  # a teacher lands on their classes
    status, page = post(teacher, "/classes", {"name": "5B maths"}, page="/classes")
    code = re.search(r'class="code">([A-Z0-9]{8})<', page).group(1)  # type: ignore[union-attr]
    assert status == 200 and "5B maths" in page
    assert teacher.get("/practice").status_code == 302  # no student record behind a teacher
    # Registering with a wrong code creates nothing; with the code (any case, dashes) joins the class.
    student = app.test_client()
    status, page = register(student, "emmy", class_code="WRONGCOD")
    assert status == 400 and "No class has that code" in page
    status, page = register(student, "emmy", class_code=f"{code[:4].lower()}-{code[4:]}")
    assert status == 200 and "You joined 5B maths" in page
    late = app.test_client()
    assert register(late, "late")[0] == 200
    status, page = post(late, "/join", {"class_code": code}, page="/join")
    assert status == 200 and "You joined 5B maths" in page
    assert post(late, "/join", {"class_code": code}, page="/join")[0] == 200  # again: still one membership
    assert ">2<" in teacher.get("/classes").get_data(as_text=True)  # the class has two students
    assert late.get("/classes").status_code == 302  # students do not see teachers' pages


def test_operator_account_from_the_cli(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dbp = tmp_path / "client.db"
    password = cli(monkeypatch, capsys, dbp, "create-user", "--role", "operator", "--if-missing", "operator")
    # Again (make up runs it each time): nothing on stdout, so nothing is printed twice.
    assert cli(monkeypatch, capsys, dbp, "create-user", "--role", "operator", "--if-missing", "operator") == ""
    op = app.test_client()
    r = op.post(
        "/login",
        data={"username": "operator", "password": password, "csrf_token": token(op.get("/").get_data(as_text=True))},
    )
    assert r.status_code == 302
    with op.session_transaction() as s:
        assert s["role"] == "operator" and "student_id" not in s  # the key the operator page checks
    assert op.get("/").headers["Location"] == "/operator"
    new = cli(monkeypatch, capsys, dbp, "reset-password", "operator")
    assert new != password
    assert login(app.test_client(), "operator", password)[0] == 401
    assert login(app.test_client(), "operator", new)[0] == 200
    monkeypatch.setenv("DKT_CLIENT_DB", str(dbp))
    assert client_cli(["create-user", "--role", "teacher", "--if-missing", "operator"]) == 2
    assert client_cli(["claim-code", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "error: dkt client: account 'operator' exists with role operator, not teacher" in err
    assert "error: dkt client: claim-code: no student record with nickname 'nobody'" in err


def test_nickname_records_are_claimed_with_a_one_time_code(
    tmp_path: Path, sim_dir: Path, dead_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A database from before accounts: the migrations up to the one that adds them, a nickname with answers.
    dbp = tmp_path / "client.db"
    number = next(n for n, step in db.MIGRATIONS if step.__name__ == "_add_accounts")
    with monkeypatch.context() as m:
        m.setattr(db, "MIGRATIONS", tuple((n, s) for n, s in db.MIGRATIONS if n < number))
        conn = db.connect(dbp)
        db.init(conn)
    conn.execute("INSERT INTO students (nickname, created_at) VALUES ('ada', '2026-01-05 10:00:00')")
    for i, code in enumerate((1, 0, 1)):
        conn.execute(
            "INSERT INTO interactions (student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
            " KnowledgeTag, given) VALUES (1, 'web-000001', ?, 'T1', ?, ?, 1, '7')",
            (f"I{i}", code, f"2026-01-05 10:0{i}:00"),
        )
    conn.close()
    app = make_app(tmp_path, sim_dir, dead_url, DKT_INFERENCE_RETRIES=1)  # migrates
    # The nickname is reserved: neither it nor a look-alike can be registered by someone else.
    for twin in ("ada", "ADA", "аda"):
        assert register(app.test_client(), twin)[0] == 400
    code = cli(monkeypatch, capsys, dbp, "claim-code", "ada")
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", code)
    student = app.test_client()
    bad = {"code": "AAAA-BBBB-CCCC", "password": "a new password", "username": ""}
    status, page = post(student, "/claim", bad, page="/claim")
    assert status == 400 and "claim code is not valid" in page
    status, page = post(student, "/claim", {**bad, "code": code.lower().replace("-", " ")}, page="/claim")
    assert status == 200 and "1/3 correct" not in page and "2/3 correct" in page  # her answers are hers
    again = app.test_client()
    assert post(again, "/claim", {**bad, "code": code}, page="/claim")[0] == 400  # one use
    assert login(again, "Ada", "a new password")[0] == 200
    with sqlite3.connect(dbp) as c:
        assert c.execute("SELECT DISTINCT userID FROM interactions").fetchall() == [("web-000001",)]
        assert c.execute("SELECT student_id, role FROM accounts").fetchall() == [(1, "student")]
        assert c.execute("SELECT COUNT(*) FROM claim_codes").fetchone()[0] == 0
    monkeypatch.setenv("DKT_CLIENT_DB", str(dbp))
    assert client_cli(["claim-code", "ada"]) == 2  # claimed: an operator resets its password instead
    assert "already has an account" in capsys.readouterr().err


def test_production_needs_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_settings({"DKT_ENV": "production"})
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == "error: DKT_SECRET_KEY must be set when DKT_ENV=production"


def _create(path: str) -> str:
    return secret_file.read_or_create(Path(path))


def test_secret_file_is_private_from_creation_and_made_once(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "client_secret_key"
    old = os.umask(0)  # a chmod-free creation must not depend on the umask to be private
    try:
        with multiprocessing.get_context("fork").Pool(6) as pool:
            values = pool.map(_create, [str(path)] * 12)
    finally:
        os.umask(old)
    assert len(set(values)) == 1 and len(values[0]) >= 40  # one winner; everyone reads its secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_file.read_or_create(path) == values[0]


@pytest.mark.slow  # a real gunicorn (two workers) and 20 argon2 verifications: ~15 s under load
def test_twenty_sign_ins_on_two_gunicorn_workers(tmp_path: Path, sim_dir: Path) -> None:
    env = {
        **os.environ,
        "DKT_ENV": "production",
        "DKT_SECRET_KEY": secret_file.read_or_create(tmp_path / "client_secret_key"),
        "DKT_CLIENT_DB": str(tmp_path / "client.db"),
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_INFERENCE_URL": f"http://127.0.0.1:{free_port()}",
        "DKT_INFERENCE_URL_FILE": "",
        "DKT_INFERENCE_RETRIES": "1",
    }
    with client_server(env, free_port(), tmp_path / "gunicorn.log") as base:
        first = requests.Session()
        form = sign_up_form(token(first.get(base + "/", timeout=30).text), "ada")
        assert first.post(base + "/register", data=form, timeout=30).status_code == 200
        ok = 0
        for _ in range(20):  # each a new browser: sign in, then the next pages (either worker) know who it is
            s = requests.Session()
            form = sign_up_form(token(s.get(base + "/", timeout=30).text), "ada")
            r = s.post(base + "/login", data=form, timeout=30)
            pages = [r, *(s.get(base + "/practice", timeout=30) for _ in range(3))]
            ok += all(p.status_code == 200 and 'id="nickname">ada<' in p.text for p in pages)
    assert ok == 20


def test_make_up_creates_the_operator_once_and_a_private_secret(
    tmp_path: Path, sim_dir: Path, dead_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import stack  # `make up`'s steps (dkt stack up)

    monkeypatch.setenv("DKT_CLIENT_DB", str(tmp_path / "client.db"))
    monkeypatch.setattr(stack, "VAR", tmp_path / "var")
    password = stack.ensure_operator()  # the real `python -m dkt client create-user` that `up` runs
    assert len(password) >= 16  # a second `up` prints none: --if-missing, test_operator_account_from_the_cli
    secret = stack.secret("client_secret_key")
    assert stat.S_IMODE((tmp_path / "var" / "secrets" / "client_secret_key").stat().st_mode) == 0o600
    assert stack.secret("client_secret_key") == secret
    op = make_app(tmp_path, sim_dir, dead_url, SECRET_KEY=secret).test_client()
    form = {"username": stack.OPERATOR_ACCOUNT, "password": password}
    assert op.post("/login", data={**form, "csrf_token": token(op.get("/").get_data(as_text=True))}).status_code == 302
    with op.session_transaction() as s:
        assert s["role"] == "operator"


def test_reset_password_ends_that_accounts_sessions_only(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reset password signs out every session of the account (the one who had the old password too), at its
    next request; other accounts stay signed in, and a re-hash at sign-in (same password) ends nothing."""
    dbp = tmp_path / "client.db"
    first, other = app.test_client(), app.test_client()
    assert register(first, "resetme")[0] == 200 and register(other, "bystander")[0] == 200
    second = app.test_client()
    assert login(second, "resetme", password_of("resetme"))[0] == 200
    for c in (first, second, other):
        assert c.get("/practice").status_code == 200  # signed in: the question page, no redirect
    # An old hash (other argon2 parameters) is re-hashed at the next sign-in: same password, sessions kept.
    old_hash = PasswordHasher(time_cost=1, memory_cost=8 * 1024).hash(password_of("resetme"))
    with sqlite3.connect(dbp) as c:
        c.execute("UPDATE accounts SET password_hash = ? WHERE username = 'resetme'", (old_hash,))
    assert login(app.test_client(), "resetme", password_of("resetme"))[0] == 200
    with sqlite3.connect(dbp) as c:
        assert c.execute("SELECT password_hash FROM accounts WHERE username = 'resetme'").fetchone()[0] != old_hash
    assert first.get("/practice").status_code == 200 and second.get("/practice").status_code == 200

    new = cli(monkeypatch, capsys, dbp, "reset-password", "resetme")
    for c in (first, second):
        r = c.get("/practice")
        assert r.status_code == 302 and r.headers["Location"] == "/", "a session from before the reset goes on"
        with c.session_transaction() as s:
            assert "account_id" not in s and "student_id" not in s  # cleared, not just redirected once
    assert other.get("/practice").status_code == 200  # another account's session is untouched
    fresh = app.test_client()
    assert login(fresh, "resetme", password_of("resetme"))[0] == 401
    assert login(fresh, "resetme", new)[0] == 200
    assert fresh.get("/practice").status_code == 200 and fresh.get("/practice").status_code == 200
