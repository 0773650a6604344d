"""Data versions at scale: a store holding --answers simulated answers, then one more version of --new answers.

    .venv/bin/python bench/data_bench.py                      # 10 million answers, 10,000 new (a few minutes)
    .venv/bin/python bench/data_bench.py --answers 1000000    # scaled down

The answers are made with vectorised numpy (a student's answers are consecutive minutes; items, skills and
answers drawn at random; not the simulator, which steps every student), pushed as the first version the way
`dkt data push` stores one (one partition), into a local store (--store, default a temporary folder). Then:

  add version    the update DAG's prepare + publish steps (pipeline/data_update.py) on an export of --new answers:
                 the parent's partitions pulled (hash-checked), the export's students' rows read, the new rows'
                 partition written, pushed and verified, the manifest written, `latest` moved; the store's
                 growth in bytes, against what the version would have stored as the three full CSVs before
  read version   all of the new version's partitions into the canonical table (pipeline.dataset.read_parts);
                 `dkt data pull` of it (download, hash check, the three CSVs written); train.py's read of the
                 pulled train.csv (dkt.data.io.read_csv): the training path is the last two
  prune          retention with --keep on --extra more versions (each --new answers)

Timings are wall seconds on this machine, whatever else runs on it, with the CPU seconds of each step and the
load average beside them.
Last line: ``data: add_s=<x> add_bytes=<n> full_copy_bytes=<m> read_s=<y> pull_s=<z>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dkt.bundle import write_json
from dkt.data.io import read_csv
from pipeline import data_update
from pipeline.blobs import LocalBlobStore
from pipeline.dataset import TEST, is_test_user, read_parts, write_part
from pipeline.store import VersionedStore

EPOCH = np.datetime64("2025-01-01T00:00:00", "s")


def answers(n: int, users: int, seed: int, first_user: int = 0, day: int = 0, prefix: str = "b") -> pd.DataFrame:
    """``n`` answers of ``users`` students (numbered from ``first_user``), canonical columns, vectorised."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    per = np.full(users, n // users)
    per[: n % users] += 1
    user = np.repeat(np.arange(users), per)
    # Each student's answers are consecutive minutes from their own start; day moves a later export past them.
    pos = np.arange(n) - np.repeat(np.cumsum(per) - per, per)
    start = rng.integers(0, 300, users) * 86_400 + day * 86_400 * 400
    stamp = EPOCH + (start[user] + pos * 60).astype("timedelta64[s]")
    item = rng.integers(0, 9_000, n)
    names = pa.array([f"{prefix}{first_user + u:08d}" for u in range(users)])
    items = pa.array([f"A{i // 10:06d}{i % 10:03d}" for i in range(9_000)])
    tests = pa.array([f"A{t:06d}000" for t in range(900)])
    table = pa.table(
        {
            "userID": pa.DictionaryArray.from_arrays(pa.array(user, pa.int32()), names).cast(pa.string()),
            "assessmentItemID": pa.DictionaryArray.from_arrays(pa.array(item, pa.int32()), items).cast(pa.string()),
            "testId": pa.DictionaryArray.from_arrays(pa.array(item // 10, pa.int32()), tests).cast(pa.string()),
            "answerCode": rng.integers(0, 2, n).astype("int8"),
            "Timestamp": stamp,
            "KnowledgeTag": (item // 10 % 300).astype("int64"),
        }
    )
    return table.to_pandas()


def timed(what: str, fn: Callable[[], Any], log: dict[str, float]) -> Any:
    """Run ``fn``; log its wall seconds, and print them with its CPU seconds (all threads): on a shared machine
    the CPU seconds say what the step costs, the wall seconds what it took there."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    log[what] = round(time.perf_counter() - t, 2)
    log[f"{what} [cpu]"] = round(time.process_time() - c, 2)
    print(f"  {what}: {log[what]} s, {log[f'{what} [cpu]']} CPU-s (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    return out


def store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def add_version(store: VersionedStore, work: Path, rows: pd.DataFrame, name: str, log: dict[str, float]) -> dict:
    """The update DAG's prepare and publish steps (the export written first, outside the clock)."""
    work.mkdir(parents=True)
    rows.to_csv(work / data_update.EXPORT_FILE, index=False, date_format="%Y-%m-%d %H:%M:%S")
    write_json(work / "export.json", {"since": "", "watermark": name, "rows": len(rows)})
    data_update.default_version = lambda: name  # the version's name; the steps name it by the clock otherwise
    timed("prepare", lambda: data_update.prepare(work, store), log)
    return timed("publish", lambda: data_update.publish(work, store), log)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    os.environ["DKT_DATA_KEEP_VERSIONS"] = "0"  # retention is measured on its own below
    store = VersionedStore(LocalBlobStore(root / "store"))
    users = max(1, args.answers // 200)
    log: dict[str, float] = {}
    print(f"{args.answers:,} answers of {users:,} students; then {args.new:,} new answers", file=sys.stderr)
    every = timed("generate", lambda: answers(args.answers, users, seed=1), log)
    every[TEST] = every["userID"].map({u: is_test_user(u, 0.1) for u in every["userID"].unique()}).astype(bool)
    first = root / "first"
    part = timed("write first partition", lambda: write_part(every, first / "all.parquet"), log)
    counts = {"all.parquet": part}
    every = every.iloc[0:0]  # the memory goes back before the measured steps
    timed("push first version", lambda: store.push_partitions("v0", first, counts, []), log)
    before = store_bytes(root / "store")

    # The export: half the new answers from students the set has (a later day), half from new students.
    olds = max(1, args.new // 40)
    half = args.new // 2
    new = pd.concat(
        [
            answers(half, olds, seed=2, first_user=0, day=1),
            answers(args.new - half, max(1, olds // 2), seed=3, first_user=0, day=1, prefix="n"),
        ],
        ignore_index=True,
    )
    t, c = time.perf_counter(), time.process_time()
    m = add_version(store, root / "work1", new, "v1", log)
    add_s, add_cpu = round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)
    add_bytes = store_bytes(root / "store") - before

    parts = [root / "store" / "datasets" / e["key"] for e in m["partitions"]]
    table = timed("read_parts (all partitions -> canonical table)", lambda: read_parts(parts), log)
    rows = len(table)
    del table
    pulled = root / "pulled"
    timed("dkt data pull (download, sha256, three CSVs)", lambda: store.pull("datasets", "v1", pulled), log)
    full_copy = sum((pulled / n).stat().st_size for n in ("interactions.csv", "train.csv", "test.csv"))
    timed("read_csv(train.csv) (what train.py reads)", lambda: read_csv(pulled / "train.csv"), log)
    shutil.rmtree(pulled)

    for n in range(2, 2 + args.extra):
        more = answers(args.new, olds, seed=10 + n, first_user=0, day=n)
        add_version(store, root / f"work{n}", more, f"v{n}", {})
    prune = timed(f"prune --keep {args.keep}", lambda: store.prune(args.keep, log=lambda line: None), log)
    return {
        "answers": args.answers,
        "new": args.new,
        "rows_after": rows,
        "added_rows": m["added_rows"],
        "partitions": len(m["partitions"]),
        "add_s": add_s,
        "add_cpu_s": add_cpu,
        "add_bytes": add_bytes,
        "new_partition_bytes": m["added_bytes"],
        "full_copy_bytes": full_copy,
        "first_version_bytes": before,
        "pruned": len(prune.removed),
        "seconds": log,
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", type=int, default=10_000_000, help="answers in the store (default 10,000,000)")
    p.add_argument("--new", type=int, default=10_000, help="answers of the version added (default 10,000)")
    p.add_argument("--extra", type=int, default=3, help="more versions before the prune (default 3)")
    p.add_argument("--keep", type=int, default=2, help="the prune's DKT_DATA_KEEP_VERSIONS (default 2)")
    p.add_argument("--store", type=Path, help="an empty folder for the store (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.answers < 1000 or args.new < 10 or args.extra < 0 or args.keep < 0:
        print("error: --answers >= 1000, --new >= 10, --extra >= 0 and --keep >= 0", file=sys.stderr)
        return 2
    if args.store and args.store.exists() and any(args.store.iterdir()):
        print(f"error: --store {args.store}: not an empty folder", file=sys.stderr)
        return 2
    if args.store:
        args.store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="data-bench-", dir=args.store) as tmp:
        out = run(args, Path(tmp))
    print(json.dumps(out, indent=2))
    print(
        f"data: add_s={out['add_s']} add_bytes={out['add_bytes']} full_copy_bytes={out['full_copy_bytes']}"
        f" read_s={out['seconds']['read_parts (all partitions -> canonical table)']}"
        f" pull_s={out['seconds']['dkt data pull (download, sha256, three CSVs)']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
