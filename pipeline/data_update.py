"""The steps of ``update_data_dag``: export -> prepare (validate + merge) -> publish -> advance the watermark.

Each step reads and writes files in a per-run work folder, so a retried step
starts from what the previous one left. Crash safety comes from the order:
the watermark moves only after the new version is pushed and verified, and a
re-export of rows that are already stored is removed by the merge's dedupe.

Test only: ``DKT_FAULT_POINT=<step>:<point>`` makes the process SIGKILL itself at that point (the names
are in FAULT_POINTS); the crash tests use it to kill each step at each point like a lost worker would.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dkt.bundle import default_version, write_json
from dkt.settings import PipelineSettings, load
from pipeline.settings import REPO_ROOT, store_settings
from pipeline.store import (
    PART_FILES,
    PARTITIONED,
    PruneReport,
    StoreError,
    VersionedStore,
    VersionError,
    manifest_matches,
)

WATERMARK = "watermark"
EXPORT_FILE = "export.csv"
PARTS_DIR = "parts"  # a prepared version's own partition files (work/dataset/parts/*.parquet)
DEFAULT_EXPORT_CMD = f"{shlex.quote(sys.executable)} -m dkt client export-interactions"
FAULT_ENV = "DKT_FAULT_POINT"  # declared in dkt/settings.py (PipelineSettings.fault_point); the crash tests set it
FAULT_POINTS = (
    "export:after_command",  # the exporter wrote export.csv; export.json not yet
    "prepare:after_pull",  # the parent set is in the work folder; nothing merged
    "prepare:after_write",  # the merged set is written; prepare.json not yet
    "publish:mid_upload",  # one file of the new version uploaded, the others and the manifest not
    "publish:after_push",  # the version is stored and `latest` moved; the step has not reported back
    "advance_watermark:before_put",  # the version is pushed; the cursor has not moved
    "advance_watermark:after_put",  # the cursor moved; the step has not reported back
)


def fault_point(name: str) -> None:
    """Test only: die here by SIGKILL, as a killed worker would, when DKT_FAULT_POINT names this point."""
    if load(PipelineSettings).fault_point == name:
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _upload_then_die(store: VersionedStore) -> Callable[[str, Path], None]:
    """An upload that SIGKILLs the process after its first file (``publish:mid_upload``)."""

    def upload(key: str, path: Path) -> None:
        store.blobs.put_file(key, path)
        fault_point("publish:mid_upload")

    return upload


class NothingNew(Exception):
    """The export holds no interaction that is not already in the latest data set."""


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def current_watermark(store: VersionedStore) -> str:
    state = store.get_state(WATERMARK)
    return str(state["watermark"]) if state else ""


def next_watermark(stdout: str, since: str) -> str:
    """The exporter's contract: a ``watermark: <cursor>`` line on stdout; no line means no new rows."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("watermark:"):
            return line.split(":", 1)[1].strip()
    return since


def export(work: Path, store: VersionedStore, command: str | None = None) -> dict[str, Any]:
    """Ask the client for every interaction after the stored watermark."""
    work.mkdir(parents=True, exist_ok=True)
    since = current_watermark(store)
    cmd = shlex.split(command or load(PipelineSettings).export_cmd or DEFAULT_EXPORT_CMD)
    out = work / EXPORT_FILE
    # No watermark yet: the exporter's own default ("from the beginning").
    argv = [*cmd, *(["--since", since] if since else []), "--out", str(out)]
    print(f"export: {' '.join(shlex.quote(a) for a in argv)}", file=sys.stderr)
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"export command failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if not out.is_file():
        raise RuntimeError(f"export command wrote no file {out}")
    rows = max(0, sum(1 for _ in out.open("rb")) - 1)
    fault_point("export:after_command")
    doc = {"since": since, "watermark": next_watermark(proc.stdout, since), "rows": rows}
    write_json(work / "export.json", doc)
    return doc


