"""``dkt client``: the student web app's own commands (Flask's command line over ``client.create_app``).

\b
    dkt client run --port 5000        (the development server; make up runs gunicorn)
    dkt client export-interactions --since WATERMARK --out F   (update_data_dag's export)
    dkt client export-predictions --since WATERMARK --out F    (the prediction log of those answers)
    dkt client routes
    dkt client create-user --role operator|teacher|student NAME   (prints a generated password, once)
    dkt client reset-password NAME                                (a new generated password, printed once)
    dkt client claim-code NICKNAME     (a one-time code for a nickname record from before accounts)

The app reads its settings through dkt.settings (``dkt settings show``): a bad value stops it with one line.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys

import click
from flask import Flask
from flask.cli import FlaskGroup

from client import accounts, create_app, db
from dkt.settings import ClientSettings, load_or_exit


class _Formatter(click.HelpFormatter):
    """click's help with argparse's "usage:", the form every other dkt command prints."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, args, prefix="usage: " if prefix is None else prefix)


class _Context(click.Context):
    formatter_class = _Formatter


class _Refused(click.ClickException):
    exit_code = 2  # bad input, as every dkt command reports it


def _accounts_db() -> sqlite3.Connection:
    conn = db.connect(load_or_exit(ClientSettings).client_db)
    db.init(conn)
    return conn


def _shown_once(what: str, secret: str) -> None:
    """The secret alone on stdout (what a script captures: make up, the init script), the words on stderr."""
    click.echo(what, err=True)
    click.echo(secret)


@click.group()
def _account_commands() -> None:
    """Account commands: they need only the client database (DKT_CLIENT_DB), not the item bank."""


@_account_commands.command("create-user")
@click.option("--role", type=click.Choice(accounts.ROLES), required=True, help="what the account may do")
@click.option("--if-missing", is_flag=True, help="an existing account of that name is fine: say so, print nothing")
@click.argument("username")
def create_user(role: str, if_missing: bool, username: str) -> None:
    """Create an account with a generated password, printed once on stdout (stored only as its argon2 hash)."""
    with contextlib.closing(_accounts_db()) as conn:
        existing = accounts.find(conn, username)
        if existing is not None and if_missing:
            if existing.role != role:
                raise _Refused(f"account {existing.username!r} exists with role {existing.role}, not {role}")
            reset = f"dkt client reset-password {existing.username}"
            click.echo(f"account {existing.username!r} ({role}) exists; its password was printed when it was"
                       f" created (`{reset}` sets a new one)", err=True)  # fmt: skip
            return
        password = accounts.generate_password()
        try:
            account = accounts.create_account(conn, username, password, role)
        except accounts.AccountError as e:
            raise _Refused(f"create-user {username!r}: {e}") from None
    _shown_once(f"created {role} account {account.username!r}; its password (shown once, keep it now):", password)


@_account_commands.command("reset-password")
@click.argument("username")
def reset_password(username: str) -> None:
    """Give an account a new generated password, printed once on stdout; its existing sessions end."""
    with contextlib.closing(_accounts_db()) as conn:
        account = accounts.find(conn, username)
        if account is None:
            raise _Refused(f"reset-password: no account named {username!r}")
        password = accounts.generate_password()
        accounts.set_password(conn, account.id, password)
    # set_password bumps the account's session generation: whoever is signed in with the old password is out.
    _shown_once(f"new password for {account.role} account {account.username!r} (shown once; its existing sessions"
                " are signed out):", password)  # fmt: skip


@_account_commands.command("claim-code")
@click.argument("nickname")
def claim_code(nickname: str) -> None:
    """A one-time code (valid 14 days) with which the student who used NICKNAME before accounts claims it."""
    with contextlib.closing(_accounts_db()) as conn:
        try:
            code = accounts.issue_claim_code(conn, nickname)
        except accounts.AccountError as e:
            raise _Refused(f"claim-code: {e}") from None
    _shown_once(f"claim code for {nickname!r} (one use, 14 days; hand it to the student for /claim):", code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _account_commands.commands:
        return _run(_account_commands, argv)
    try:
        # Built here, not inside Flask's loader: a missing item bank or a bad setting is one line, not
        # the traceback Flask's CLI would print while listing commands.
        app = create_app()
    except (ValueError, OSError) as exc:  # DataValidationError, SettingsError are ValueErrors
        if argv and not {"-h", "--help"} & set(argv):
            print(f"error: dkt client: {exc}", file=sys.stderr)
            return 2
        app = Flask("client")  # --help still answers; the app's own commands need a valid setup
    group = FlaskGroup(create_app=lambda: app, load_dotenv=False, help=__doc__)
    for command in _account_commands.commands.values():
        group.add_command(command)  # listed in --help beside the app's commands
    return _run(group, argv)


def _run(group: click.Group, argv: list[str]) -> int:
    group.context_class = _Context
    try:
        # standalone_mode=False: click hands usage errors back instead of printing its multi-line block,
        # so `dkt client` reports them like every other dkt command (one line, exit 2).
        result = group.main(args=argv, prog_name="dkt client", standalone_mode=False)
    except click.UsageError as exc:
        print(f"error: dkt client: {exc.format_message()} (see dkt client --help)", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"error: dkt client: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code or 1
    except click.exceptions.Abort:
        return 1
    return result if isinstance(result, int) else 0
