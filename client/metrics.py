"""The client's ``/metrics``: online quality of the served models and the answer flow, in Prometheus text format.

A custom collector reads the answer store at scrape time, so every gunicorn worker reports the same
figures: nothing is counted from the requests one worker happened to serve. Each worker keeps what it has
read of the log and reads on from there. Every metric is described in docs/monitoring.md.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from client import db
from dkt.quality import Quality, quality
from dkt.settings import in_term

ONLINE = {
    "auc": "ROC AUC of the model version's logged predictions against the answers that followed",
    "logloss": "log loss of the model version's logged predictions",
    "ece": "expected calibration error (10 equal-width bins) of the model version's logged predictions",
    "accuracy": "share of the model version's logged predictions on the right side of 0.5",
}


class ScoredLog:
    """The scored predictions this process has read, extended at each scrape by the answers committed since.

    Interaction ids only grow and a prediction is joined in its answer's transaction (client/db.py), so
    "ids above the last one read" is every new row: a scrape reads only what is new, not the whole log.
    Rows older than the window are dropped once counted: the window only moves forward.
    """

    def __init__(self) -> None:
        self.last_id = 0
        self.counts: Counter[str] = Counter()  # every scored answer per model version (the counter)
        self.names: list[str] = []  # model versions; rows hold their index (np.unique on strings is slow)
        self.version = np.empty(0, dtype=np.int64)
        self.p = np.empty(0)
        self.y = np.empty(0, dtype=np.int64)
        self.at = np.empty(0, dtype="datetime64[us]")

    def update(self, conn: sqlite3.Connection, since: datetime | None) -> None:
        new = db.scored_predictions(conn, after_interaction=self.last_id)
        if len(new):
            self.last_id = int(new["interaction_id"].max())
            self.counts.update(new["model_version"].astype(str))
            for name in new["model_version"].astype(str).unique():
                if name not in self.names:
                    self.names.append(name)
            codes = new["model_version"].astype(str).map({n: i for i, n in enumerate(self.names)})
            self.version = np.concatenate([self.version, codes.to_numpy(dtype=np.int64)])
            self.p = np.concatenate([self.p, new["probability"].to_numpy(dtype=np.float64)])
            self.y = np.concatenate([self.y, new["answerCode"].to_numpy(dtype=np.int64)])
            answered = pd.to_datetime(new["answered_at"], format="ISO8601").to_numpy(dtype="datetime64[us]")
            self.at = np.concatenate([self.at, answered])
        if since is not None:
            keep = self.at >= np.datetime64(since, "us")
            if not keep.all():
                self.version, self.p, self.y, self.at = self.version[keep], self.p[keep], self.y[keep], self.at[keep]

    def online(self) -> dict[str, Quality]:
        """Each model version's quality over the rows kept (the window)."""
        present = np.flatnonzero(np.bincount(self.version, minlength=len(self.names)))
        return {self.names[v]: quality(self.p[self.version == v], self.y[self.version == v]) for v in present}


class OnlineQualityCollector(Collector):
    """Reads the answer store on each ``collect``; ``now`` is injectable so tests can move the clock."""

    def __init__(
        self, db_path: str, window_days: float, term_dates: str, now: Callable[[], datetime] = db.utc_now
    ) -> None:
        self.db_path = db_path
        self.window_days = window_days
        self.term_dates = term_dates
        self.now = now
        self.log = ScoredLog()
        self.lock = threading.Lock()  # a threaded worker may serve two scrapes at once

    def collect(self) -> Iterator[Metric]:
        now = self.now()
        since = now - timedelta(days=self.window_days) if self.window_days > 0 else None
        with closing(db.connect(self.db_path)) as conn, self.lock:
            self.log.update(conn, since)
            online = self.log.online()
            scored = dict(self.log.counts)
            test_auc = db.model_test_aucs(conn)
            n_answers, last_answer = db.answer_summary(conn)
            serving = db.latest_model_versions(conn)
        window = f" over the last {self.window_days:g} days of answers" if since else " over every logged answer"
        for metric, doc in ONLINE.items():
            # AUC is undefined while every answer is right (or wrong): no sample rather than NaN.
            values = {v: getattr(q, metric) for v, q in online.items() if getattr(q, metric) is not None}
            yield _family(GaugeMetricFamily, f"dkt_online_{metric}", doc + window, values)
        yield _family(
            CounterMetricFamily, "dkt_scored_answers", "answers joined with a prediction of the model version", scored
        )
        yield _family(
            GaugeMetricFamily,
            "dkt_model_test_auc",
            "offline test AUC of the model version, as the service's /metadata reported it when first seen",
            test_auc,
        )
        yield _family(
            GaugeMetricFamily,
            "dkt_model_serving",
            "1 for the model version that made the latest logged prediction in each role (production, shadow)",
            {(version, role): 1 for role, version in serving.items()},
            labels=("model_version", "role"),
        )
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


def _family(
    kind: type[GaugeMetricFamily | CounterMetricFamily],
    name: str,
    doc: str,
    values: Mapping[Any, float],
    labels: tuple[str, ...] = ("model_version",),
) -> Metric:
    """A labelled family, one sample per key (a label value, or a tuple of them), in key order."""
    family = kind(name, doc, labels=list(labels))
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def registry(db_path: str, window_days: float, term_dates: str) -> CollectorRegistry:
    """A registry of its own (not the process-global one): only these metrics, one collector per app."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OnlineQualityCollector(db_path, window_days, term_dates))
    return reg
