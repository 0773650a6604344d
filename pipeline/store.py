"""Versioned storage of data sets and models, on any ``BlobStore``.

Layout (under the store root or the S3 prefix)::

    datasets/<version>/<files...>      models/<version>/<files...>
    datasets/<version>/manifest.json   models/<version>/manifest.json
    datasets/_pointers/latest.json     models/_pointers/{latest,production}.json
    state/<name>.json                  (pipeline state such as the export watermark)

Rules that make a crash harmless:

- a version is never overwritten: pushing an existing version fails;
- ``manifest.json`` is written after every payload file, so a version without one
  is an interrupted upload (ignored by ``list`` and refused by ``pull``);
- every uploaded file is read back and its sha256 compared with the manifest
  before any pointer moves, so ``latest`` / ``production`` always name a complete,
  verified version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dkt.bundle import code_version, utc_now
from pipeline.blobs import BlobStore, StoreError, open_blobs, sha256_file
from pipeline.settings import StoreSettings, store_settings

Kind = Literal["datasets", "models"]
MANIFEST = "manifest.json"
POINTERS = "_pointers"
POINTER_NAMES: dict[str, tuple[str, ...]] = {"datasets": ("latest",), "models": ("latest", "production")}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POINTER_HISTORY = 20


class VersionError(ValueError):
    """A version that does not exist, already exists, or has a bad name."""


class IntegrityError(StoreError):
    """Stored bytes that do not match their manifest."""


def check_version_name(version: str) -> str:
    if not VERSION_RE.match(version) or version in ("latest", "production"):
        raise VersionError(
            f"bad version name {version!r}: use letters, digits, '.', '_', '-' (not starting with '.', '_' or '-'),"
            " and not 'latest' or 'production'"
        )
    return version


def count_rows(path: Path) -> int | None:
    """Data rows of a CSV (lines minus the header); None for other files."""
    if path.suffix != ".csv":
        return None
    with path.open("rb") as f:
        n = sum(1 for _ in f)
    return max(0, n - 1)


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


class VersionedStore:
    def __init__(self, blobs: BlobStore):
        self.blobs = blobs

    @classmethod
    def from_env(cls, settings: StoreSettings | None = None) -> VersionedStore:
        return cls(open_blobs(settings or store_settings()))

    # -- pointers -------------------------------------------------------------------------
    def _pointer_key(self, kind: Kind, name: str) -> str:
        if name not in POINTER_NAMES[kind]:
            raise VersionError(f"{kind} have no pointer {name!r}; known: {list(POINTER_NAMES[kind])}")
        return f"{kind}/{POINTERS}/{name}.json"

    def pointer(self, kind: Kind, name: str) -> dict[str, Any] | None:
        raw = self.blobs.get_bytes(self._pointer_key(kind, name))
        return json.loads(raw) if raw else None

    def pointed(self, kind: Kind, name: str) -> str | None:
        p = self.pointer(kind, name)
        return str(p["version"]) if p else None

    def set_pointer(self, kind: Kind, name: str, version: str, reason: str = "") -> dict[str, Any]:
        """Move a pointer to a complete, verified version; the previous targets are kept for rollback."""
        manifest = self.manifest(kind, version)
        self.verify(kind, version, manifest)
        old = self.pointer(kind, name)
        history: list[str] = []
        if old:
            history = [old["version"], *old.get("history", [])]
            history = [v for v in history if v != version][:POINTER_HISTORY]
        doc = {"version": version, "updated_at": utc_now(), "reason": reason, "history": history}
        self.blobs.put_bytes(self._pointer_key(kind, name), json.dumps(doc, indent=2).encode())
        return doc

    def rollback(self, kind: Kind, name: str) -> dict[str, Any]:
        """Point back to the previous target; the version rolled back from is dropped from the history."""
        cur = self.pointer(kind, name)
        if not cur or not cur.get("history"):
            raise VersionError(f"{kind}/{name}: no previous version to roll back to")
        prev, *rest = cur["history"]
        self.manifest(kind, prev)
        self.verify(kind, prev)
        doc = {"version": prev, "updated_at": utc_now(), "reason": f"rollback from {cur['version']}", "history": rest}
        self.blobs.put_bytes(self._pointer_key(kind, name), json.dumps(doc, indent=2).encode())
        return doc

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
        raw = self.blobs.get_bytes(f"{kind}/{check_version_name(version)}/{MANIFEST}")
        if raw is None:
            raise VersionError(f"{self.blobs.url}: no complete {kind} version {version!r}")
        return json.loads(raw)

    def exists(self, kind: Kind, version: str) -> bool:
        return self.blobs.exists(f"{kind}/{check_version_name(version)}/{MANIFEST}")

    def versions(self, kind: Kind) -> list[dict[str, Any]]:
        """Complete versions (those with a manifest), oldest first."""
        out = []
        for name in self.blobs.list_dirs(kind):
            if name == POINTERS or not VERSION_RE.match(name):
                continue
            raw = self.blobs.get_bytes(f"{kind}/{name}/{MANIFEST}")
            if raw:
                out.append(json.loads(raw))
        return sorted(out, key=lambda m: (m.get("created_at", ""), m["version"]))

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
        if self.exists(kind, version):
            raise VersionError(f"{self.blobs.url}: {kind} version {version!r} already exists; versions are immutable")
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
            put(f"{kind}/{version}/{rel}", src / rel)
        # Verify before the manifest exists: an unverified version is never visible as complete.
        self._verify_files(kind, version, entries)
        self.blobs.put_bytes(f"{kind}/{version}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())
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
        manifest = self.manifest(kind, version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for rel, entry in manifest["files"].items():
            target = dest / rel
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
        raw = self.blobs.get_bytes(f"state/{name}.json")
        return json.loads(raw) if raw else None

    def put_state(self, name: str, doc: dict[str, Any]) -> None:
        self.blobs.put_bytes(f"state/{name}.json", json.dumps({**doc, "updated_at": utc_now()}, indent=2).encode())
