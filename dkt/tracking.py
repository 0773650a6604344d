"""Every training run recorded as an MLflow run (docs/tracking.md).

``dkt.experiment.run`` opens ``training_run`` around one training: the run starts with the config as
parameters, and ``TrackedRun.record`` adds the per-epoch curves of ``history.json`` (one step per epoch or
boosting iteration), the test metrics, the lineage (data version, git commit, config hash, model version) as
tags and the bundle's small JSON files as artifacts. The run ends FINISHED, or FAILED when training raised.
An ensemble's members train through the same ``run``: they become child runs of the ensemble's run.

Tracking never fails a training: with no server configured (DKT_MLFLOW_TRACKING_URI unset), an unreachable
one, or any error the server returns, the training prints one ``warning: ...`` line and goes on untracked.
``mlflow`` (the skinny client) is imported only once a server has answered: it costs seconds to import.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import requests

from dkt.settings import MlflowSettings, SettingsError, load

# MLflow's limits per log_batch call; a config or history larger than one batch goes in several.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
_MAX_PARAM_CHARS = 6000  # MLflow 3 refuses longer parameter values
_STEP_KEYS = ("epoch", "iteration", "step")  # what numbers a history entry, in that order
ARTIFACTS = ("config.json", "metrics.json", "history.json")  # small files of the bundle; the weights stay in the store

# The run being recorded in this context: an ensemble member's ``training_run`` nests under it.
_CURRENT: ContextVar[TrackedRun | None] = ContextVar("dkt_tracked_run", default=None)


def warn(problem: str) -> None:
    print(f"warning: MLflow tracking: {problem}; this training is not tracked", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class TrackedRun:
    """One MLflow run, or nothing (``run_id`` None) when tracking is off. Every call after the first error
    is a no-op: the training has been told once that it goes on untracked."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str | None = None) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    @property
    def on(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.on:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any failure of the server or the client: training must not fail for it
            warn(f"{what} failed at {self.uri} ({one_line(exc)})")
            self.run_id = None
            return None

    def child(self, name: str, params: Mapping[str, str]) -> TrackedRun:
        """A run nested under this one (MLflow's UI shows it under its parent), or an untracked one."""
        if not self.on:
            return TrackedRun()
        exp = self._call("reading the parent run", lambda: self.client.get_run(self.run_id).info.experiment_id)
        return _create(self, exp, name, params, {"mlflow.parentRunId": self.run_id or ""})

    def record(
        self, meta: Mapping[str, Any], metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]], out: Path
    ) -> dict[str, str]:
        """Log the curves, test metrics, lineage and artifacts of a finished training; returns what the bundle's
        metadata records about this run (nothing when untracked)."""
        self._call("logging the results", self._record, meta, metrics, history, out)
        return {"mlflow_run_id": self.run_id, "mlflow_tracking_uri": self.uri or ""} if self.on else {}

    def _record(
        self, meta: Mapping[str, Any], metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]], out: Path
    ) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        points = curve_points(history, now)
        curves = {key for key, *_ in points}
        # metrics.json's valid_auc is the selected epoch's: under the curve's name it would add a point at step 0.
        points += [
            (f"selected_{key}" if key in curves else key, value, now, 0)
            for key, value in metrics.items()
            if _number(value) is not None
        ]
        tags = {key: str(meta[key]) for key in LINEAGE_TAGS if meta.get(key) is not None}
        tags |= {key: str(value) for key, value in metrics.items() if isinstance(value, str)}  # device, reasons
        if meta.get("code_commit") not in (None, "unknown"):
            tags["mlflow.source.git.commit"] = str(meta["code_commit"])  # what MLflow's UI shows as the commit
        tags["bundle_dir"] = str(out.resolve())
        for chunk in _chunks([Metric(k, float(v), t, s) for k, v, t, s in points], _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], _MAX_TAGS):
            self.client.log_batch(self.run_id, tags=chunk)
        for name in ARTIFACTS:
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))

    def end(self, status: str) -> None:
        # MLflow prints the run's address on stdout; train.py's stdout is its metrics line (a public interface).
        with redirect_stdout(sys.stderr):
            self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))


