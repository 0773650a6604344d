"""Versioned storage of data sets and models, on any ``BlobStore``.

Layout (under the store root or the S3 prefix)::

    datasets/<version>/<files...>      models/<version>/<files...>
    datasets/<version>/manifest.json   models/<version>/manifest.json
    <kind>/<version>/.push-lease.json  (only while a push runs)
    datasets/_pointers/latest.json     models/_pointers/{latest,production}.json
    state/<name>.json                  (pipeline state: the export watermark, what is serving)

Rules that make a crash or a race harmless:

- a version is never overwritten: pushing a complete version fails;
- a push first takes the version's lease (a conditional create: O_EXCL-like locally,
  ``If-None-Match: *`` on S3), renews it while it uploads, and writes ``manifest.json``
  last, again only if absent. Two pushes of one name: one version and one clear refusal.
  A version without a manifest whose lease is dead (its process is gone, or it was not
  renewed within the lease time) is an interrupted upload: the next push of that name takes it
  over and starts clean, and any push of the kind removes the other abandoned ones;
- every uploaded file is read back and its sha256 compared with the manifest before
  any pointer moves, so ``latest`` / ``production`` always name a complete, verified version;
- a pointer moves by compare-and-swap (a write conditional on the version read), so
  concurrent moves never lose one: each is one entry of the pointer's ``log``;
- everything read back (pointers, manifests, state) is validated; a corrupt object is a
  ``CorruptError`` naming its key, and manifest file names are checked (no absolute path,
  no ``..``) before ``pull`` writes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dkt.bundle import code_version, utc_now
from pipeline.blobs import (
    BlobStore,
    LocalBlobStore,
    StoreError,
    host_tag,
    is_stale_tmp,
    open_blobs,
    pid_alive,
    pid_start,
    sha256_file,
    sweep_tmp,
)
from pipeline.settings import StoreSettings, store_settings

Kind = Literal["datasets", "models"]
MANIFEST = "manifest.json"
LEASE = ".push-lease.json"
POINTERS = "_pointers"
# models/shadow: the candidate served beside production, logged, never shown (pipeline/promotions.py); may be unset.
POINTER_NAMES: dict[str, tuple[str, ...]] = {"datasets": ("latest",), "models": ("latest", "production", "shadow")}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
POINTER_HISTORY = 20
POINTER_LOG = 500  # moves kept in a pointer's log (the oldest are dropped beyond this)
CAS_ATTEMPTS = 200


class VersionError(ValueError):
    """A version that does not exist, already exists, or has a bad name."""


class IntegrityError(StoreError):
    """Stored bytes that do not match their manifest."""


class CorruptError(StoreError):
    """A pointer, manifest or state document that is not what this code wrote; the message names its key."""


class PointerMoved(VersionError):
    """A conditional pointer move found the pointer somewhere else than expected."""


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version) or version in ("latest", "production", "shadow"):
        raise VersionError(
            f"bad version name {version!r}: use letters, digits, '.', '_', '-' (not starting with '.', '_' or '-'),"
            " and not 'latest', 'production' or 'shadow'"
        )
    return version


def check_rel_path(rel: Any) -> str:
    """A manifest file name must stay inside the version: relative, '/'-separated, no '.', '..' or empty part."""
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"file name {rel!r} is not a non-empty string")
    parts = rel.split("/")
    if (
        rel.startswith("/")
        or "\\" in rel
        or "\x00" in rel
        or re.match(r"^[A-Za-z]:", rel)
        or any(p in ("", ".", "..") for p in parts)
        or rel == MANIFEST
    ):
        raise ValueError(f"file name {rel!r} is not a plain relative path inside the version")
    return rel


def count_rows(path: Path) -> int | None:
    """Data rows of a CSV (lines minus the header); None for other files."""
    if path.suffix != ".csv":
        return None
    with path.open("rb") as f:
        n = sum(1 for _ in f)
    return max(0, n - 1)


def lease_seconds() -> float:
    """DKT_STORE_LEASE_SECONDS (finite, at least 1: dkt/settings.py checks it)."""
    return store_settings().lease_seconds


@dataclass
class PushResult:
    kind: Kind
    version: str
    manifest: dict[str, Any]


def payload_files(src: Path) -> list[Path]:
    """The files of ``src`` a push uploads (hidden files and a stray manifest are not payload)."""
    return sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def manifest_matches(manifest: dict[str, Any], src: Path) -> bool:
    """Whether a stored version (its manifest) holds exactly the payload of ``src``: same names, same sha256."""
    stored = manifest.get("files", {})
    files = {p.relative_to(src).as_posix(): p for p in payload_files(src)}
    return set(files) == set(stored) and all(sha256_file(p) == stored[k]["sha256"] for k, p in files.items())


# -- validation of what is read back -----------------------------------------------------------
def _parse_json(url: str, key: str, raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptError(f"{url}: {key}: corrupt {what}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CorruptError(f"{url}: {key}: corrupt {what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def validate_pointer(url: str, key: str, doc: dict[str, Any]) -> dict[str, Any]:
    def bad(why: str) -> CorruptError:
        return CorruptError(f"{url}: {key}: corrupt pointer: {why} (repair it or delete the object to reset it)")

    v = doc.get("version")
    if not isinstance(v, str) or not VERSION_RE.match(v):
        raise bad(f"'version' is {v!r}, not a version name")
    hist = doc.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, str) and VERSION_RE.match(h) for h in hist):
        raise bad("'history' is not a list of version names")
    log = doc.get("log", [])
    if not isinstance(log, list) or not all(isinstance(e, dict) and isinstance(e.get("version"), str) for e in log):
        raise bad("'log' is not a list of moves")
    return doc


def validate_manifest(url: str, key: str, doc: dict[str, Any], kind: str, version: str | None) -> dict[str, Any]:
    def bad(why: str) -> CorruptError:
        return CorruptError(f"{url}: {key}: corrupt manifest: {why}")

    if not isinstance(doc.get("version"), str) or (version is not None and doc["version"] != version):
        raise bad(f"'version' is {doc.get('version')!r}, expected {version!r}")
    if doc.get("kind", kind) != kind:
        raise bad(f"'kind' is {doc.get('kind')!r}, expected {kind!r}")
    if not isinstance(doc.get("created_at"), str):
        raise bad("'created_at' is missing or not a string")
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("'files' is missing or not a non-empty object")
    for rel, entry in files.items():
        try:
            check_rel_path(rel)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not SHA_RE.match(entry["sha256"]):
            raise bad(f"file {rel!r}: 'sha256' is not 64 hex digits")
        if not isinstance(entry.get("bytes"), int) or entry["bytes"] < 0:
            raise bad(f"file {rel!r}: 'bytes' is not a non-negative integer")
    for name in ("rows", "metrics"):
        if not isinstance(doc.get(name, {}), dict):
            raise bad(f"{name!r} is not an object")
    return doc


# -- push leases ---------------------------------------------------------------------------------
def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "host_tag": host_tag(), "pid": pid, "pid_start": pid_start(pid)}


def lease_is_dead(doc: dict[str, Any] | None, ttl: float, now: float | None = None) -> bool:
    """A lease nobody holds any more: garbage, its process gone on this host, or not renewed for two lease times."""
    if not isinstance(doc, dict) or not isinstance(doc.get("renewed_at"), (int, float)):
        return True
    if doc.get("host_tag") == host_tag() and isinstance(doc.get("pid"), int):
        return not pid_alive(doc["pid"], str(doc.get("pid_start", "")))
    # Another host: trust its clock only with a wide margin; a live holder renews every ttl/4.
    return (now or time.time()) - float(doc["renewed_at"]) > 2 * ttl


@dataclass
class Lease:
    """This process's claim on ``<kind>/<version>/``, renewed by a thread until released."""

    store: VersionedStore
    key: str
    doc: dict[str, Any]
    etag: str
    ttl: float
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with self._lock:
                doc = {**self.doc, "renewed_at": time.time()}
                try:
                    etag = self.store.blobs.put_bytes_if(self.key, json.dumps(doc).encode(), self.etag)
                except StoreError:
                    continue  # a transient error: the next tick tries again, well inside the lease time
                if etag is None:
                    self.lost = f"{self.key}: the push lease was taken over by another process"
                    return
                self.doc, self.etag = doc, etag

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        if self.lost:
            raise VersionError(f"{self.store.blobs.url}: {self.lost}; this push stops")

    def release(self, delete: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if delete and not self.lost:
            with contextlib.suppress(StoreError):
                self.store.blobs.delete(self.key)


class VersionedStore:
    def __init__(self, blobs: BlobStore):
        self.blobs = blobs

    @classmethod
    def from_env(cls, settings: StoreSettings | None = None) -> VersionedStore:
        return cls(open_blobs(settings or store_settings()))

    def _read_doc(self, key: str, what: str) -> tuple[dict[str, Any], str] | None:
        got = self.blobs.get_bytes_etag(key)
        if got is None:
            return None
        return _parse_json(self.blobs.url, key, got[0], what), got[1]

    # -- pointers -------------------------------------------------------------------------
    def _pointer_key(self, kind: Kind, name: str) -> str:
        if name not in POINTER_NAMES[kind]:
            raise VersionError(f"{kind} have no pointer {name!r}; known: {list(POINTER_NAMES[kind])}")
        return f"{kind}/{POINTERS}/{name}.json"

    def _read_pointer(self, kind: Kind, name: str) -> tuple[dict[str, Any] | None, str | None]:
        key = self._pointer_key(kind, name)
        got = self._read_doc(key, "pointer")
        if got is None:
            return None, None
        return validate_pointer(self.blobs.url, key, got[0]), got[1]

    def pointer(self, kind: Kind, name: str) -> dict[str, Any] | None:
        return self._read_pointer(kind, name)[0]

    def pointed(self, kind: Kind, name: str) -> str | None:
        p = self.pointer(kind, name)
        return str(p["version"]) if p else None

    def _move(self, kind: Kind, name: str, make: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Compare-and-swap: read the pointer, build the new one, write it only if nobody wrote meanwhile."""
        key = self._pointer_key(kind, name)
        for attempt in range(CAS_ATTEMPTS):
            old, etag = self._read_pointer(kind, name)
            doc = make(old)
            log = [*(old or {}).get("log", []), {
                "version": doc["version"], "from": old["version"] if old else None,
                "at": doc["updated_at"], "reason": doc["reason"],
            }][-POINTER_LOG:]  # fmt: skip
            doc["log"] = log
            if self.blobs.put_bytes_if(key, json.dumps(doc, indent=2).encode(), etag) is not None:
                return doc
            # Lost the race: someone else moved it. Back off a little (randomised) and rebuild on theirs.
            time.sleep(random.uniform(0, min(0.5, 0.01 * (attempt + 1))))
        raise StoreError(f"{self.blobs.url}: {key}: gave up after {CAS_ATTEMPTS} concurrent updates")

    def set_pointer(
        self, kind: Kind, name: str, version: str, reason: str = "", only_if: str | None = None
    ) -> dict[str, Any]:
        """Move a pointer to a complete, verified version; the previous targets are kept for rollback.

        ``only_if``: move only while the pointer still names that version (else ``PointerMoved``)."""
        manifest = self.manifest(kind, version)
        self.verify(kind, version, manifest)

        def make(old: dict[str, Any] | None) -> dict[str, Any]:
            if only_if is not None and (old or {}).get("version") != only_if:
                raise PointerMoved(
                    f"{kind}/{name} names {(old or {}).get('version')!r}, not {only_if!r}: left where it is"
                )
            history: list[str] = []
            if old:
                history = [v for v in [old["version"], *old.get("history", [])] if v != version][:POINTER_HISTORY]
            return {"version": version, "updated_at": utc_now(), "reason": reason, "history": history}

        return self._move(kind, name, make)

    def rollback(self, kind: Kind, name: str) -> dict[str, Any]:
        """Point back to the previous target; the version rolled back from is dropped from the history."""

        def make(cur: dict[str, Any] | None) -> dict[str, Any]:
            if not cur or not cur.get("history"):
                raise VersionError(f"{kind}/{name}: no previous version to roll back to")
            prev, *rest = cur["history"]
            self.verify(kind, prev)
            return {"version": prev, "updated_at": utc_now(), "reason": f"rollback from {cur['version']}",
                    "history": rest}  # fmt: skip

        return self._move(kind, name, make)

    def clear_pointer(self, kind: Kind, name: str) -> str | None:
        """Remove a pointer (``models/shadow``: no shadow any more); returns the version it named, if any.

        A delete, not a compare-and-swap: a move racing it may be undone, which only an operator's
        ``dkt models shadow --clear`` or a shadow promotion does, one at a time."""
        key = self._pointer_key(kind, name)
        old = self.pointed(kind, name)
        if old is not None:
            self.blobs.delete(key)
        return old

    # -- versions -------------------------------------------------------------------------
    def resolve(self, kind: Kind, ref: str) -> str:
        """A version name, or a pointer name (``latest``, ``production``) turned into the version it names."""
        if ref in POINTER_NAMES[kind]:
            v = self.pointed(kind, ref)
            if v is None:
                raise VersionError(f"{self.blobs.url}: no {kind} version is {ref!r} yet")
            return v
        return check_version_name(ref)

    def manifest(self, kind: Kind, version: str) -> dict[str, Any]:
        key = f"{kind}/{check_version_name(version)}/{MANIFEST}"
        got = self._read_doc(key, "manifest")
        if got is None:
            raise VersionError(f"{self.blobs.url}: no complete {kind} version {version!r}")
        return validate_manifest(self.blobs.url, key, got[0], kind, version)

    def exists(self, kind: Kind, version: str) -> bool:
        return self.blobs.exists(f"{kind}/{check_version_name(version)}/{MANIFEST}")

    def versions(self, kind: Kind, errors: list[str] | None = None) -> list[dict[str, Any]]:
        """Complete versions (those with a manifest), oldest first.

        A corrupt manifest raises ``CorruptError``, or, given ``errors``, is described there and skipped."""
        out = []
        for name in self.blobs.list_dirs(kind):
            if name == POINTERS or not VERSION_RE.match(name):
                continue
            try:
                key = f"{kind}/{name}/{MANIFEST}"
                got = self._read_doc(key, "manifest")
                if got:
                    out.append(validate_manifest(self.blobs.url, key, got[0], kind, name))
            except CorruptError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
        return sorted(out, key=lambda m: (m.get("created_at", ""), m["version"]))

    # -- push -----------------------------------------------------------------------------
    def _wipe(self, prefix: str, keep: set[str] | None = None) -> int:
        """Delete every object under ``prefix`` (an abandoned upload) but ``keep``; returns how many."""
        keys = self.blobs.list_keys(prefix)
        n = 0
        for rel in keys:
            if rel not in (keep or set()):
                self.blobs.delete(f"{prefix}/{rel}")
                n += 1
        n += self.blobs.abort_uploads(prefix)
        if isinstance(self.blobs, LocalBlobStore) and not keep:
            self.blobs.remove_empty_dirs(prefix)
        return n

    def sweep(self, kind: Kind) -> list[str]:
        """Remove what killed pushes left: versions without a manifest whose lease is dead, and stale
        temporary files. Returns what it removed (for the log). Live pushes and complete versions are untouched."""
        ttl = lease_seconds()
        now = time.time()
        keys = self.blobs.list_keys(kind)
        by_dir: dict[str, dict[str, float]] = {}
        for rel, mtime in keys.items():
            top, _, rest = rel.partition("/")
            by_dir.setdefault(top, {})[rest] = mtime
        removed: list[str] = []
        for top, files in by_dir.items():
            if top != POINTERS and (not VERSION_RE.match(top) or "" in files):
                continue  # not a version folder this store wrote: not ours to remove
            if top == POINTERS or MANIFEST in files:
                if LEASE in files and (got := self._lease_doc(f"{kind}/{top}/{LEASE}")) and lease_is_dead(got[0], ttl):
                    self.blobs.delete(f"{kind}/{top}/{LEASE}")  # its pusher was killed right after completing
                for rest, mtime in files.items():  # a temporary file a killed pointer write or upload left
                    if is_stale_tmp(rest.rsplit("/", 1)[-1], mtime, now):
                        self.blobs.delete(f"{kind}/{top}/{rest}")
                        removed.append(f"{kind}/{top}/{rest}")
                continue
            if LEASE in files:
                got = self._lease_doc(f"{kind}/{top}/{LEASE}")
                if got is None or not lease_is_dead(got[0], ttl, now):
                    continue
                # Claim the dead lease before wiping, so a concurrent takeover by a pusher is not wiped under it.
                mine = {**_owner(), "token": uuid.uuid4().hex, "renewed_at": time.time(), "sweeping": True}
                if self.blobs.put_bytes_if(f"{kind}/{top}/{LEASE}", json.dumps(mine).encode(), got[1]) is None:
                    continue
                if self.blobs.exists(f"{kind}/{top}/{MANIFEST}"):  # completed since the listing
                    self.blobs.delete(f"{kind}/{top}/{LEASE}")
                    continue
                self._wipe(f"{kind}/{top}", keep={LEASE})
                self.blobs.delete(f"{kind}/{top}/{LEASE}")
                self._wipe(f"{kind}/{top}")
            elif now - max(files.values()) > 2 * ttl:
                # No manifest and no lease: an upload from before leases, or one killed before its lease;
                # nothing has written here for two lease times.
                self._wipe(f"{kind}/{top}")
            else:
                continue
            removed.append(f"{kind}/{top}/ (interrupted upload)")
        return removed

    def _lease_doc(self, key: str) -> tuple[dict[str, Any] | None, str] | None:
        got = self.blobs.get_bytes_etag(key)
        if got is None:
            return None
        try:
            doc = json.loads(got[0])
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = None  # a garbled lease is a dead one
        return (doc if isinstance(doc, dict) else None), got[1]

    def _exists_error(self, kind: Kind, version: str) -> VersionError:
        return VersionError(f"{self.blobs.url}: {kind} version {version!r} already exists; versions are immutable")

    def _reserve(self, kind: Kind, version: str) -> Lease:
        """Take the version's push lease, or refuse: a complete version, or a live push of it elsewhere."""
        key = f"{kind}/{version}/{LEASE}"
        ttl = lease_seconds()
        seen: tuple[str, float] | None = None  # (etag, monotonic time first seen) of another holder's lease
        while True:
            if self.exists(kind, version):
                raise self._exists_error(kind, version)
            doc = {**_owner(), "token": uuid.uuid4().hex, "acquired_at": time.time(), "renewed_at": time.time()}
            got = self._lease_doc(key)
            if got is None:
                if (etag := self.blobs.put_bytes_if(key, json.dumps(doc).encode(), None)) is not None:
                    return self._claimed(kind, version, key, doc, etag, ttl)
                continue
            cur, old = got
            if seen is None or seen[0] != old:
                if seen is not None:  # the holder renewed (or another took over): it is alive
                    raise self._busy(kind, version, cur)
                seen = (old, time.monotonic())
            if lease_is_dead(cur, ttl) or time.monotonic() - seen[1] > ttl:
                doc["took_over"] = cur
                if (etag := self.blobs.put_bytes_if(key, json.dumps(doc).encode(), old)) is not None:
                    # An interrupted upload of this very name: never refuse it, start it again from scratch.
                    return self._claimed(kind, version, key, doc, etag, ttl)
                seen = None
                continue
            if cur and cur.get("host_tag") == host_tag():
                raise self._busy(kind, version, cur)  # a live process on this host: no need to wait
            time.sleep(min(1.0, ttl / 8))  # another host: wait for one renewal (alive) or the lease time (dead)

    def _claimed(self, kind: Kind, version: str, key: str, doc: dict[str, Any], etag: str, ttl: float) -> Lease:
        # The previous holder may have completed the version just before it let the lease go.
        if self.exists(kind, version):
            self.blobs.delete(key)
            raise self._exists_error(kind, version)
        # Whatever is there came from an interrupted upload (or one from before leases): start clean.
        self._wipe(f"{kind}/{version}", keep={LEASE})
        return Lease(self, key, doc, etag, ttl).start()

    def _busy(self, kind: Kind, version: str, cur: dict[str, Any] | None) -> VersionError:
        who = f"pid {cur.get('pid')} on {cur.get('host')}" if cur else "another process"
        return VersionError(
            f"{self.blobs.url}: {kind} version {version!r} is being pushed by {who}; versions are immutable:"
            " wait for that push, or push under another version name"
        )

    @contextlib.contextmanager
    def reserved(self, kind: Kind, version: str) -> Iterator[Lease]:
        lease = self._reserve(kind, version)
        try:
            yield lease
        finally:
            lease.release()

    @contextlib.contextmanager
    def _clean_on_failure(self, kind: Kind, version: str, lease: Lease) -> Iterator[None]:
        """A push that fails removes what it uploaded (while still holding the lease): no half version stays."""
        try:
            yield
        except BaseException:
            # Best effort, the existence check included: when the store is what failed (its endpoint gone), the
            # check fails too, and its error would replace the push's own. The next push's sweep removes the rest.
            with contextlib.suppress(StoreError, OSError):
                if not lease.lost and not self.blobs.exists(f"{kind}/{version}/{MANIFEST}"):
                    self._wipe(f"{kind}/{version}", keep={LEASE})
            raise

    def push(
        self,
        kind: Kind,
        src: Path,
        version: str,
        parent: str | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        move_pointers: tuple[str, ...] = ("latest",),
        upload: Callable[[str, Path], None] | None = None,
    ) -> PushResult:
        """Upload every file of ``src`` as a new version, verify it, then move ``move_pointers``."""
        check_version_name(version)
        src = Path(src)
        files = payload_files(src)
        if not files:
            raise VersionError(f"{src}: nothing to push (no files)")
        for p in files:
            check_rel_path(p.relative_to(src).as_posix())
        if self.exists(kind, version):
            raise self._exists_error(kind, version)
        self.sweep(kind)
        with self.reserved(kind, version) as lease, self._clean_on_failure(kind, version, lease):
            entries: dict[str, dict[str, Any]] = {}
            for p in files:
                rel = p.relative_to(src).as_posix()
                entry: dict[str, Any] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                if (rows := count_rows(p)) is not None:
                    entry["rows"] = rows
                entries[rel] = entry
            manifest = {
                "kind": kind,
                "version": version,
                "parent": parent,
                # Microseconds so that versions pushed within one second still list in push order.
                "created_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "code_version": code_version(),
                "files": entries,
                "rows": {k: v["rows"] for k, v in entries.items() if "rows" in v},
                "metrics": metrics or {},
                **(extra or {}),
            }
            put = upload or self.blobs.put_file
            for rel in entries:
                lease.check()
                put(f"{kind}/{version}/{rel}", src / rel)
            # Verify before the manifest exists: an unverified version is never visible as complete.
            self._verify_files(kind, version, entries)
            lease.check()
            body = json.dumps(manifest, indent=2, default=str).encode()
            if self.blobs.put_bytes_if(f"{kind}/{version}/{MANIFEST}", body, None) is None:
                raise VersionError(f"{self.blobs.url}: {kind} version {version!r} was completed by another push")
        for name in move_pointers:
            self.set_pointer(kind, name, version, reason="push")
        return PushResult(kind, version, manifest)

    def _verify_files(self, kind: Kind, version: str, entries: dict[str, dict[str, Any]]) -> None:
        for rel, entry in entries.items():
            key = f"{kind}/{version}/{rel}"
            if not self.blobs.exists(key):
                raise IntegrityError(f"{self.blobs.url}: {key} missing after upload")
            got = self.blobs.sha256(key)
            if got != entry["sha256"]:
                raise IntegrityError(f"{self.blobs.url}: {key} sha256 {got[:12]}… != manifest {entry['sha256'][:12]}…")

    def verify(self, kind: Kind, version: str, manifest: dict[str, Any] | None = None) -> None:
        manifest = manifest or self.manifest(kind, version)
        self._verify_files(kind, version, manifest["files"])

    def pull(self, kind: Kind, ref: str, dest: Path) -> dict[str, Any]:
        """Download a version into ``dest`` (checked against the manifest); returns the manifest."""
        version = self.resolve(kind, ref)
        manifest = self.manifest(kind, version)  # validated: every file name is a plain relative path
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        targets = {}
        for rel in manifest["files"]:
            target = (dest / rel).resolve()
            if not target.is_relative_to(root):  # e.g. a symlinked folder inside dest
                key = f"{kind}/{version}/{MANIFEST}"
                raise CorruptError(f"{self.blobs.url}: {key}: file {rel!r} would be written outside {dest}")
            targets[rel] = dest / rel
        sweep_tmp(dest)  # what a killed pull into this folder left
        for rel, entry in manifest["files"].items():
            target = targets[rel]
            if target.is_file() and sha256_file(target) == entry["sha256"]:
                continue  # already there: pulling again is cheap and idempotent
            self.blobs.get_file(f"{kind}/{version}/{rel}", target)
            if (got := sha256_file(target)) != entry["sha256"]:
                target.unlink(missing_ok=True)
                raise IntegrityError(f"{self.blobs.url}: {kind}/{version}/{rel} downloaded with sha256 {got[:12]}…")
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    # -- small state documents ------------------------------------------------------------
    def get_state(self, name: str) -> dict[str, Any] | None:
        got = self._read_doc(f"state/{name}.json", "state document")
        return got[0] if got else None

    def put_state(self, name: str, doc: dict[str, Any]) -> None:
        self.blobs.put_bytes(f"state/{name}.json", json.dumps({**doc, "updated_at": utc_now()}, indent=2).encode())
