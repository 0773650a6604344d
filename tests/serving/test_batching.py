"""Batching: concurrent requests share model calls on the real `bentoml serve` (the ``dkt_batch_size`` histogram on
/metrics), and a job the model raises on fails only its own request (serving/model_worker.py, in-process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from serving.model_worker import KEEP_SESSION, Failed, score_each
from serving.schema import Item, Job
from serving.shadow import Scores, Scoring
from tests.serving.fixtures import Packed
from tests.serving.servers import Server, bentoml_env, bentoml_service
from tests.serving.test_service import items, post, student

AT = "2031-01-01 00:00:00"  # after every simulated answer


def metrics(service: Server) -> str:
    return requests.get(service.url + "/metrics", timeout=60).text


def batch_histogram(text: str) -> dict[str, float]:
    """``dkt_batch_size`` in a /metrics page (summed over the service's processes): count, sum, the le="1.0" bucket."""
    out = {"count": 0.0, "sum": 0.0, "one": 0.0}
    for kind, labels, value in re.findall(r"^dkt_batch_size_(count|sum|bucket)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        key = "one" if kind == "bucket" and 'le="1.0"' in labels else kind
        if key in out:
            out[key] += float(value)
    return out


def concurrent_bodies(sim_dir: Path) -> list[dict]:
    """32 students, each their own history and candidates, all asked at one fixed moment (so two servers agree)."""
    return [
        {"history": student(sim_dir, 20 + i, user_rank=i % 8), "candidates": items(sim_dir, 5, seed=i), "at": AT}
        for i in range(32)
    ]


@pytest.mark.slow
def test_concurrent_requests_are_merged_into_batches(service: Server, sim_dir: Path) -> None:
    bodies = concurrent_bodies(sim_dir)
    before = batch_histogram(metrics(service))
    with ThreadPoolExecutor(32) as pool:
        statuses = [r.status_code for r in pool.map(lambda b: post(service, "/predict", b), bodies)]
    after = batch_histogram(metrics(service))
    assert statuses == [200] * 32
    calls, jobs = after["count"] - before["count"], after["sum"] - before["sum"]
    singles = after["one"] - before["one"]
    print(f"\n[batching] 32 concurrent /predict: {calls:.0f} model calls, {singles:.0f} of one job")
    assert jobs == 32  # every request's job went through the batcher, once (the fixture serves no one else now)
    assert calls < 32 and calls > singles  # fewer calls than requests: at least one call merged several jobs


class Predictor:
    """Scores each candidate 0.5; raises on a batch holding a job whose history is longer than ``bad_over``."""

    def __init__(self, bad_over: int) -> None:
        self.bad_over = bad_over
        self.calls: list[int] = []

    def predict_candidates_batch(self, frames: list[tuple[pd.DataFrame, pd.DataFrame, object]]) -> list[list[float]]:
        self.calls.append(len(frames))
        if any(len(hist) > self.bad_over for hist, _, _ in frames):
            raise ValueError("history too long for this model")
        return [[0.5] * len(cands) for _, cands, _ in frames]


def test_a_job_the_model_raises_on_fails_only_itself() -> None:
    item = Item(assessmentItemID="A1", testId="T1", KnowledgeTag=1)
    answer = {"assessmentItemID": "A1", "testId": "T1", "KnowledgeTag": 1, "answerCode": 1}
    long_history = [{**answer, "assessmentItemID": f"A{i}", "Timestamp": f"2024-01-01 00:00:{i:02d}"} for i in range(3)]
    batch = [Scoring(Job(candidates=[item])), Scoring(Job(history=long_history, candidates=[item, item]))]
    batch.append(Scoring(Job(candidates=[item, item, item])))
    model = Predictor(bad_over=2)
    out = score_each(model, None, batch)  # type: ignore[arg-type]  # a stand-in with the one method used
    assert out[0] == Scores([0.5]) and out[2] == Scores([0.5] * 3)
    assert isinstance(out[1], Failed) and "history too long" in out[1].error
    assert model.calls == [3, 1, 1, 1]  # the whole batch once, then each job alone


@pytest.mark.slow
def test_bentoml_batching_variant_answers_what_the_default_does(
    packed: Packed, service: Server, sim_dir: Path, tmp_path: Path
) -> None:
    """DKT_BATCHING=bentoml (the model worker, BentoML's dispatcher): 32 concurrent requests get what the default
    in-process batcher gives, and BentoML's own batch-size histogram shows merged calls."""
    home = tmp_path / "home"  # its own BENTOML_HOME: its start must not empty the session service's metrics folder
    home.mkdir()
    (home / "models").symlink_to(packed.home / "models")
    env = {**bentoml_env(home, packed.model_tag), "DKT_BATCHING": "bentoml"}
    bodies = concurrent_bodies(sim_dir)
    with bentoml_service("service:DKTService", env, tmp_path / "bentoml.log") as variant:
        # More than 100 calls: BentoML 1.4.39's client between services renews its session every 100 calls, cutting
        # the calls in flight, unless DKTModel's runner_connection (serving/model_worker.py) put that off.
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda b: post(variant, "/predict", b), bodies * 4))
        text = metrics(variant)
    assert [r.status_code for r in got] == [200] * len(got), [r.text for r in got if r.status_code != 200][:3]
    want = [post(service, "/predict", b).json()["predictions"] for b in bodies]
    for r, w in zip(got, want * 4, strict=True):
        np.testing.assert_allclose([p["probability"] for p in r.json()["predictions"]], [p["probability"] for p in w],
                                   atol=1e-5)  # fmt: skip
    ours = batch_histogram(text)
    bentoml_count = re.search(r'^bentoml_service_adaptive_batch_size_count\{[^}]*method_name="score"[^}]*\} (\S+)$',
                              text, re.M)  # fmt: skip
    assert bentoml_count is not None and float(bentoml_count.group(1)) == ours["count"]  # one call, one observation
    print(f"\n[batching] bentoml variant: 128 requests, {ours['sum']:.0f} jobs in {ours['count']:.0f} model calls")
    # Exactly 128 jobs: BentoML's client kept its one session past its 100th call (DKTModel's runner_connection), so
    # no call in flight was cut and sent again (each renewal used to cut ~25, and once one hung into a 504).
    assert ours["sum"] == 128 and ours["count"] < ours["sum"]  # merged: fewer model calls than jobs
    assert "lost its connection" not in (tmp_path / "bentoml.log").read_text()


