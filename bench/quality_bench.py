"""Time the online quality at scale: dkt.quality with bootstrap intervals, and one /metrics scrape of the client.

    .venv/bin/python bench/quality_bench.py [--answers 100000] [--n-boot 200] [--versions 2]

Builds a throwaway client store (the client's own schema, rows bulk-inserted: per-answer commits would time
SQLite's fsync, not the quality), then prints seconds for: the point metrics, the bootstrap, `dkt models
quality --by tag`'s table, and a /metrics scrape through the Flask app (a cold one and one served from the
the incremental one that follows). Figures are in docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import db  # noqa: E402
from client.metrics import OnlineQualityCollector  # noqa: E402
from dkt.quality import quality, quality_table  # noqa: E402


def build_store(path: Path, n: int, versions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 4)
    y = (rng.random(n) < p).astype(int)
    now = db.utc_now()
    conn = db.connect(path)
    db.init(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO students (id, nickname, created_at) VALUES (1, 'bench', ?)", (db.now(),))
    conn.executemany(
        "INSERT INTO interactions (id, student_id, userID, assessmentItemID, testId, answerCode, Timestamp,"
        " KnowledgeTag, given, shown_at, answered_at) VALUES (?, 1, 'web-000001', ?, 'T1', ?, ?, ?, 'x', ?, ?)",
        ((i + 1, f"A{i % 997}", int(y[i]), db.now(), int(i % 50), str(now), str(now)) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO predictions (student_id, assessmentItemID, request_id, role, model_name, model_version,"
        " probability, predicted_at, interaction_id, answerCode) VALUES (1, ?, ?, 'production', 'lstm', ?, ?, ?, ?, ?)",
        ((f"A{i % 997}", f"r{i}", f"v{i % versions}", float(p[i]), str(now), i + 1, int(y[i])) for i in range(n)),
    )
    conn.execute("COMMIT")
    conn.close()


def timed(label: str, fn: object) -> object:
    start = time.perf_counter()
    out = fn()  # type: ignore[operator]
    print(f"{label:<44} {time.perf_counter() - start:8.3f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=100_000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--versions", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client.db"
        timed(f"build a store of {args.answers} scored answers", lambda: build_store(path, args.answers, args.versions))
        with db.connect(path) as conn:
            scored = timed("read the log (scored_predictions)", lambda: db.scored_predictions(conn))
        p, y = scored["probability"].to_numpy(), scored["answerCode"].to_numpy()
        timed(f"point metrics, {len(p)} answers", lambda: quality(p, y))
        timed(f"+ bootstrap, {args.n_boot} resamples", lambda: quality(p, y, n_boot=args.n_boot, seed=0))
        timed(f"table per version and tag, {args.n_boot} resamples", lambda: quality_table(scored, "tag", args.n_boot))
        collector = OnlineQualityCollector(str(path), 7.0, "")
        timed("/metrics collect (first: reads the whole log)", lambda: list(collector.collect()))
        timed("/metrics collect (next: reads only new answers)", lambda: list(collector.collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
