"""Generated secrets kept in files that only their owner can read, from the moment they exist.

    read_or_create(Path("var/secrets/client_secret_key"))   # generated once, then read

The file is created with ``os.open(O_CREAT | O_EXCL, 0o600)``: there is no moment at which it exists with a
wider mode (a chmod after writing leaves one), and of two processes creating it at once one wins and the
other reads the winner's secret.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

WAIT_S = 5.0  # how long a reader waits for a concurrent creator to finish writing


def read_or_create(path: Path, nbytes: int = 32) -> str:
    """The secret in ``path``; created (URL-safe text of ``nbytes`` random bytes, mode 0600) when absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    return value


def _read(path: Path) -> str:
    deadline = time.monotonic() + WAIT_S
    while not (text := path.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)  # created a moment ago by another process that is still writing it
    if not text:
        raise ValueError(f"{path}: secret file is empty (remove it to generate a new one)")
    return text
