"""Time the operator page (client/operator.py) on a large prediction log: each panel's data and plots.

    .venv/bin/python bench/operator_bench.py [--answers 100000] [--days 30]

The store is bench/quality_bench.py's (the client's schema, rows bulk-inserted), its answers spread over
``--days`` days; no versioned store and no Prometheus (those panels only say so). Prints seconds for reading
the log, each quality step, and the whole page through the Flask app. Figures are in docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality_bench import build_store, timed  # noqa: E402
from client import db, operator  # noqa: E402


def spread(path: Path, days: int) -> None:
    """Move each answer to one of the last ``days`` days (by id), keeping the time of day."""
    with db.connect(path) as conn:
        n = int(conn.execute("SELECT COUNT(*) FROM interactions").fetchone()[0])
        conn.execute(
            "UPDATE interactions SET answered_at = datetime(answered_at, '-' || ((? - id) * ? / ?) || ' days')",
            (n, days, n + 1),
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client.db"
        timed(f"build a store of {args.answers} scored answers", lambda: build_store(path, args.answers, 2))
        spread(path, args.days)
        with db.connect(path) as conn:
            scored = timed("read the log (scored_predictions)", lambda: db.scored_predictions(conn))
            daily = timed(f"daily_quality ({args.days} days x 2 versions)", lambda: operator.daily_quality(scored))
            timed("quality plots (AUC, ECE per day)", lambda: operator.quality_over_time_plots(daily))
            timed("version_quality, 7 days, bootstrap", lambda: operator.version_quality(
                scored, db.utc_now() - timedelta(days=7)))  # fmt: skip
            timed("answers_per_day", lambda: operator.answers_per_day(conn))

            def no_store() -> None:
                raise LookupError("none")

            timed("build_page (every panel; no store, no Prometheus)", lambda: operator.build_page(conn, None, 7,
                  store_fn=no_store))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
