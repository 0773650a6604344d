"""``dkt client``: the student web app's own commands (Flask's command line over ``client.create_app``).

\b
    dkt client run --port 5000        (the development server; make up runs gunicorn)
    dkt client export-interactions --since WATERMARK --out F   (update_data_dag's export)
    dkt client export-predictions --since WATERMARK --out F    (the prediction log of those answers)
    dkt client routes

The app reads its settings through dkt.settings (``dkt settings show``): a bad value stops it with one line.
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import FlaskGroup

from client import create_app


class _Formatter(click.HelpFormatter):
    """click's help with argparse's "usage:", the form every other dkt command prints."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, args, prefix="usage: " if prefix is None else prefix)


class _Context(click.Context):
    formatter_class = _Formatter


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
