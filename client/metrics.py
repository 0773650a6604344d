"""The client's ``/metrics``: online quality of the served models and the answer flow, in Prometheus text format.

A custom collector reads the answer store at scrape time, so every gunicorn worker reports the same
figures (nothing is counted in one worker's memory). Every metric is described in docs/monitoring.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from client import db
from dkt.quality import quality_table
from dkt.settings import in_term

ONLINE = {
    "auc": "ROC AUC of the model version's logged predictions against the answers that followed",
    "logloss": "log loss of the model version's logged predictions",
    "ece": "expected calibration error (10 equal-width bins) of the model version's logged predictions",
    "accuracy": "share of the model version's logged predictions on the right side of 0.5",
}
CACHE_S = 10.0  # a scrape within this long of the last one, with no new scored answer, reuses its figures


class OnlineQualityCollector(Collector):
    """Reads the answer store on each ``collect``; ``now`` is injectable so tests can move the clock."""

    def __init__(
        self, db_path: str, window_days: float, term_dates: str, now: Callable[[], datetime] = db.utc_now
    ) -> None:
        self.db_path = db_path
        self.window_days = window_days
        self.term_dates = term_dates
        self.now = now
        self._cache: tuple[float, Any, list[dict[str, Any]]] | None = None

    def _online(self, conn: Any, since: datetime | None) -> list[dict[str, Any]]:
        """Per model version quality over the window; recomputed only when a new answer was scored."""
        mark = (conn.execute("SELECT MAX(interaction_id) FROM predictions").fetchone()[0], since and since.date())
        if self._cache is not None and self._cache[1] == mark and time.monotonic() - self._cache[0] < CACHE_S:
            return self._cache[2]
        rows = quality_table(db.scored_predictions(conn, since=since))
        self._cache = (time.monotonic(), mark, rows)
        return rows

    def collect(self) -> Iterator[Metric]:
        now = self.now()
        since = now - timedelta(days=self.window_days) if self.window_days > 0 else None
        with closing(db.connect(self.db_path)) as conn:
            online = self._online(conn, since)
            scored = db.scored_counts(conn)
            test_auc = db.model_test_aucs(conn)
            n_answers, last_answer = db.answer_summary(conn)
            serving = db.latest_model_versions(conn)
        window = f" over the last {self.window_days:g} days of answers" if since else " over every logged answer"
        for metric, doc in ONLINE.items():
            family = GaugeMetricFamily(f"dkt_online_{metric}", doc + window, labels=["model_version"])
            for row in online:
                if row[metric] is not None:  # AUC is undefined while every answer is right (or wrong)
                    family.add_metric([row["model_version"]], row[metric])
            yield family
        family = CounterMetricFamily(
            "dkt_scored_answers", "answers joined with a prediction of the model version", labels=["model_version"]
        )
        for version, n in sorted(scored.items()):
            family.add_metric([version], n)
        yield family
        family = GaugeMetricFamily(
            "dkt_model_test_auc",
            "offline test AUC of the model version, as the service's /metadata reported it when first seen",
            labels=["model_version"],
        )
        for version, auc in sorted(test_auc.items()):
            family.add_metric([version], auc)
        yield family
        family = GaugeMetricFamily(
            "dkt_model_serving",
            "1 for the model version that made the latest logged prediction in each role (production, shadow)",
            labels=["model_version", "role"],
        )
        for role, version in sorted(serving.items()):
            family.add_metric([version, role], 1)
        yield family
        yield CounterMetricFamily("dkt_answers", "answers stored by the client", value=n_answers)
        family = GaugeMetricFamily(
            "dkt_last_answer_timestamp_seconds", "when the latest answer arrived (Unix time; absent before the first)"
        )
        if last_answer is not None:
            family.add_metric([], (last_answer - datetime(1970, 1, 1)).total_seconds())
        yield family
        yield GaugeMetricFamily(
            "dkt_in_term",
            "1 when today (UTC) falls in DKT_TERM_DATES (always 1 when unset)",
            value=int(in_term(self.term_dates, now.date())),
        )


def registry(db_path: str, window_days: float, term_dates: str) -> CollectorRegistry:
    """A registry of its own (not the process-global one): only these metrics, one collector per app."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OnlineQualityCollector(db_path, window_days, term_dates))
    return reg
