"""Versioned storage of data sets and models, on any ``BlobStore``.

Layout (under the store root or the S3 prefix)::

    datasets/<version>/manifest.json   models/<version>/<files...>
    datasets/_parts/<version>/<token>/<name>.parquet   models/<version>/manifest.json
    datasets/<version>/<files...>      (a data version written before partitions: its three CSVs)
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

A data version is a list of Parquet partitions (``push_partitions``): its parent's, by reference, and its own
new rows', uploaded under ``datasets/_parts/<version>/<token>/`` (a fresh token per push attempt, so a partition
a kept version still names is never the target of a later upload). ``prune`` keeps the last N data versions,
the one ``latest`` names and every one a stored model names, and deletes a partition only once no manifest
names it: a manifest goes before its folder and before the partitions it referenced, so a prune killed at any
point leaves every remaining manifest complete (what it left is removed by the next prune or push).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import sys
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
PARTS = "_parts"  # under datasets/: the partitions, outside any one version's folder (kept versions share them)
PARTITIONED = "parquet-partitions"  # a data manifest's "format"
# A data version's CSVs (what pull writes) and the partition count that adds up to each one's rows.
PART_FILES = {"interactions.csv": "rows", "train.csv": "train_rows", "test.csv": "test_rows"}
PART_COUNTS = tuple(PART_FILES.values())
LEASE = ".push-lease.json"
POINTERS = "_pointers"
# models/shadow: the candidate served beside production, logged, never shown (pipeline/promotions.py); may be unset.
POINTER_NAMES: dict[str, tuple[str, ...]] = {"datasets": ("latest",), "models": ("latest", "production", "shadow")}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# _parts/<version>/<token>/<name>.parquet: plain names only, so a partition key can never leave a pull's folder.
PART_KEY_RE = re.compile(rf"^{PARTS}/({VERSION_RE.pattern[1:-1]})/[0-9a-f]{{16}}/[A-Za-z0-9][A-Za-z0-9._-]*\.parquet$")
POINTER_HISTORY = 20
POINTER_LOG = 500  # moves kept in a pointer's log (the oldest are dropped beyond this)
CAS_ATTEMPTS = 200
# Where a prune can be killed with a visible effect: a manifest deleted, its folder not; a partition deleted.
PRUNE_POINTS = ("prune:after_manifest", "prune:after_partition")


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
class PruneReport:
    kept: list[str]
    dry_run: bool
    removed: list[str] = field(default_factory=list)  # data versions
    parts: list[str] = field(default_factory=list)  # partition keys under datasets/
    bytes_freed: int = 0  # of the removed partitions and CSV versions' files (as their manifests give them)


@dataclass
class PushResult:
    kind: Kind
    version: str
    manifest: dict[str, Any]


def payload_files(src: Path) -> list[Path]:
    """The files of ``src`` a push uploads (hidden files and a stray manifest are not payload)."""
    return sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def own_partitions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The partitions a data version uploaded itself (the others are its ancestors')."""
    return [e for e in manifest.get("partitions", []) if e["version"] == manifest["version"]]


def manifest_matches(manifest: dict[str, Any], src: Path) -> bool:
    """Whether a stored version (its manifest) holds exactly the payload of ``src``: same names, same sha256.

    A partitioned data version: its own partitions against ``src``'s ``*.parquet`` files."""
    if manifest.get("format") == PARTITIONED:
        stored = {e["key"].rsplit("/", 1)[1]: e for e in own_partitions(manifest)}
        files = {p.name: p for p in src.glob("*.parquet")}
    else:
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
    partitioned = kind == "datasets" and doc.get("format") == PARTITIONED
    if not isinstance(files, dict) or not (files or partitioned):
        raise bad("'files' is missing or not a non-empty object")
    if partitioned:
        _validate_partitions(doc.get("partitions"), bad)
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