def prepare(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Validate the export and find its rows the latest data set lacks: the new version's own partition.

    The latest set's partitions are pulled (hash-checked) but only the export's students' rows are read. A parent
    stored as CSVs (before partitions) becomes, once, a base partition of the new version."""
    # pandas (0.8 s) only in the steps that read tables: `dkt data list|pull|prune` import this module too.
    from dkt.data.io import read_csv
    from pipeline.dataset import new_part, old_rows, read_new_interactions, with_flag, write_part

    new = read_new_interactions(work / EXPORT_FILE)
    parent = store.pointed("datasets", "latest")
    inherited: list[dict[str, Any]] = []
    base = None
    old = with_flag(new.iloc[0:0], new.iloc[0:0])
    if parent:
        m = store.pull("datasets", parent, work / "parent", tables=False)
        if m.get("format") == PARTITIONED:
            inherited = m["partitions"]
            old = old_rows([work / "parent" / e["key"] for e in inherited], new)
        else:
            base = old = with_flag(read_csv(work / "parent" / "train.csv"), read_csv(work / "parent" / "test.csv"))
    fault_point("prepare:after_pull")
    result = new_part(old, new, load(PipelineSettings).test_share)
    doc: dict[str, Any] = {"parent": parent, "new_rows": result.new_rows, "added_rows": result.added_rows}
    if result.added_rows:
        parts = work / "dataset" / PARTS_DIR
        counts = {"new.parquet": write_part(result.fresh, parts / "new.parquet")}
        if base is not None:
            counts["base.parquet"] = write_part(base, parts / "base.parquet")
        doc |= {"version": default_version(), "counts": counts, "inherited": inherited}
        doc["rows"] = {f: sum(c[n] for c in [*counts.values(), *inherited]) for f, n in PART_FILES.items()}
    fault_point("prepare:after_write")
    write_json(work / "prepare.json", doc)
    return doc


def retain(store: VersionedStore, dry_run: bool = False) -> PruneReport | None:
    """Retention after a data push (DKT_DATA_KEEP_VERSIONS): housekeeping, so a failure is a warning, not the
    step's: the version is stored, and the next push or `dkt data prune` tries again."""
    try:
        return store.prune(store_settings().data_keep_versions, dry_run=dry_run, checkpoint=fault_point)
    except (StoreError, VersionError) as exc:
        print(f"warning: prune skipped: {exc}", file=sys.stderr)
        return None


def publish(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Push the prepared set as a new version and move ``latest``; raises NothingNew when there is nothing to add."""
    prep = read_json(work / "prepare.json")
    exp = read_json(work / "export.json")
    if not prep.get("added_rows"):
        raise NothingNew(f"{prep['new_rows']} exported row(s), none new; latest stays {prep['parent']}")
    # Version names have one-second resolution, so a stored version of this name is either this run's
    # own push (a retry after a crash past the upload: finish the pointer move, push nothing twice) or
    # another run's from the same second (then take the next free name: never treat it as ours).
    version = base = prep["version"]
    for n in range(2, 100):
        if not store.exists("datasets", version):
            break
        manifest = store.manifest("datasets", version)
        if manifest.get("parent") == prep["parent"] and manifest_matches(manifest, work / "dataset" / PARTS_DIR):
            store.set_pointer("datasets", "latest", version, reason="push (retry)")
            retain(store)
            return manifest
        version = f"{base}-{n}"
    res = store.push_partitions(
        version,
        work / "dataset" / PARTS_DIR,
        prep["counts"],
        prep["inherited"],
        parent=prep["parent"],
        extra={"watermark": exp["watermark"], "added_rows": prep["added_rows"], "since": exp["since"]},
        upload=_upload_then_die(store) if load(PipelineSettings).fault_point == "publish:mid_upload" else None,
    )
    fault_point("publish:after_push")
    retain(store)
    return res.manifest


def advance_watermark(work: Path, store: VersionedStore) -> dict[str, Any]:
    """Move the export cursor, only once the rows it covers are safely in a pushed version."""
    exp = read_json(work / "export.json")
    prep = read_json(work / "prepare.json")
    latest = store.pointed("datasets", "latest")
    if prep.get("added_rows") and (latest is None or not store.exists("datasets", prep["version"])):
        raise VersionError(f"data version {prep.get('version')} is not stored; the watermark stays")
    doc = {"watermark": exp["watermark"], "previous": exp["since"], "dataset": latest}
    fault_point("advance_watermark:before_put")
    store.put_state(WATERMARK, doc)
    fault_point("advance_watermark:after_put")
    return doc
