"""Client settings: environment variables with documented defaults, overridable by ``create_app(config)``."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "DKT_CLIENT_DB": "var/client.db",
    "DKT_QUESTIONS": "data/sim/questions.csv",
    "DKT_INFERENCE_URL": "http://127.0.0.1:3000",
    "DKT_INFERENCE_URL_FILE": "",
    "DKT_TARGET_DIFFICULTY": 0.7,
    "DKT_INFERENCE_TIMEOUT_S": 2.0,  # per attempt; the page never waits much longer than attempts x this
    "DKT_INFERENCE_RETRIES": 3,
    "DKT_CANDIDATE_POOL": 120,  # unanswered items scored to pick the next question
}


def load_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        raw = os.environ.get(key)
        if raw is None or raw == "":
            cfg[key] = default
            continue
        try:
            cfg[key] = type(default)(raw)
        except ValueError as e:
            raise SystemExit(f"env {key}={raw!r}: expected {type(default).__name__}") from e
    cfg.update(overrides or {})
    target = float(cfg["DKT_TARGET_DIFFICULTY"])
    if not 0.0 < target < 1.0:
        raise SystemExit(f"DKT_TARGET_DIFFICULTY must be between 0 and 1, got {target}")
    secret = cfg.get("SECRET_KEY") or os.environ.get("DKT_SECRET_KEY")
    if not secret:
        if os.environ.get("DKT_ENV") == "production":
            raise SystemExit("DKT_SECRET_KEY must be set when DKT_ENV=production")
        # Sessions (and CSRF tokens) then last only as long as this process: fine for local use only.
        log.warning("DKT_SECRET_KEY is not set: using a random key for this process (set it in production)")
        secret = secrets.token_hex(32)
    cfg["SECRET_KEY"] = secret
    return cfg
