"""Client settings: ``ClientSettings`` of dkt/settings.py (environment), overridable by ``create_app(config)``."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from dkt.settings import ClientSettings, load_or_exit, stop

log = logging.getLogger(__name__)

# Defaults that differ by consumer (pipeline.deploy falls back to DKT_SERVE_PORT): the client's own.
CLIENT_FALLBACKS: dict[str, Any] = {"DKT_INFERENCE_URL": "http://127.0.0.1:3000", "DKT_INFERENCE_URL_FILE": ""}
# Read here, but not app.config entries: the secret becomes SECRET_KEY, the others only matter at start-up.
NOT_IN_CONFIG = ("DKT_SECRET_KEY", "DKT_ENV", "DKT_CLIENT_PORT")


def load_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Flask config: every client variable (``overrides`` win, validated alike) plus ``SECRET_KEY``.

    A bad value stops start-up with ``error: NAME='value': ...`` on stderr and exit 2."""
    overrides = dict(overrides or {})
    declared = ClientSettings.variables()
    s = load_or_exit(ClientSettings, None, **{k: v for k, v in overrides.items() if k in declared})
    cfg = {k: v for k, v in s.env_values().items() if k not in NOT_IN_CONFIG}
    cfg.update({k: v for k, v in CLIENT_FALLBACKS.items() if cfg[k] is None})
    cfg.update(overrides)
    secret = cfg.get("SECRET_KEY") or (s.secret_key.get_secret_value() if s.secret_key else "")
    if not secret:
        if s.environment == "production":
            stop("DKT_SECRET_KEY must be set when DKT_ENV=production")
        # Sessions (and CSRF tokens) then last only as long as this process: fine for local use only.
        log.warning("DKT_SECRET_KEY is not set: using a random key for this process (set it in production)")
        secret = secrets.token_hex(32)
    cfg["SECRET_KEY"] = secret
    return cfg
