"""The inference service's settings, read once from the environment when the service module is imported."""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as e:
        raise SystemExit(f"env {name}={raw!r}: expected an integer") from e


MODEL_TAG = os.environ.get("DKT_MODEL_TAG", "dkt-model:latest")
MAX_HISTORY = _env_int("DKT_MAX_HISTORY", 10_000)  # answers per request; features use all of them
MAX_CANDIDATES = _env_int("DKT_MAX_CANDIDATES", 500)
MAX_BODY_BYTES = _env_int("DKT_MAX_BODY_BYTES", 4 * 1024 * 1024)
MAX_BATCH_SIZE = _env_int("DKT_MAX_BATCH_SIZE", 64)
SERVICE_TIMEOUT_S = _env_int("DKT_SERVICE_TIMEOUT_S", 30)
# One intra-op thread: batching already fills a core, and on a busy host torch's thread pool spin-waits
# (measured 10x slower per request with 2 threads on a loaded 2-core machine).
TORCH_THREADS = _env_int("DKT_TORCH_THREADS", 1)
ACCESS_LOG = os.environ.get("DKT_ACCESS_LOG", "1") not in ("0", "false", "no")  # one line per request
