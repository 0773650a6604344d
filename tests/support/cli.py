"""``dkt`` commands run in the test's own process, for tests about what a command does rather than about its process.

A fresh ``dkt`` process pays its imports (pandas, Flask, torch: 0.7-1.5 CPU-s) before it does anything; in the test
worker those are already loaded. Every command's process contract (exit code 2, one ``error:`` line, no traceback,
run from outside the checkout) stays checked on the installed script by
tests/test_cli.py::test_bad_input_is_one_error_line_and_exit_2_in_every_group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def product_env(monkeypatch: pytest.MonkeyPatch, **values: str | Path) -> None:
    """This process's environment without the product's variables (a developer's DKT_STORE=s3 must not leak in),
    plus ``values``; undone after the test."""
    for name in [k for k in os.environ if k.startswith(("DKT_", "AWS_"))]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def in_process(argv: list[str | Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``dkt ARGV`` here: its exit code (a ``SystemExit``'s as the shell sees it), stdout and stderr."""
    from dkt.cli import main

    capsys.readouterr()  # what came before is not this command's
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
    out, err = capsys.readouterr()
    return code or 0, out, err
