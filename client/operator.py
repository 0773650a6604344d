"""The operator page: how the served models do, where they came from, why they were promoted (docs/monitoring.md).

    /operator/login    the token form (DKT_OPERATOR_TOKEN), until operator accounts exist
    /operator          the page: plots first, then the tables behind them
    POST /logout       the app's own: ends any session, an operator's too

Access: a session whose ``role`` is ``operator`` sees the page, however it got that role (the token form here,
or an operator account). Without one, ``/operator`` sends to the login form, and a wrong token gets a bare 403.
With ``DKT_OPERATOR_TOKEN`` unset there is no way in by token: the page and its form answer 404 ("disabled")
to everyone without an operator session, so a deployment that never set the token shows nothing.

Each panel is computed by a function of its own (tested on real rows) and fails on its own: an exception or a
slow source (the store on S3, Prometheus) becomes a message in that panel, and the rest of the page renders.
The store and Prometheus are read in threads with a deadline (``SOURCE_TIMEOUT_S``).
"""

from __future__ import annotations

import hmac
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import requests
from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from markupsafe import Markup
from pydantic import SecretStr
from werkzeug.wrappers import Response

from client import db, plots
from dkt.quality import BY, quality, quality_table

log = logging.getLogger(__name__)

ROLE = "operator"  # session["role"]; the accounts' operator login sets the same key
DAYS_SHOWN = 60  # the per-day plots cover this many days up to the latest answer
SOURCE_TIMEOUT_S = 4.0  # the store and Prometheus: a panel waits this long, then says its source did not answer
PROMETHEUS_TIMEOUT_S = (1.0, 3.0)  # connect, read
LATENCY_RANGE_S = 6 * 3600  # the latency plot: the last 6 hours ...
LATENCY_STEP_S = 60  # ... one point a minute
# BentoML's request duration histogram on the endpoints the page calls (as the p99 alert in
# config/prometheus/alerts.yml reads it), aggregated over instances: blue/green and swarm replicas alike.
LATENCY_QUERY = (
    "histogram_quantile({q}, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket"
    '{{endpoint=~"/predict|/score|/knowledge_state"}}[5m])))'
)
N_BOOT = 200  # bootstrap resamples of the per-version table's intervals (as `dkt models quality`)

bp = Blueprint("operator", __name__, url_prefix="/operator")


# -- access ---------------------------------------------------------------------------------------------------
def configured_token() -> str:
    raw = current_app.config.get("DKT_OPERATOR_TOKEN")
    value = raw.get_secret_value() if isinstance(raw, SecretStr) else (raw or "")
    return str(value)


def is_operator() -> bool:
    return session.get("role") == ROLE


def token_matches(given: str, expected: str) -> bool:
    """Constant time in the given token's content (hmac.compare_digest); an empty expected token never matches."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _disabled() -> tuple[str, int]:
    return render_template("operator_error.html", message="The operator page is disabled."), 404


@bp.get("/login")
def login_form() -> str | tuple[str, int] | Response:
    if is_operator():
        return redirect(url_for("operator.dashboard"))
    if not configured_token():
        return _disabled()
    return render_template("operator_login.html")


@bp.post("/login")
def login() -> tuple[str, int] | Response:
    expected = configured_token()
    if not expected:
        return _disabled()
    if not token_matches(request.form.get("token", ""), expected):
        log.warning("operator login refused from %s", request.remote_addr)
        return render_template("operator_error.html", message="Access denied."), 403
    session.clear()  # a new identity, as an account sign-in starts one; the app's POST /logout clears it again
    session["role"] = ROLE
    return redirect(url_for("operator.dashboard"))


@bp.get("")
def dashboard() -> str | tuple[str, int] | Response:
    if not is_operator():
        return redirect(url_for("operator.login_form")) if configured_token() else _disabled()
    cfg = current_app.config
    with closing(db.connect(str(cfg["DKT_CLIENT_DB"]))) as conn:
        page = build_page(conn, cfg.get("DKT_PROMETHEUS_URL"), float(cfg.get("DKT_METRICS_WINDOW_DAYS") or 0))
    return render_template("operator.html", panels=page)


# -- panels ---------------------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One section of the page: plots first, then a table; or a message saying why it has nothing to show."""

    key: str
    title: str
    plots: list[Markup] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    message: str | None = None  # shown instead of (or above) the content: no data, source down, ...


