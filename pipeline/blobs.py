"""Two byte stores behind one small interface: a local directory and an S3 bucket (boto3).

Keys are ``/``-separated relative paths. The versioning rules (immutability,
manifests, pointers) live in ``pipeline.store``; this module only moves bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from pipeline.settings import StoreSettings

CHUNK = 1 << 20


class StoreError(RuntimeError):
    """Storage that cannot be read or written; the message names the store and the key."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class BlobStore(ABC):
    @property
    @abstractmethod
    def url(self) -> str:
        """Where the store is, for messages (never includes credentials)."""

    @abstractmethod
    def put_file(self, key: str, src: Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when there is no such key."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders under ``prefix``."""

    def sha256(self, key: str) -> str:
        """Hash of the stored object as read back, so a verify step checks what the store really holds."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "blob"
            self.get_file(key, local)
            return sha256_file(local)


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def url(self) -> str:
        return f"file://{self.root.resolve()}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"{self.url}: invalid key {key!r}")
        return self.root / key

    def put_file(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copy then rename: a crash never leaves a half-written object under the real key.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src, tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            tmp.replace(dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{self.url}: cannot write {key}: {exc}") from exc

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.url}: no object {key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        try:
            self.put_file(key, Path(f.name))
        finally:
            Path(f.name).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_dirs(self, prefix: str) -> list[str]:
        p = self._path(prefix) if prefix else self.root
        if not p.is_dir():
            return []
        return sorted(c.name for c in p.iterdir() if c.is_dir())


class S3BlobStore(BlobStore):
    """Any S3-compatible store: AWS, MinIO, moto... Credentials come from boto3's usual chain (env vars etc.)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60),
        )

    @property
    def url(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{self.url}: cannot {what} {key}: {exc}")

    def put_file(self, key: str, src: Path) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key))
        except Exception as exc:
            raise self._fail("upload", key, exc) from exc

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            tmp.replace(dest)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail("download", key, exc) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("check", key, exc) from exc
        except Exception as exc:
            raise self._fail("check", key, exc) from exc

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix.strip("/")) + "/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    names.append(cp["Prefix"][len(full) :].rstrip("/"))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        return sorted(names)


def open_blobs(settings: StoreSettings) -> BlobStore:
    if settings.kind == "s3":
        return S3BlobStore(settings.bucket, settings.prefix, settings.endpoint_url, settings.region)
    return LocalBlobStore(settings.root)