LINEAGE_TAGS = ("model_version", "data_version", "code_commit", "code_dirty", "code_version", "config_hash", "seed")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def curve_points(history: Sequence[Mapping[str, Any]], timestamp_ms: int) -> list[tuple[str, float, int, int]]:
    """(metric, value, timestamp, step) for every finite number of every history entry; the step is the entry's
    epoch (or boosting iteration), else its position. NaN losses of a diverged epoch are left out: MLflow's
    charts cannot draw them, and ``history.json`` (an artifact) keeps them as null."""
    points = []
    for i, entry in enumerate(history):
        step_key = next((k for k in _STEP_KEYS if k in entry), None)
        step = int(entry[step_key]) if step_key else i
        for key, value in entry.items():
            if key != step_key and (number := _number(value)) is not None:
                points.append((key, number, timestamp_ms, step))
    return points


def flat_params(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow parameters: ``train.lr`` -> ``"0.001"``; lists and nulls as JSON."""
    params: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params |= flat_params(value, name + ".")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text[:_MAX_PARAM_CHARS]
    return params


def _create(
    parent: TrackedRun, experiment_id: str | None, name: str, params: Mapping[str, str], tags: Mapping[str, str]
) -> TrackedRun:
    if experiment_id is None:
        return TrackedRun()
    from mlflow.entities import Param

    run = parent._call("starting a run", lambda: parent.client.create_run(experiment_id, run_name=name, tags=tags))
    if run is None:
        return TrackedRun()
    tracked = TrackedRun(parent.client, run.info.run_id, parent.uri)
    for chunk in _chunks([Param(k, v) for k, v in params.items()], _MAX_PARAMS):
        tracked._call("logging the parameters", lambda c=chunk: tracked.client.log_batch(tracked.run_id, params=c))
    return tracked


def _open(name: str, params: Mapping[str, str]) -> TrackedRun:
    """A new top-level run on the configured server, or an untracked run after one warning line."""
    try:
        settings = load(MlflowSettings)
    except SettingsError as exc:
        warn(str(exc))
        return TrackedRun()
    uri = settings.tracking_uri
    if not uri:
        warn("DKT_MLFLOW_TRACKING_URI is not set (`make up` sets it; docs/tracking.md)")
        return TrackedRun()
    uri = uri.rstrip("/")
    # One quick probe first: MLflow's client retries a refused connection for minutes before giving up.
    try:
        requests.get(f"{uri}/health", timeout=settings.timeout).raise_for_status()
    except requests.RequestException as exc:
        warn(f"no tracking server answers at {uri} ({one_line(exc)})")
        return TrackedRun()
    try:
        from mlflow import MlflowClient
    except ImportError as exc:  # an environment installed before requirements.txt named mlflow-skinny
        warn(f"the mlflow client is not installed ({one_line(exc)})")
        return TrackedRun()
    server = TrackedRun(MlflowClient(tracking_uri=uri), "", uri)  # "" = on, no run yet: for _call
    experiment_id = server._call("reading the experiment", _experiment_id, server.client, settings.experiment)
    return _create(server, experiment_id, name, params, {})


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    if (exp := client.get_experiment_by_name(name)) is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created by a training running beside this one in the meantime
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


@contextmanager
def training_run(name: str, params: Mapping[str, str]) -> Iterator[TrackedRun]:
    """The MLflow run of one training, ended FINISHED, or FAILED (KILLED on Ctrl-C) when the block raises."""
    parent = _CURRENT.get()
    tracked = parent.child(name, params) if parent is not None else _open(name, params)
    token = _CURRENT.set(tracked)
    try:
        yield tracked
    except KeyboardInterrupt:
        tracked.end("KILLED")
        raise
    except BaseException:
        tracked.end("FAILED")
        raise
    else:
        tracked.end("FINISHED")
    finally:
        _CURRENT.reset(token)