def guarded(key: str, title: str, make: Callable[[Panel], None]) -> Panel:
    """Run a panel's builder; any failure becomes its message (logged with the traceback), never the page's."""
    panel = Panel(key, title)
    try:
        make(panel)
    except (Unavailable, TimeoutError) as exc:
        panel.plots, panel.rows = [], []
        panel.message = f"Unavailable: {exc}"
    except Exception as exc:  # one panel's failure must not take the page down
        log.exception("operator page: panel %s failed", key)
        panel.plots, panel.rows = [], []
        panel.message = f"Could not build this panel: {type(exc).__name__}: {exc}"
    return panel


def with_deadline(what: str, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
    """``fn()`` in a thread, waited for at most ``timeout_s`` (default ``SOURCE_TIMEOUT_S``); TimeoutError naming
    ``what`` after that. The thread is left to finish on its own (boto and requests end by their own timeouts):
    the page does not wait for it."""
    timeout_s = SOURCE_TIMEOUT_S if timeout_s is None else timeout_s
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="operator-source")
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"{what} did not answer within {timeout_s:g} s") from None
    finally:
        pool.shutdown(wait=False)


def _day_x(day: str) -> float:
    return float(date.fromisoformat(day).toordinal())


def _day_label(x: float) -> str:
    return date.fromordinal(round(x)).strftime("%m-%d")


