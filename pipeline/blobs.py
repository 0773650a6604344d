"""Two byte stores behind one small interface: a local directory and an S3 bucket (boto3).

Keys are ``/``-separated relative paths. The versioning rules (immutability,
manifests, pointers, push leases) live in ``pipeline.store``; this module only moves
bytes, plus the two primitives those rules need to be safe under concurrency:
a conditional write (create-if-absent, replace-if-unchanged) and a listing with ages.

Temporary files are never written outside the store or the destination folder, and
their names say whose they are (``.<name>.dkt-tmp.<host tag>.<pid>.<random>``), so
that the next run removes what a killed process left (``is_stale_tmp``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.settings import StoreSettings

CHUNK = 1 << 20
TMP_MARK = ".dkt-tmp."
# A temporary file of another host cannot be checked for a live owner; after this long it is garbage.
FOREIGN_TMP_MAX_AGE = 24 * 3600.0
_TMP_RE = re.compile(r"\.dkt-tmp\.([0-9a-f]{8})\.(\d+)\.[0-9a-f]+$")


class StoreError(RuntimeError):
    """Storage that cannot be read or written; the message names the store and the key."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# -- who owns a temporary file or a lease ------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def host_tag() -> str:
    """This machine (host name and boot), short: a pid is only meaningful on the host and boot that issued it."""
    return hashlib.sha1(f"{socket.gethostname()}|{_boot_id()}".encode()).hexdigest()[:8]


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if unknown): tells a reused pid from the original."""
    fields = _proc_stat(pid)
    return fields[19] if fields else ""


def pid_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` runs on this host (and, given ``start``, is still the same process); zombies count as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":
        return False
    return not start or fields[19] == start


def pid_cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ('' if it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def runs_command(pid: int, words: tuple[str, ...]) -> bool:
    """Whether ``pid``'s command line holds every one of ``words``: a pid file's pid is only the process it names
    if so (pids are reused). ``_`` counts as ``-``: Airflow retitles its api-server ``airflow api_server ...``."""
    cmdline = pid_cmdline(pid).replace("_", "-")
    return bool(cmdline) and all(w.replace("_", "-") in cmdline for w in words)


def tmp_name(name: str) -> str:
    return f".{name}{TMP_MARK}{host_tag()}.{os.getpid()}.{secrets.token_hex(4)}"


def is_stale_tmp(name: str, mtime: float, now: float | None = None) -> bool:
    """A temporary file whose writer is gone: dead pid on this host, or older than a day from another host."""
    m = _TMP_RE.search(name)
    if not m:
        return False
    tag, pid = m.group(1), int(m.group(2))
    if tag == host_tag():
        return not pid_alive(pid)
    return (now or time.time()) - mtime > FOREIGN_TMP_MAX_AGE


def sweep_tmp(folder: Path) -> list[Path]:
    """Remove the stale temporary files under ``folder`` (a pull destination); returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"*{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            if p.is_file() and is_stale_tmp(p.name, p.stat().st_mtime):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def staging_dir(parent: Path | None = None) -> Iterator[Path]:
    """A scratch folder that a killed process does not leak for long: the next caller removes dead owners' ones."""
    parent = Path(parent or tempfile.gettempdir())
    prefix = f"dkt-staging{TMP_MARK}{host_tag()}."
    for old in parent.glob(f"{prefix}*"):
        m = re.match(rf"{re.escape(prefix)}(\d+)\.", old.name)
        if m and old.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
    def get_bytes_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object's content and a tag that changes whenever it is rewritten; None when there is no such key."""

    @abstractmethod
    def put_bytes_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Write atomically only if the object is absent (``etag`` None) or still has ``etag``.

        Returns the new object's tag, or None when the condition did not hold (nothing written)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders under ``prefix``."""

    @abstractmethod
    def list_keys(self, prefix: str) -> dict[str, float]:
        """Every object under ``prefix/`` (key relative to ``prefix``) with its last-modified time (epoch seconds)."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """Hash of the stored object as read back, so a verify step checks what the store really holds."""

    def abort_uploads(self, prefix: str) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (S3); returns how many. Nothing to do locally."""
        return 0


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def url(self) -> str:
        return f"file://{self.root.resolve()}"

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or "\\" in key or ".." in key.split("/"):
            raise StoreError(f"{self.url}: invalid key {key!r}")
        return self.root / key

    def _write(self, key: str, fill: Any) -> None:
        """Write through a temporary file beside the target, then rename: never a half-written object."""
        dest = self._path(key)
        tmp = dest.with_name(tmp_name(dest.name))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fill(tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            tmp.replace(dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{self.url}: cannot write {key}: {exc}") from exc

    def put_file(self, key: str, src: Path) -> None:
        self._write(key, lambda tmp: shutil.copyfile(src, tmp))

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.url}: no object {key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(tmp_name(dest.name))
        try:
            shutil.copyfile(src, tmp)
            tmp.replace(dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{self.url}: cannot read {key} into {dest}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key}: {exc}") from exc

    def get_bytes_etag(self, key: str) -> tuple[bytes, str] | None:
        data = self.get_bytes(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    @contextlib.contextmanager
    def _dir_lock(self, key: str) -> Iterator[None]:
        # flock on the key's folder: every conditional writer of that folder queues here, and the lock
        # goes with the process if it is killed (no lock file to leave behind).
        folder = self._path(key).parent
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put_bytes_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        with self._dir_lock(key):
            cur = self.get_bytes_etag(key)
            if (cur is None) != (etag is None) or (cur is not None and cur[1] != etag):
                return None
            self.put_bytes(key, data)
            return hashlib.sha256(data).hexdigest()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot delete {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_dirs(self, prefix: str) -> list[str]:
        p = self._path(prefix) if prefix else self.root
        if not p.is_dir():
            return []
        return sorted(c.name for c in p.iterdir() if c.is_dir())

    def list_keys(self, prefix: str) -> dict[str, float]:
        p = self._path(prefix)
        out: dict[str, float] = {}
        if not p.is_dir():
            return out
        for f in p.rglob("*"):
            with contextlib.suppress(OSError):  # a file renamed away meanwhile is simply not listed
                if f.is_file():
                    out[f.relative_to(p).as_posix()] = f.stat().st_mtime
        return out

    def sha256(self, key: str) -> str:
        p = self._path(key)
        try:
            return sha256_file(p)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key}: {exc}") from exc

    def remove_empty_dirs(self, prefix: str) -> None:
        """Drop folders left empty by deletes (an abandoned version), deepest first."""
        p = self._path(prefix)
        if not p.is_dir():
            return
        for d in sorted((d for d in p.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            p.rmdir()


class S3BlobStore(BlobStore):
    """Any S3-compatible store: AWS, MinIO, moto... Credentials come from boto3's usual chain (env vars etc.)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60
            ),
        )

    @property
    def url(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"{self.url}: cannot {what} {key}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def put_file(self, key: str, src: Path) -> None:
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key))
        except Exception as exc:
            raise self._fail("upload", key, exc) from exc

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(tmp_name(dest.name))
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
        got = self.get_bytes_etag(key)
        return None if got is None else got[0]

    def get_bytes_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return obj["Body"].read(), str(obj["ETag"])
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    def put_bytes_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        # S3 conditional writes: If-None-Match: * creates only; If-Match replaces only the version we read.
        cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            return str(self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)["ETag"])
        except Exception as exc:
            # 412: precondition failed; 409: a concurrent conditional write is in flight; 404: gone meanwhile.
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return None
            raise self._fail("write", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
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

    def list_keys(self, prefix: str) -> dict[str, float]:
        full = self._key(prefix.strip("/")) + "/"
        out: dict[str, float] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for o in page.get("Contents", []):
                    out[o["Key"][len(full) :]] = o["LastModified"].timestamp()
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        return out

    def sha256(self, key: str) -> str:
        # Streamed: no temporary copy on local disk for a killed verify to leave behind.
        h = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            while chunk := body.read(CHUNK):
                h.update(chunk)
        except Exception as exc:
            raise self._fail("read", key, exc) from exc
        return h.hexdigest()

    def abort_uploads(self, prefix: str) -> int:
        # A killed multipart upload leaves invisible, billed parts; they go with the abandoned version.
        full = self._key(prefix.strip("/")) + "/"
        n = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full):
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        except Exception as exc:
            raise self._fail("abort uploads under", prefix, exc) from exc
        return n


def open_blobs(settings: StoreSettings) -> BlobStore:
    if settings.kind == "s3":
        return S3BlobStore(
            settings.bucket, settings.prefix, settings.endpoint_url, settings.region, settings.s3_max_attempts
        )
    return LocalBlobStore(settings.root)
