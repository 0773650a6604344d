"""`make setup`'s installer: `pip install ARGS` into the virtualenv of VENV_PYTHON, done by uv where there is one.

Usage: python3 mk/install.py VENV_PYTHON [--check] [pip install args...]

uv (PyPI) downloads, unpacks and byte-compiles in parallel: a fresh app venv takes a fraction of pip's CPU and wall
time (docs/testing.md has the figures). uv reads none of pip's configuration, so the settings pip would use (its
config files and PIP_* variables, as `pip config list` shows them) are passed to it: the same indexes, find-links,
constraints, certificate and timeout give the same resolution, e.g. the local CPU torch wheel from find-links rather
than a CUDA build from PyPI. `--index-strategy unsafe-best-match` is pip's rule (the best version over all indexes);
uv's default would stop at the first index that knows a name. `--compile-bytecode`: pip writes the .pyc at install
time, and where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) nothing else ever would, so every
process would compile its imports again. The uv binary: $UV; where that is unset or missing, pip does the install
and a warning says so (the result is the same, only slower). --check: then check the venv's dependencies are
consistent (`uv pip check`, or `pip check`).
"""

import ast
import os
import shutil
import subprocess
import sys

# pip's option (config key) -> uv's flag; the values of these keys are whitespace-separated lists.
LIST_OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
# Later sections win, as in pip: the config files' [global], then [install], then the PIP_* variables (":env:").
SECTIONS = ("global", "install", ":env:")


def pip_settings(python: str) -> dict[str, str]:
    """The install-relevant settings pip would apply in this venv, each key from the section that wins."""
    listing = subprocess.run([python, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True)
    found: dict[str, tuple[int, str]] = {}
    for line in listing.stdout.splitlines():
        name, _, raw = line.partition("=")
        section, _, key = name.rpartition(".")
        if section not in SECTIONS or not raw:
            continue
        rank = SECTIONS.index(section)
        if key not in found or found[key][0] <= rank:
            found[key] = (rank, ast.literal_eval(raw))
    return {key: value for key, (_, value) in found.items()}


def uv_command(uv: str, python: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """uv's `pip install` command line and environment that reproduce what `python -m pip install args` would do."""
    settings = pip_settings(python)
    command = [uv, "pip", "install", "--quiet", "--python", python, "--index-strategy", "unsafe-best-match"]
    command.append("--compile-bytecode")
    for key, flag in LIST_OPTIONS.items():
        for value in settings.get(key, "").split():
            command += [flag, value]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        command.append("--no-index")
    env = dict(os.environ)
    if "cert" in settings:  # uv's own roots would not trust a proxy's certificate that pip is told to
        env["SSL_CERT_FILE"] = settings["cert"]
    if "timeout" in settings or "default-timeout" in settings:
        env["UV_HTTP_TIMEOUT"] = settings.get("timeout", settings.get("default-timeout", ""))
    return command + args, env


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("error: usage: mk/install.py VENV_PYTHON [--check] [pip install args...]", file=sys.stderr)
        return 2
    python, args = argv[0], argv[1:]
    check = "--check" in args
    args = [arg for arg in args if arg != "--check"]
    uv = os.environ.get("UV") or shutil.which("uv") or ""
    if uv and os.access(uv, os.X_OK):
        command, env = uv_command(uv, python, args)
        subprocess.run(command, check=True, env=env)
        if check:
            subprocess.run([uv, "pip", "check", "--quiet", "--python", python], check=True)
        return 0
    print(
        f"warning: uv not found ({uv or 'UV unset, none on PATH'}): installing with pip, several times slower "
        "(make setup installs uv into the app venv first; see docs/testing.md)",
        file=sys.stderr,
    )
    subprocess.run([python, "-m", "pip", "install", "-q", *args], check=True)
    if check:
        subprocess.run([python, "-m", "pip", "check"], check=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd[:4]))} ... exited with {exc.returncode}", file=sys.stderr)
        sys.exit(exc.returncode or 1)