# What the API worker does at start: load the services' config, then build the proxy for bentoml.depends(DKTModel).
PROXY_SESSION = """
import json, time
from _bentoml_impl.client import RemoteProxy
from serving.model_worker import DKTModel
DKTModel.inject_config()
ours = RemoteProxy("http://127.0.0.1:9", service=DKTModel)._async._session_manager
default = RemoteProxy("http://127.0.0.1:9")._async._session_manager
for manager, calls in ((ours, 10_000), (default, 101)):
    manager._request_count, manager._created_at = calls, time.monotonic()
print(json.dumps([ours.max_requests, ours.max_age, ours._should_refresh(), default._should_refresh()]))
"""


def test_the_model_workers_proxy_keeps_its_session_past_bentomls_default_renewal() -> None:
    """BentoML's own proxy reads DKTModel's ``runner_connection`` (its own process: the config is global)."""
    out = subprocess.run([sys.executable, "-c", PROXY_SESSION], capture_output=True, text=True, timeout=120, check=True)
    max_requests, max_age, ours_renews, default_renews = json.loads(out.stdout.strip().splitlines()[-1])
    assert (max_requests, max_age) == (KEEP_SESSION["max_requests"], KEEP_SESSION["max_age"])
    assert not ours_renews  # 10,000 calls: the same session
    assert default_renews  # what BentoML does without it at its 101st call (a new BentoML may change this line)
