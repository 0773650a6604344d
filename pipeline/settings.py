"""The pipeline's view of dkt/settings.py (where every variable is declared): the store settings and lookups."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dkt.settings import REPO_ROOT, SettingsError, StoreSettings, load, value

__all__ = ["REPO_ROOT", "SettingsError", "StoreSettings", "env_float", "env_path", "store_settings"]


def store_settings(env: Mapping[str, str] | None = None) -> StoreSettings:
    """Store settings from ``env`` (default: the environment); ``SettingsError`` naming the variable."""
    return load(StoreSettings, env)


def env_float(name: str, default: float) -> float:
    """A declared number variable; ``default`` only where its declaration leaves it unset."""
    v = value(name)
    return default if v is None else float(v)


def env_path(name: str, default: Path) -> Path:
    """A declared path variable; ``default`` where its declaration leaves it unset (a default depending on another)."""
    v = value(name)
    return default if v is None else Path(v)