def _day_ticks(days: list[str]) -> list[float]:
    """Whole days only, at most about 6 of them: a fractional tick would repeat a date label."""
    lo, hi = int(_day_x(min(days))), int(_day_x(max(days)))
    step = max(1, -(-(hi - lo) // 6))
    return [float(d) for d in range(lo, hi + 1, step)]


def series_name(role: str, version: str) -> str:
    return f"{version} ({role})"


def first_day_shown(last_day: str, days: int = DAYS_SHOWN) -> str:
    return (date.fromisoformat(last_day) - timedelta(days=days - 1)).isoformat()


# -- online quality -------------------------------------------------------------------------------------------
def daily_quality(scored: pd.DataFrame, since_day: str | None = None) -> list[dict[str, Any]]:
    """Per role, model version and UTC day of the answer: n, AUC, ECE, log loss, accuracy (dkt.quality)."""
    if since_day is not None:
        scored = scored[scored["day"] >= since_day]
    rows: list[dict[str, Any]] = []
    for role, group in scored.groupby("role", sort=True):
        for r in quality_table(group, by=BY[1]):
            rows.append({"role": str(role), **{k: r[k] for k in ("model_version", "day", "n", "auc", "ece",
                                                                     "logloss", "accuracy")}})  # fmt: skip
    return rows


def version_quality(scored: pd.DataFrame, since: datetime | None = None, n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """Per role and model version over the answers that arrived at or after ``since`` (naive UTC, as /metrics
    windows them): the metrics with bootstrap 95% intervals and the 10-bin reliability curve (``Quality``)."""
    if since is not None:
        scored = scored[pd.to_datetime(scored["answered_at"], format="ISO8601") >= pd.Timestamp(since)]
    rows = []
    for (role, version), group in scored.groupby(["role", "model_version"], sort=True):
        q = quality(group["probability"].to_numpy(), group["answerCode"].to_numpy(), n_boot=n_boot)
        rows.append({"role": str(role), "model_version": str(version), **q.to_dict()})
    return rows


def quality_over_time_plots(daily: list[dict[str, Any]]) -> list[Markup]:
    """Online AUC and ECE per day, one line per (model version, role); a day whose AUC is undefined has no point."""
    if not daily:
        return []
    ticks = _day_ticks([r["day"] for r in daily])
    out = []
    for metric, title, y_range in (
        ("auc", "Online AUC per day", None),
        ("ece", "Calibration error (ECE) per day", None),
    ):
        series = []
        for key in dict.fromkeys((r["role"], r["model_version"]) for r in daily):
            rows = [r for r in daily if (r["role"], r["model_version"]) == key and r[metric] is not None]
            if rows:
                series.append(plots.Series(
                    series_name(*key),
                    [(_day_x(r["day"]), float(r[metric])) for r in rows],
                    dashed=key[0] != "production",  # a shadow's line is dashed: it was never shown to students
                    tips=[f"{r['day']}: {r[metric]:.4f} (n={r['n']})" for r in rows],
                ))  # fmt: skip
        if series:
            out.append(plots.line_chart(series, title, "day of the answer (UTC)", metric.upper(), x_tick=_day_label,
                                        x_ticks_at=ticks, y_range=y_range, kind=f"{metric}-per-day"))  # fmt: skip
    return out


def reliability_plot(versions: list[dict[str, Any]]) -> Markup | None:
    curves = [
        plots.Series(
            series_name(v["role"], v["model_version"]),
            [(b["mean_probability"], b["observed"]) for b in v["reliability"] if b["n"]],
            dashed=v["role"] != "production",
            tips=[f"{b['lo']:.1f}-{b['hi']:.1f}: n={b['n']}" for b in v["reliability"] if b["n"]],
        )
        for v in versions
    ]
    curves = [c for c in curves if c.points]
    return plots.reliability_diagram(curves) if curves else None


def quality_panel(
    panel: Panel, scored: pd.DataFrame, window_days: float, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Fills the panel; returns the per-version rows (``version_quality``) for the panels that compare with them.
    The reliability diagram and the table cover the answers of /metrics' window (``window_days`` up to ``now``)."""
    if scored.empty:
        panel.message = "No scored answers yet: no answer has arrived for a logged prediction."
        return []
    last = str(scored["day"].max())
    daily = daily_quality(scored, first_day_shown(last))
    panel.plots += quality_over_time_plots(daily)
    since = (now or db.utc_now()) - timedelta(days=window_days) if window_days > 0 else None
    versions = version_quality(scored, since)
    if (rel := reliability_plot(versions)) is not None:
        panel.plots.append(rel)
    span = f"the last {window_days:g} days of answers (DKT_METRICS_WINDOW_DAYS)" if since else "every logged answer"
    panel.notes.append(f"Per-day plots: the last {DAYS_SHOWN} days. Reliability and table: {span}, the answers"
                       " /metrics reports on; [low, high] = bootstrap 95% interval.")  # fmt: skip
    panel.columns = ["model version", "role", "n", "AUC", "ECE", "log loss", "accuracy"]
    for v in versions:
        panel.rows.append([v["model_version"], v["role"], v["n"],
                           *(_with_ci(v, m) for m in ("auc", "ece", "logloss", "accuracy"))])  # fmt: skip
    return versions


def _with_ci(row: dict[str, Any], metric: str) -> str:
    value = row.get(metric)
    if value is None:
        return "-"
    ci = row.get("ci", {}).get(metric)
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


# -- answers per day ------------------------------------------------------------------------------------------
def answers_per_day(conn: sqlite3.Connection, days: int = DAYS_SHOWN) -> list[tuple[str, int]]:
    """(UTC day, answers that arrived that day) for the ``days`` days up to the latest answer; days without
    answers are there with 0 (a gap in term is what the no-answers alert is about)."""
    rows = conn.execute(
        "SELECT substr(COALESCE(answered_at, Timestamp), 1, 10) AS day, COUNT(*) FROM interactions GROUP BY day"
    ).fetchall()
    counts = {str(r[0]): int(r[1]) for r in rows}
    if not counts:
        return []
    last = date.fromisoformat(max(counts))
    first = max(date.fromisoformat(min(counts)), last - timedelta(days=days - 1))
    return [((first + timedelta(d)).isoformat(), counts.get((first + timedelta(d)).isoformat(), 0))
            for d in range((last - first).days + 1)]  # fmt: skip


def answers_panel(panel: Panel, conn: sqlite3.Connection) -> None:
    per_day = answers_per_day(conn)
    if not per_day:
        panel.message = "No answers stored yet."
        return
    panel.plots.append(plots.bar_chart([(d[5:], n) for d, n in per_day], "Answers per day", "day (UTC)", "answers",
                                       y_fmt=lambda v: f"{v:g}", kind="answers-per-day"))  # fmt: skip
    panel.columns = ["day", "answers"]
    panel.rows = [[d, n] for d, n in reversed(per_day) if n]


# -- latency (Prometheus) -------------------------------------------------------------------------------------
def latency_series(
    prometheus_url: str, end: float | None = None, range_s: int = LATENCY_RANGE_S, step_s: int = LATENCY_STEP_S
) -> dict[str, list[tuple[float, float]]]:
    """p50 and p99 of the service's request duration (seconds) over time, from Prometheus' query API:
    quantile -> [(unix time, seconds)], instants without requests in their 5-minute window left out."""
    end = end if end is not None else datetime.now(UTC).timestamp()
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        r = requests.get(
            prometheus_url.rstrip("/") + "/api/v1/query_range",
            params={"query": LATENCY_QUERY.format(q=q), "start": end - range_s, "end": end, "step": step_s},
            timeout=PROMETHEUS_TIMEOUT_S,
        )
        doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if doc.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {r.status_code}: {doc.get('error') or r.text[:200]}")
        points = [(float(t), float(v)) for s in doc["data"]["result"] for t, v in s["values"]]
        out[name] = [(t, v) for t, v in points if v == v and v not in (float("inf"), float("-inf"))]  # NaN: idle
    return out


def latency_panel(panel: Panel, prometheus_url: str | None) -> None:
    if not prometheus_url:
        panel.message = "Prometheus not configured (set DKT_PROMETHEUS_URL)."
        return
    try:
        series = with_deadline(f"Prometheus at {prometheus_url}", lambda: latency_series(prometheus_url))
    except (requests.RequestException, TimeoutError, RuntimeError, ValueError) as exc:
        panel.message = f"Prometheus at {prometheus_url} is unavailable: {exc}"
        return
    if not any(series.values()):
        panel.message = (f"No requests to the service in the last {LATENCY_RANGE_S // 3600} hours"
                         " (bentoml_service_request_duration_seconds).")  # fmt: skip
        return
    panel.plots.append(plots.line_chart(
        [plots.Series(name, [(t, v * 1000) for t, v in pts]) for name, pts in series.items() if pts],
        "Service latency (/predict, /score, /knowledge_state)", "time (UTC)", "ms",
        x_tick=lambda t: datetime.fromtimestamp(t, UTC).strftime("%H:%M"), kind="latency",
    ))  # fmt: skip
    panel.columns = ["quantile", "now (ms)", "max over the plot (ms)"]
    panel.rows = [[name, f"{pts[-1][1] * 1000:.1f}", f"{max(v for _, v in pts) * 1000:.1f}"]
                  for name, pts in series.items() if pts]  # fmt: skip
    panel.notes.append(f"From {prometheus_url}: histogram_quantile over 5-minute rates of BentoML's"
                       " bentoml_service_request_duration_seconds, all instances together.")  # fmt: skip


# -- the store: lineage, promotions, drift --------------------------------------------------------------------
def open_store() -> Any:
    """The versioned store of the store settings (DKT_STORE, ...), or a ``LookupError`` saying why there is none
    here: a local store whose folder does not exist is "not configured" (the client host may not hold it)."""
    from dkt.settings import StoreSettings, load
    from pipeline.store import VersionedStore

    settings = load(StoreSettings)
    if settings.kind == "local" and not settings.root.is_dir():
        raise LookupError(f"no store on this host (DKT_STORE=local, DKT_STORE_ROOT={settings.root} does not exist)")
    return VersionedStore.from_env(settings)


def model_lineage(store: Any) -> dict[str, Any]:
    """Model and data versions, newest first, with what each came from, and the pointers naming each."""
    from pipeline.store import POINTER_NAMES

    def marks(kind: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in POINTER_NAMES[kind]:
            if (v := store.pointed(kind, name)) is not None:
                out.setdefault(v, []).append(name)
        return out

    model_marks, data_marks = marks("models"), marks("datasets")
    models = [{
        "version": m["version"],
        "created_at": m.get("created_at"),
        "data_version": m.get("data_version"),
        "parent": m.get("parent"),
        "commit": (m.get("code_commit") or "")[:12] or m.get("code_version"),
        "model": (m.get("model") or {}).get("name") if isinstance(m.get("model"), dict) else m.get("model"),
        "test_auc": (m.get("metrics") or {}).get("test_auc"),
        "pointers": model_marks.get(m["version"], []),
    } for m in reversed(store.versions("models", errors=[]))]  # fmt: skip
    datasets = [{
        "version": m["version"],
        "created_at": m.get("created_at"),
        "parent": m.get("parent"),
        "rows": (m.get("rows") or {}).get("interactions.csv"),
        "pointers": data_marks.get(m["version"], []),
    } for m in reversed(store.versions("datasets", errors=[]))]  # fmt: skip
    return {"models": models, "datasets": datasets}


def lineage_plot(models: list[dict[str, Any]], online: dict[str, float]) -> Markup | None:
    """Offline test AUC of each model version in the order they were made, and the online AUC of those that
    served: a version that does worse on live students than on its test split stands out."""
    order = list(reversed(models))  # oldest first, left to right
    x = {m["version"]: float(i) for i, m in enumerate(order)}
    offline = [(x[m["version"]], float(m["test_auc"])) for m in order if isinstance(m["test_auc"], int | float)]
    live = [(x[v], auc) for v, auc in online.items() if v in x]
    series = [s for s in (plots.Series("offline test AUC", offline), plots.Series("online AUC", live)) if s.points]
    if not series:
        return None
    return plots.line_chart(series, "AUC per model version", "model version (oldest first)", "AUC",
                            **_labelled_positions([m["version"] for m in order]), kind="model-auc")  # fmt: skip


def lineage_panel(panel: Panel, store_fn: Callable[[], Any], online: dict[str, float], serving: dict[str, str]) -> None:
    lineage = with_deadline("the store", lambda: model_lineage(store_fn()))
    models = lineage["models"]
    for m in models:  # what the prediction log says is serving now, beside what the store's pointers say
        m["pointers"] += [f"serving {role}" for role, v in serving.items() if v == m["version"]]
    if (plot := lineage_plot(models, online)) is not None:
        panel.plots.append(plot)
    panel.columns = ["model version", "marks", "data version", "parent", "commit", "model", "test AUC", "online AUC",
                     "created"]  # fmt: skip
    panel.rows = [[m["version"], ", ".join(m["pointers"]), m["data_version"] or "-", m["parent"] or "-",
                   m["commit"] or "-", m["model"] or "-", _num(m["test_auc"]), _num(online.get(m["version"])),
                   m["created_at"] or "-"] for m in models]  # fmt: skip
    datasets = lineage["datasets"]
    panel.notes.append("Data versions, newest first: " + "; ".join(map(_dataset_line, datasets)) if datasets
                       else "No data versions stored.")  # fmt: skip
    if not models:
        panel.message = "No model versions stored yet."


def _labelled_positions(labels: list[str]) -> dict[str, Any]:
    """x ticks at 0, 1, 2, ... labelled with ``labels``: a chart of things in order rather than over time."""
    return {
        "x_tick": lambda v: labels[round(v)] if 0 <= round(v) < len(labels) else "",
        "x_ticks_at": [float(i) for i in range(len(labels))],
    }


def _dataset_line(d: dict[str, Any]) -> str:
    return (d["version"] + (f" <- {d['parent']}" if d["parent"] else "") + (f" ({d['rows']} rows)" if d["rows"] else "")
            + (f" [{', '.join(d['pointers'])}]" if d["pointers"] else ""))  # fmt: skip


def _num(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


def promotions(store: Any) -> list[dict[str, Any]]:
    """The promotion history, newest first (pipeline/promotions.py: every gate's decision with its figures)."""
    from pipeline import promotions as history_module

    return list(history_module.history(store))


def promotion_plot(history: list[dict[str, Any]]) -> Markup | None:
    """Candidate against production AUC at each decision (oldest first), as the gate compared them."""
    order = list(reversed(history))
    cand, prod, tips = [], [], []
    for i, h in enumerate(order):
        f = h.get("figures") or {}
        tip = f"{h.get('candidate')}: {'promoted' if h.get('promoted') else 'not promoted'} ({h.get('gate')})"
        if isinstance(f.get("candidate_auc"), int | float):
            cand.append((float(i), float(f["candidate_auc"])))
            tips.append(tip)
        if isinstance(f.get("production_auc"), int | float):
            prod.append((float(i), float(f["production_auc"])))
    series = [s for s in (plots.Series("candidate AUC", cand, tips=tips), plots.Series("production AUC", prod,
              dashed=True)) if s.points]  # fmt: skip
    if not series:
        return None
    return plots.line_chart(series, "Promotion decisions: candidate vs production AUC", "decision (oldest first)",
                            "AUC", **_labelled_positions([str(h.get("candidate")) for h in order]),
                            kind="promotions")  # fmt: skip


def promotions_panel(panel: Panel, store_fn: Callable[[], Any]) -> None:
    history = with_deadline("the store", lambda: promotions(store_fn()))
    if not history:
        panel.message = "No promotion decision recorded yet."
        return
    if (plot := promotion_plot(history)) is not None:
        panel.plots.append(plot)
    panel.columns = ["at", "gate", "candidate", "production", "promoted", "n", "candidate AUC", "production AUC",
                     "difference [95% CI]", "reason"]  # fmt: skip
    for h in history:
        f = h.get("figures") or {}
        ci = f.get("diff_ci95")
        diff = _num(f.get("diff")) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if isinstance(ci, list | tuple) and len(ci) == 2
                                      else "")  # fmt: skip
        panel.rows.append([h.get("at", "-"), h.get("gate", "-"), h.get("candidate", "-"), h.get("production") or "-",
                           "yes" if h.get("promoted") else "no", f.get("n", "-"), _num(f.get("candidate_auc")),
                           _num(f.get("production_auc")), diff, h.get("reason", "")])  # fmt: skip


def latest_drift(store: Any) -> dict[str, Any] | None:
    """The drift report of the newest data version that has one (pipeline/drift.py stores one per new version)."""
    from pipeline.drift import read_report

    for m in reversed(store.versions("datasets", errors=[])):
        if (report := read_report(store, m["version"])) is not None:
            return report
    return None


def drift_plot(report: dict[str, Any]) -> Markup | None:
    bars = [(name, float(d["psi"])) for name, d in (report.get("features") or {}).items() if d.get("psi") is not None]
    if not bars:
        return None
    threshold = report.get("threshold")
    return plots.bar_chart(bars, f"Drift of {report.get('data_version')}: PSI per feature", "feature", "PSI",
                           threshold=(float(threshold), f"threshold {threshold}") if threshold is not None else None,
                           kind="drift")  # fmt: skip


def drift_panel(panel: Panel, store_fn: Callable[[], Any]) -> None:
    report = with_deadline("the store", lambda: latest_drift(store_fn()))
    if report is None:
        panel.message = "No drift report stored yet (update_data_dag writes one per new data version)."
        return
    if (plot := drift_plot(report)) is not None:
        panel.plots.append(plot)
    auc = report.get("production_auc") or {}
    panel.notes += [
        f"Data version {report.get('data_version')} against {report.get('reference_version')}"
        f" ({report.get('reference')}); production {report.get('production_version') or '-'};"
        f" made {report.get('created_at')}.",
        f"New answers {report.get('new_answers')}, reference answers {report.get('reference_answers')}.",
        f"Production AUC on the new answers {_num(auc.get('auc'))} (n={auc.get('n', '-')}); its offline test AUC"
        f" {_num(report.get('production_test_auc'))}.",
        f"Retrain: {'yes' if report.get('retrain') else 'no'} ({report.get('reason')}).",
    ]  # fmt: skip
    panel.columns = ["feature", "PSI"]
    panel.rows = [[name, _num(d.get("psi"))] for name, d in (report.get("features") or {}).items()]


# -- the page -------------------------------------------------------------------------------------------------
class Unavailable(RuntimeError):
    """A source the panel needs is not there (no store on this host, a deadline passed): said as it is."""


def build_page(
    conn: sqlite3.Connection, prometheus_url: str | None, window_days: float, store_fn: Callable[[], Any] = open_store
) -> list[Panel]:
    """Every panel, in page order; each carries its plots and table, or the message saying why it has none."""
    scored = db.scored_predictions(conn)
    serving = db.latest_model_versions(conn)
    online: dict[str, float] = {}

    def quality_(panel: Panel) -> None:
        for v in quality_panel(panel, scored, window_days):
            if v["auc"] is not None and (v["role"] == "production" or v["model_version"] not in online):
                online[v["model_version"]] = v["auc"]

    # The store is opened once, up front, for the three panels that read it; each says so if it could not be.
    try:
        opened: Any = with_deadline("the store", store_fn)
    except (LookupError, TimeoutError) as exc:
        opened = Unavailable(str(exc))
    except Exception as exc:  # a bad store setting, a corrupt pointer: each store panel shows it
        opened = exc

    def store() -> Any:
        if isinstance(opened, Exception):
            raise opened
        return opened

    return [
        guarded("quality", "Online quality per model version", quality_),
        guarded("answers", "Answers", lambda p: answers_panel(p, conn)),
        guarded("latency", "Latency", lambda p: latency_panel(p, prometheus_url)),
        guarded("lineage", "Model and data versions", lambda p: lineage_panel(p, store, online, serving)),
        guarded("promotions", "Promotion history", lambda p: promotions_panel(p, store)),
        guarded("drift", "Latest drift report", lambda p: drift_panel(p, store)),
    ]
