"""Pipeline settings from environment variables, each with a documented default (docs/pipeline.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """An environment variable with a value the pipeline cannot use; the message names it."""


class StoreSettings(BaseModel):
    kind: Literal["local", "s3"] = "local"
    root: Path = Field(default=REPO_ROOT / "var" / "store")
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v.strip("/")


# Environment variable -> field; the table is the documentation's source of truth too.
STORE_ENV = {
    "DKT_STORE": "kind",
    "DKT_STORE_ROOT": "root",
    "DKT_S3_BUCKET": "bucket",
    "DKT_S3_PREFIX": "prefix",
    "DKT_S3_ENDPOINT_URL": "endpoint_url",
    "AWS_DEFAULT_REGION": "region",
}


def store_settings(env: dict[str, str] | None = None) -> StoreSettings:
    env = dict(os.environ if env is None else env)
    raw = {field: env[name] for name, field in STORE_ENV.items() if env.get(name)}
    # boto3 reads AWS_ENDPOINT_URL itself, but naming it here lets the error messages say which store is used.
    if "endpoint_url" not in raw and env.get("AWS_ENDPOINT_URL"):
        raw["endpoint_url"] = env["AWS_ENDPOINT_URL"]
    try:
        s = StoreSettings(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = next((n for n, f in STORE_ENV.items() if f == first["loc"][0]), str(first["loc"][0]))
        raise SettingsError(f"environment variable {name}: {first['msg']}") from None
    if s.kind == "s3" and not s.bucket:
        raise SettingsError("DKT_STORE=s3 needs DKT_S3_BUCKET (the bucket name)")
    return s


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name}: expected a number, got {raw!r}") from None


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw) if raw else default
