"""Versioned data sets in the store (local folder or S3; see docs/pipeline.md).

    dkt data list
    dkt data push data/sim            # a folder with train.csv and test.csv
    dkt data pull latest --dest DIR
    dkt data prune [--dry-run] [--keep N]   # retention (DKT_DATA_KEEP_VERSIONS); also run after every push
    dkt data drift [VERSION] [--reference V] [--json]   # drift against production's training data
    dkt data export|prepare|publish|advance-watermark|drift --run-id ID   (the update_data_dag steps)

Store settings come from the environment: DKT_STORE (local|s3), DKT_STORE_ROOT,
DKT_S3_BUCKET, DKT_S3_PREFIX, DKT_S3_ENDPOINT_URL / AWS_ENDPOINT_URL, AWS credentials.
Exit codes: 0 done, 2 bad input or store error, 99 nothing new to publish, or (drift --run-id) a drift
below DKT_DRIFT_PSI_THRESHOLD: no retraining (a skip for Airflow: the drift asset is not emitted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dkt.bundle import BundleError, default_version
from dkt.cli import EXIT_SKIP, Parser, add_dag_steps
from pipeline import data_update
from pipeline.blobs import StoreError, staging_dir
from pipeline.settings import SettingsError, store_settings
from pipeline.store import PARTITIONED, VersionedStore, VersionError
from pipeline.workdir import work_dir

FLOW = "update_data"
# The update_data_dag steps (pipeline/steps.py runs them in one process); drift also runs by hand, without --run-id.
RUN_STEPS = ("export", "prepare", "publish", "advance-watermark")
DAG_STEPS = (*RUN_STEPS, "drift")


def input_errors() -> tuple[type[Exception], ...]:
    """What main reports as one line ``error: ...``, exit 2. A function, evaluated only once an exception is being
    handled: DataValidationError's module imports pandas (0.8 s), which list, pull and prune never need."""
    from dkt.data.schema import DataValidationError

    return (DataValidationError, StoreError, VersionError, SettingsError, BundleError, OSError, RuntimeError)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="dkt data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list stored data set versions (newest last)")
    push = sub.add_parser("push", help="push a folder with train.csv and test.csv as a new version; moves latest")
    push.add_argument("src", type=Path)
    push.add_argument("--version", help="version name (default: UTC time)")
    push.add_argument("--if-empty", action="store_true", help="do nothing when the store already has a latest set")
    pull = sub.add_parser("pull", help="download a version (or 'latest') and check its hashes")
    pull.add_argument("ref", nargs="?", default="latest")
    pull.add_argument("--dest", type=Path, required=True)
    prune = sub.add_parser(
        "prune",
        help="remove data versions past the last DKT_DATA_KEEP_VERSIONS (never latest, never one a stored model"
        " names) and every partition no kept version names; each removal is logged",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    prune.add_argument("--keep", type=int, help="versions to keep instead of DKT_DATA_KEEP_VERSIONS (0: all)")
    add_dag_steps(sub, "update_data_dag", RUN_STEPS)
    drift = sub.add_parser(
        "drift",
        help="drift of a data version against production's training data (PSI per feature, production's AUC)",
        description="Population stability index of the answer rate, the item and KnowledgeTag mix, response time"
        " and history length of the version's new answers against the data production trained on, and"
        " production's AUC on them (docs/monitoring.md#drift). With --run-id (the update_data_dag step): the"
        " latest version's report is stored beside it (datasets/<version>/drift.json), and the exit is 99 (skip:"
        " no retraining) unless retraining is called for.",
    )
    drift.add_argument("version", nargs="?", default="latest", help="data version (default: latest)")
    drift.add_argument("--reference", help="compare with this data version's train.csv instead")
    drift.add_argument("--json", action="store_true", help="the report as JSON instead of a table")
    drift.add_argument("--run-id", help="the DAG run id: store the report, exit 99 when no retraining is due")
    return p.parse_args(argv)


def drift(store: VersionedStore, args: argparse.Namespace) -> int:
    """Print a data version's drift report; as the DAG step, also store it and skip when no retraining is due."""
    from pipeline import drift as drift_report  # pandas work and, for production's AUC, torch: only here

    work = work_dir(FLOW, args.run_id) if args.run_id else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    report = drift_report.drift_report(store, args.version, args.reference, work)
    if args.run_id:
        print(f"stored {store.blobs.url}/{drift_report.store_report(store, report)}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else drift_report.table(report))
    if args.run_id and not report["retrain"]:
        print(f"skip: no retraining: {report['reason']}", file=sys.stderr)
        return EXIT_SKIP
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        store = VersionedStore.from_env()
        if args.cmd == "list":
            latest = store.pointed("datasets", "latest")
            for m in store.versions("datasets"):
                mark = "  <- latest" if m["version"] == latest else ""
                rows = m.get("rows", {}).get("interactions.csv", "?")
                parts = f"  partitions={len(m['partitions'])}" if m.get("format") == PARTITIONED else "  csv"
                print(f"{m['version']}  rows={rows}{parts}  parent={m.get('parent')}  created={m['created_at']}{mark}")
            return 0
        if args.cmd == "push":
            if args.if_empty and (v := store.pointed("datasets", "latest")):
                print(f"store already has data set {v}; nothing pushed", file=sys.stderr)
                return 0
            from pipeline.dataset import initial_rows, write_part  # pandas: only a push reads tables

            # Not a plain TemporaryDirectory: a killed push would leak it; the next push removes a dead one's.
            with staging_dir() as tmp:
                # A whole set: one partition of its own, inheriting nothing (the parent is only its predecessor).
                counts = {
                    "all.parquet": write_part(initial_rows(args.src), tmp / data_update.PARTS_DIR / "all.parquet")
                }
                res = store.push_partitions(
                    args.version or default_version(),
                    tmp / data_update.PARTS_DIR,
                    counts,
                    [],
                    parent=store.pointed("datasets", "latest"),
                    extra={"source": str(args.src)},
                )
            data_update.retain(store)
            print(json.dumps({"version": res.version, "rows": res.manifest["rows"]}))
            return 0
        if args.cmd == "prune":
            if args.keep is not None and args.keep < 0:
                raise VersionError(f"--keep {args.keep}: must be 0 (keep all) or more")
            keep = store_settings().data_keep_versions if args.keep is None else args.keep
            r = store.prune(keep, dry_run=args.dry_run, checkpoint=data_update.fault_point)
            print(json.dumps({"kept": len(r.kept), "removed": r.removed, "partitions_removed": len(r.parts),
                              "bytes_freed": r.bytes_freed, "dry_run": r.dry_run}))  # fmt: skip
            return 0
        if args.cmd == "pull":
            m = store.pull("datasets", args.ref, args.dest)
            print(json.dumps({"version": m["version"], "dest": str(args.dest), "rows": m.get("rows", {})}))
            return 0
        if args.cmd == "drift":
            return drift(store, args)
        work = work_dir(FLOW, args.run_id)
        step = {
            "export": data_update.export,
            "prepare": data_update.prepare,
            "publish": data_update.publish,
            "advance-watermark": data_update.advance_watermark,
        }[args.cmd]
        doc = step(work, store)
        print(json.dumps({k: v for k, v in doc.items() if k != "files"}, default=str))
        return 0
    except data_update.NothingNew as exc:
        print(f"skip: {exc}", file=sys.stderr)
        return EXIT_SKIP
    except input_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
