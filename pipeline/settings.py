"""The pipeline's view of dkt/settings.py (where every variable is declared): the store settings."""

from __future__ import annotations

from collections.abc import Mapping

from dkt.settings import REPO_ROOT, SettingsError, StoreSettings, load

__all__ = ["REPO_ROOT", "SettingsError", "StoreSettings", "store_settings"]


def store_settings(env: Mapping[str, str] | None = None) -> StoreSettings:
    """Store settings from ``env`` (default: the environment); ``SettingsError`` naming the variable."""
    return load(StoreSettings, env)