def _validate_partitions(parts: Any, bad: Callable[[str], CorruptError]) -> None:
    if not isinstance(parts, list) or not parts:
        raise bad("'partitions' is missing or not a non-empty list")
    for e in parts:
        if not isinstance(e, dict) or not isinstance(e.get("key"), str) or not (m := PART_KEY_RE.match(e["key"])):
            raise bad(f"partition {e!r:.120}: 'key' is not _parts/<version>/<token>/<name>.parquet")
        if e.get("version") != m.group(1):
            raise bad(f"partition {e['key']!r}: 'version' is {e.get('version')!r}, not the version its key names")
        if not isinstance(e.get("sha256"), str) or not SHA_RE.match(e["sha256"]):
            raise bad(f"partition {e['key']!r}: 'sha256' is not 64 hex digits")
        for n in ("bytes", *PART_COUNTS):
            if not isinstance(e.get(n), int) or e[n] < 0:
                raise bad(f"partition {e['key']!r}: {n!r} is not a non-negative integer")


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
    def _clean_on_failure(self, kind: Kind, version: str, lease: Lease, also: str | None = None) -> Iterator[None]:
        """A push that fails removes what it uploaded (while still holding the lease): no half version stays.

        ``also``: another prefix this push attempt alone wrote (its partitions)."""
        try:
            yield
        except BaseException:
            # Best effort, the existence check included: when the store is what failed (its endpoint gone), the
            # check fails too, and its error would replace the push's own. The next push's sweep removes the rest.
            with contextlib.suppress(StoreError, OSError):
                if not lease.lost and not self.blobs.exists(f"{kind}/{version}/{MANIFEST}"):
                    self._wipe(f"{kind}/{version}", keep={LEASE})
                    if also:
                        self._wipe(also)
            raise

    def _new_manifest(
        self, kind: Kind, version: str, parent: str | None, files: dict[str, Any], metrics: Any, extra: Any
    ) -> dict[str, Any]:
        return {
            "kind": kind,
            "version": version,
            "parent": parent,
            # Microseconds so that versions pushed within one second still list in push order.
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "code_version": code_version(),
            "files": files,
            "rows": {k: v["rows"] for k, v in files.items() if "rows" in v},
            "metrics": metrics or {},
            **(extra or {}),
        }

    def _complete(self, kind: Kind, version: str, manifest: dict[str, Any], lease: Lease) -> None:
        """Write the manifest, last and only if absent: from then on the version exists."""
        lease.check()
        body = json.dumps(manifest, indent=2, default=str).encode()
        if self.blobs.put_bytes_if(f"{kind}/{version}/{MANIFEST}", body, None) is None:
            raise VersionError(f"{self.blobs.url}: {kind} version {version!r} was completed by another push")

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
            manifest = self._new_manifest(kind, version, parent, entries, metrics, extra)
            put = upload or self.blobs.put_file
            for rel in entries:
                lease.check()
                put(f"{kind}/{version}/{rel}", src / rel)
            # Verify before the manifest exists: an unverified version is never visible as complete.
            self._verify_keys({f"{kind}/{version}/{rel}": e for rel, e in entries.items()})
            self._complete(kind, version, manifest, lease)
        for name in move_pointers:
            self.set_pointer(kind, name, version, reason="push")
        return PushResult(kind, version, manifest)

    def push_partitions(
        self,
        version: str,
        src: Path,
        counts: dict[str, dict[str, int]],
        inherited: list[dict[str, Any]],
        parent: str | None = None,
        extra: dict[str, Any] | None = None,
        move_pointers: tuple[str, ...] = ("latest",),
        upload: Callable[[str, Path], None] | None = None,
    ) -> PushResult:
        """A data version as partitions: ``src``'s ``*.parquet`` files (rows per file in ``counts``) are its own,
        uploaded and verified under a fresh ``_parts/<version>/<token>/``; ``inherited`` (its parent's partition
        entries) are named by reference, after checking they are still stored. Same lease and manifest-last
        rules as ``push``."""
        check_version_name(version)
        files = sorted(Path(src).glob("*.parquet"))
        if not files:
            raise VersionError(f"{src}: nothing to push (no .parquet partition)")
        for p in files:
            if p.name not in counts or set(counts[p.name]) != set(PART_COUNTS):
                raise VersionError(f"{p}: no row counts ({', '.join(PART_COUNTS)}) given for this partition")
        if self.exists("datasets", version):
            raise self._exists_error("datasets", version)
        self.sweep("datasets")
        prefix = f"{PARTS}/{version}/{uuid.uuid4().hex[:16]}"
        with (
            self.reserved("datasets", version) as lease,
            self._clean_on_failure("datasets", version, lease, also=f"datasets/{prefix}"),
        ):
            own = [
                {"key": f"{prefix}/{p.name}", "version": version, "sha256": sha256_file(p), "bytes": p.stat().st_size,
                 **counts[p.name]}
                for p in files
            ]  # fmt: skip
            partitions = [*inherited, *own]
            rows = {f: sum(e[n] for e in partitions) for f, n in PART_FILES.items()}
            meta = {"format": PARTITIONED, "partitions": partitions, "added_bytes": sum(e["bytes"] for e in own)}
            manifest = self._new_manifest("datasets", version, parent, {}, None, {**(extra or {}), **meta})
            manifest["rows"] = rows
            put = upload or self.blobs.put_file
            for e, p in zip(own, files, strict=True):
                lease.check()
                put(f"datasets/{e['key']}", p)
            self._verify_keys({f"datasets/{e['key']}": e for e in own})
            # The parent's partitions: a prune may have removed them since they were read (their line abandoned).
            self._check_present(inherited)
            self._complete("datasets", version, manifest, lease)
        for name in move_pointers:
            self.set_pointer("datasets", name, version, reason="push")
        return PushResult("datasets", version, manifest)

    def _check_present(self, partitions: list[dict[str, Any]]) -> None:
        for e in partitions:
            if not self.blobs.exists(f"datasets/{e['key']}"):
                where = f"{self.blobs.url}: datasets/{e['key']}"
                raise IntegrityError(f"{where} (a partition of data version {e['version']}) is missing")

    def _verify_keys(self, entries: dict[str, dict[str, Any]]) -> None:
        for key, entry in entries.items():
            if not self.blobs.exists(key):
                raise IntegrityError(f"{self.blobs.url}: {key} missing after upload")
            got = self.blobs.sha256(key)
            if got != entry["sha256"]:
                raise IntegrityError(f"{self.blobs.url}: {key} sha256 {got[:12]}… != manifest {entry['sha256'][:12]}…")

    def verify(self, kind: Kind, version: str, manifest: dict[str, Any] | None = None) -> None:
        """Read back what the version stored itself (sha256); an inherited partition must exist (``pull`` hashes it)."""
        manifest = manifest or self.manifest(kind, version)
        self._verify_keys({f"{kind}/{version}/{rel}": e for rel, e in manifest["files"].items()})
        own = own_partitions(manifest)
        self._verify_keys({f"{kind}/{e['key']}": e for e in own})
        self._check_present([e for e in manifest.get("partitions", []) if e not in own])

    def pull(self, kind: Kind, ref: str, dest: Path, tables: bool = True) -> dict[str, Any]:
        """Download a version into ``dest`` (checked against the manifest); returns the manifest.

        A partitioned data version: every partition (each one's sha256 checked) into ``dest/_parts/...``, then,
        with ``tables``, the version's ``interactions.csv``, ``train.csv`` and ``test.csv`` as the CSV versions held
        them (what training and every other reader take)."""
        version = self.resolve(kind, ref)
        manifest = self.manifest(kind, version)  # validated: every file name is a plain relative path
        # key in the store -> path in dest: a version's files, or a data version's partitions (keys under datasets/)
        keys = {f"{kind}/{version}/{rel}": (rel, e) for rel, e in manifest["files"].items()}
        keys.update({f"{kind}/{e['key']}": (e["key"], e) for e in manifest.get("partitions", [])})
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for rel, _ in keys.values():
            if not (dest / rel).resolve().is_relative_to(root):  # e.g. a symlinked folder inside dest
                key = f"{kind}/{version}/{MANIFEST}"
                raise CorruptError(f"{self.blobs.url}: {key}: file {rel!r} would be written outside {dest}")
        sweep_tmp(dest)  # what a killed pull into this folder left
        for key, (rel, entry) in keys.items():
            target = dest / rel
            if target.is_file() and sha256_file(target) == entry["sha256"]:
                continue  # already there: pulling again is cheap and idempotent
            self.blobs.get_file(key, target)
            if (got := sha256_file(target)) != entry["sha256"]:
                target.unlink(missing_ok=True)
                raise IntegrityError(f"{self.blobs.url}: {key} downloaded with sha256 {got[:12]}…")
        if tables and manifest.get("format") == PARTITIONED:
            from pipeline.dataset import write_version_csvs  # pyarrow: only for data

            write_version_csvs([dest / e["key"] for e in manifest["partitions"]], dest)
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    # -- retention of data versions ---------------------------------------------------------
    def _names_partition(self, version: str, key: str) -> bool:
        if not VERSION_RE.match(version) or not self.exists("datasets", version):
            return False
        return key in {e["key"] for e in self.manifest("datasets", version).get("partitions", [])}

    def model_data_versions(self) -> set[str]:
        """Every data version a stored model names in its lineage (manifest or its ``lineage``)."""
        errors: list[str] = []
        named: set[str] = set()
        for m in self.versions("models", errors):
            for dv in (m.get("data_version"), (m.get("lineage") or {}).get("data_version")):
                if isinstance(dv, str) and dv:
                    named.add(dv)
        if errors:  # a model we cannot read may name any version: removing none is the only safe answer
            raise CorruptError(f"{errors[0]} (prune needs every model's lineage: nothing removed)")
        return named

    def prune(
        self,
        keep: int,
        dry_run: bool = False,
        log: Callable[[str], None] | None = None,
        checkpoint: Callable[[str], None] | None = None,
    ) -> PruneReport:
        """Remove the data versions past the last ``keep`` (0: keep all), never the one ``latest`` names nor one a
        stored model names, then every partition no remaining manifest names. Each removal is logged.

        Order, so that a kill at any point leaves a consistent store: a version's manifest is deleted first (from
        then on it is not a version, and nothing reaches its partitions through it), then the rest of its folder,
        and a partition only after re-reading the manifests, only when none names it and no push of its version
        is running. What a killed prune left is an unlisted folder (the next sweep removes it) or an unnamed
        partition (the next prune removes it). ``checkpoint``: called with each PRUNE_POINTS name as it passes it
        (the crash tests kill the process there)."""
        say = log or (lambda line: print(line, file=sys.stderr))
        passed = checkpoint or (lambda point: None)
        verb = "would remove" if dry_run else "removed"
        if not dry_run:
            self.sweep("datasets")
        versions = self.versions("datasets")  # a corrupt manifest: CorruptError, nothing removed
        names = [m["version"] for m in versions]
        latest = self.pointed("datasets", "latest")
        named = self.model_data_versions() & set(names)
        last = set(names if keep <= 0 else names[-keep:])
        kept = last | named | ({latest} if latest else set())
        report = PruneReport(kept=[n for n in names if n in kept], dry_run=dry_run)
        for m in versions:
            v = m["version"]
            if v in kept:
                continue
            size = sum(e["bytes"] for e in m["files"].values()) + sum(e["bytes"] for e in own_partitions(m))
            if not dry_run:
                self.blobs.delete(f"datasets/{v}/{MANIFEST}")  # first: see the docstring
                passed(PRUNE_POINTS[0])
                self._wipe(f"datasets/{v}")
            report.removed.append(v)
            report.bytes_freed += sum(e["bytes"] for e in m["files"].values())
            rows = m.get("rows", {}).get("interactions.csv", "?")
            say(
                f"prune: {verb} data version {v} (created {m['created_at']}, {rows} rows, {size} bytes of its own):"
                f" past the last {keep}, not latest, no model names it"
            )
        # Partitions: named by a manifest still there (re-read: a push may have completed meanwhile) or kept.
        remaining = versions if dry_run else self.versions("datasets")
        live = [m for m in remaining if m["version"] in kept] if dry_run else remaining
        referenced = {e["key"] for m in live for e in m.get("partitions", [])}
        sizes = {e["key"]: e["bytes"] for m in versions for e in m.get("partitions", [])}
        for rel in sorted(self.blobs.list_keys(f"datasets/{PARTS}")):
            key = f"{PARTS}/{rel}"
            if key in referenced:
                continue
            owner = rel.split("/", 1)[0]
            lease = self._lease_doc(f"datasets/{owner}/{LEASE}") if VERSION_RE.match(owner) else None
            if lease is not None and not lease_is_dead(lease[0], lease_seconds()):
                continue  # a push of that version is uploading it
            if not dry_run:
                if self._names_partition(owner, key):
                    continue  # its push completed after the listing
                self.blobs.delete(f"datasets/{key}")
                passed(PRUNE_POINTS[1])
            report.parts.append(key)
            report.bytes_freed += sizes.get(key, 0)
            say(f"prune: {verb} partition datasets/{key} ({sizes.get(key, '?')} bytes): no kept version names it")
        if not dry_run and isinstance(self.blobs, LocalBlobStore):
            self.blobs.remove_empty_dirs(f"datasets/{PARTS}")
        return report

    # -- small state documents ------------------------------------------------------------
    def get_state(self, name: str) -> dict[str, Any] | None:
        got = self._read_doc(f"state/{name}.json", "state document")
        return got[0] if got else None

    def put_state(self, name: str, doc: dict[str, Any]) -> None:
        self.blobs.put_bytes(f"state/{name}.json", json.dumps({**doc, "updated_at": utc_now()}, indent=2).encode())
