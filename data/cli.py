"""Versioned data sets in the store (local folder or S3; see docs/pipeline.md).

    dkt data list
    dkt data push data/sim            # a folder with train.csv and test.csv
    dkt data pull latest --dest DIR
    dkt data export|prepare|publish|advance-watermark --run-id ID   (the update_data_dag steps)

Store settings come from the environment: DKT_STORE (local|s3), DKT_STORE_ROOT,
DKT_S3_BUCKET, DKT_S3_PREFIX, DKT_S3_ENDPOINT_URL / AWS_ENDPOINT_URL, AWS credentials.
Exit codes: 0 done, 2 bad input or store error, 99 nothing new to publish (a skip for Airflow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dkt.bundle import default_version
from dkt.cli import EXIT_SKIP, Parser, add_dag_steps
from dkt.data.schema import DataValidationError
from pipeline import data_update
from pipeline.blobs import StoreError, staging_dir
from pipeline.dataset import import_initial
from pipeline.settings import SettingsError
from pipeline.store import VersionedStore, VersionError
from pipeline.workdir import work_dir

FLOW = "update_data"


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
    add_dag_steps(sub, "update_data_dag", ("export", "prepare", "publish", "advance-watermark"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        store = VersionedStore.from_env()
        if args.cmd == "list":
            latest = store.pointed("datasets", "latest")
            for m in store.versions("datasets"):
                mark = "  <- latest" if m["version"] == latest else ""
                rows = m.get("rows", {}).get("interactions.csv", "?")
                print(f"{m['version']}  rows={rows}  parent={m.get('parent')}  created={m['created_at']}{mark}")
            return 0
        if args.cmd == "push":
            if args.if_empty and (v := store.pointed("datasets", "latest")):
                print(f"store already has data set {v}; nothing pushed", file=sys.stderr)
                return 0
            # Not a plain TemporaryDirectory: a killed push would leak it; the next push removes a dead one's.
            with staging_dir() as tmp:
                rows = import_initial(args.src, tmp)
                res = store.push(
                    "datasets",
                    tmp,
                    args.version or default_version(),
                    parent=store.pointed("datasets", "latest"),
                    extra={"source": str(args.src)},
                )
            print(json.dumps({"version": res.version, "rows": rows}))
            return 0
        if args.cmd == "pull":
            m = store.pull("datasets", args.ref, args.dest)
            print(json.dumps({"version": m["version"], "dest": str(args.dest), "rows": m.get("rows", {})}))
            return 0
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
    except (DataValidationError, StoreError, VersionError, SettingsError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
