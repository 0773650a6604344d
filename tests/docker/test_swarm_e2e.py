"""End to end on a real single-node swarm: build, deploy, rolling update under load, rollback, scale.

Students answer questions through the client (the proxy's published port -> client -> inference by
service name) without pause while update_inference_server_dag (swarm mode, `airflow dags test`)
moves inference to a newly promoted model version, while ``dkt swarm deploy`` deploys
an image whose readiness check fails, and while the DAG's ``replicas`` param scales inference down.
Every request must succeed and show a model version; figures are printed (run with -s to see them).

Two replicas, not the three a host runs by default, and the update starts both new ones at once
(DKT_INFERENCE_UPDATE_PARALLELISM=0 in tests/docker/conftest.py; a host starts one at a time): start-first,
so new replicas start beside old ones that serve, then every old one is stopped at once with only the new
ones left to take its requests, the hardest hand-over for zero failed requests; scaling 2 -> 1 removes a
serving replica as 3 -> 2 would. Each replica start is a torch + bentoml import, 40-60 s on a shared 2-core
CPU: one at a time, the update waited for two of them and two monitor windows.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from dkt.settings import SwarmSettings
from pipeline.settings import store_settings
from pipeline.store import VersionedStore
from pipeline.swarm_images import REPO_ROOT
from tests.dags.airflow_runner import dags_test, migrate
from tests.docker.conftest import swarm_cli, timeline
from tests.support.students import CSRF, DEGRADED, ITEM, answer_key, sign_up_form

pytestmark = [pytest.mark.slow, pytest.mark.docker]

MODEL_RE = re.compile(r'<p class="foot">Model ([^<]+)</p>')
# Students answering without pause: enough that well over MIN_DURING_UPDATE requests go through during a rollout
# (1,178 in 140 s on 2 replicas at load 5-8; the floor leaves room for a CI machine twice as busy, where each
# request is slower: the property is 0 failed among requests sent all through the update, not a rate).
STUDENTS = 6
MIN_DURING_UPDATE = 500
REPLICAS = 2  # see the module's docstring


def dump_diagnostics(env: dict[str, str], phase: str) -> Path:
    """Task history and time-stamped logs of every container of the stack, for a failed phase.

    Per-container `docker logs`, each with a timeout: `docker service logs` hung on a busy node."""
    out = Path(os.environ.get("DKT_E2E_DIAG_DIR", "/tmp")) / f"{env['DKT_STACK']}-{phase}.log"

    def sh(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "(timed out)\n"
        return done.stdout + done.stderr

    with out.open("w") as f:
        for svc in ("inference", "client", "proxy", "prometheus"):
            name = f"{env['DKT_STACK']}_{svc}"
            f.write(f"\n$ docker service ps {name}\n" + sh(["docker", "service", "ps", "--no-trunc", name]))
            label = f"label=com.docker.swarm.service.name={name}"
            for cid in sh(["docker", "ps", "-aq", "--filter", label]).split():
                f.write(f"\n$ docker logs {cid}\n" + sh(["docker", "logs", "--timestamps", "--tail", "2000", cid]))
    return out


def task_addresses(env: dict[str, str], service: str) -> set[str]:
    """The address of every running task of a stack service on the stack's overlay network: what `tasks.<service>`
    resolves to inside the stack, asked of the engine instead of its DNS."""
    stack = env["DKT_STACK"]
    label = f"label=com.docker.swarm.service.name={stack}_{service}"
    ids = subprocess.run(["docker", "ps", "-q", "--filter", label], capture_output=True, text=True, check=True).stdout
    addresses = set()
    for cid in ids.split():
        fmt = "{{json .NetworkSettings.Networks}}"
        nets = json.loads(subprocess.run(["docker", "inspect", "-f", fmt, cid], capture_output=True, text=True,
                                         check=True).stdout)  # fmt: skip
        addresses.add(nets[f"{stack}_dkt"]["IPAddress"])
    return addresses


def wait_until_prometheus_scrapes_every_task(env: dict[str, str], replicas: int) -> dict[str, dict[str, float]]:
    """Ask the stack's Prometheus (its query API, on the published port) for `up` of the inference and client jobs
    until it lists exactly the running tasks (``replicas`` inference replicas, one client), each answering: 1.
    Targets follow `tasks.<service>` DNS every 10 s and are scraped every 15 s, so it is polled; requests that
    time out on a busy host are retried until the deadline. Returns job -> instance -> up."""
    url = f"http://127.0.0.1:{env['DKT_PROMETHEUS_HOST_PORT']}/api/v1/query"
    deadline = time.monotonic() + 300
    got: object = None
    while True:
        want = {
            "inference": {f"{ip}:3000": 1.0 for ip in task_addresses(env, "inference")},
            "client": {f"{ip}:8000": 1.0 for ip in task_addresses(env, "client")},
        }
        try:
            result = requests.get(url, params={"query": 'up{job=~"inference|client"}'}, timeout=30).json()
            scraped: dict[str, dict[str, float]] = {"inference": {}, "client": {}}
            for series in result["data"]["result"]:
                scraped[series["metric"]["job"]][series["metric"]["instance"]] = float(series["value"][1])
            got = scraped
        except (requests.RequestException, ValueError, KeyError) as exc:
            got = f"{type(exc).__name__}: {exc}"
        if got == want and len(want["inference"]) == replicas and len(want["client"]) == 1:
            return want
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus at {url} scrapes {got}; the running tasks are {want} ({replicas} replicas)")
        time.sleep(3)


@dataclass
class Load:
    """Students answering questions through the client without pause, each reply checked."""

    url: str
    sessions: list[requests.Session]  # one signed-in student each (``signed_up``)
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)
    versions: list[tuple[float, str]] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # when each reply (good or bad) came back
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _page(self, resp: requests.Response, what: str) -> str | None:
        version = MODEL_RE.search(resp.text) if resp.status_code == 200 else None
        with self.lock:
            self.sent.append(time.monotonic())
            if version is None:
                degraded = DEGRADED in resp.text
                self.failures.append(f"{what}: HTTP {resp.status_code} " + ("predictions unavailable" if degraded
                                     else repr(resp.text[:120])))  # fmt: skip
                self.failed_at.append(time.monotonic())
                return None
            self.ok += 1
            self.versions.append((time.monotonic(), version.group(1)))
        return resp.text

    def student(self, n: int) -> None:
        s = self.sessions[n]
        try:
            text: str | None = None  # signed in already: the first request asks for a question
            while not self.stop.is_set():
                if text is None:
                    text = self._page(s.get(self.url + "/practice", timeout=30), "practice")
                    continue
                item, token = ITEM.search(text), CSRF.search(text)
                assert item and token
                form = {"csrf_token": token.group(1), "item": item.group(1), "answer": str(n % 7)}
                text = self._page(s.post(self.url + "/answer", data=form, timeout=30), "answer")
        except (requests.RequestException, AssertionError) as exc:
            with self.lock:
                self.failures.append(f"student {n}: {type(exc).__name__}: {exc}")
                self.failed_at.append(time.monotonic())

    def timeline(self, t0: float) -> str:
        """When the failures happened, in seconds after t0: a few numbers that tell a burst from a trickle."""
        with self.lock:
            times = sorted(t - t0 for t in self.failed_at)
        if not times:
            return "no failures"
        return f"{len(times)} failures from {times[0]:.1f} s to {times[-1]:.1f} s after the deploy started"

    def between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(t0 <= t <= t1 for t in self.sent)

    def replies_after(self, t0: float, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` replies (good or bad) came back after ``t0``: before a phase, that every student is
        answering; after one, that the load was seen on its far side. An observable condition instead of a fixed
        sleep; it gives up when every student stopped on a failure, which the caller's assertions then report."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(t.is_alive() for t in self.threads):
            with self.lock:
                if sum(t > t0 for t in self.sent) >= count:
                    return
            time.sleep(0.1)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self.student, args=(i,), daemon=True) for i in range(len(self.sessions))
        ]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.fixture(scope="module", autouse=True)
def migrating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Future[None]]]:
    """Airflow's `db migrate` (a subprocess, 20-40 s), started with the module so that it runs while the first
    deploy waits on its replicas' start, instead of after it in the first DAG test's set-up."""
    home = tmp_path_factory.mktemp("airflow")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield home, pool.submit(migrate, home)


@pytest.fixture(scope="module")
def airflow_home(migrating: tuple[Path, Future[None]]) -> Path:
    home, migrated = migrating
    migrated.result()  # re-raises the migration's failure here
    return home


def deploy_dag(home: Path, env: dict[str, str], log: Path, conf: dict[str, object] | None = None) -> dict[str, Any]:
    """Run update_inference_server_dag (swarm mode) to the end; returns what its deploy step wrote."""
    before = set(Path(env["DKT_WORK_ROOT"]).glob("update_inference_server/*/deploy.json"))
    dags_test(home, "update_inference_server_dag", env, log, timeout=900, conf=conf)
    (written,) = set(Path(env["DKT_WORK_ROOT"]).glob("update_inference_server/*/deploy.json")) - before
    doc: dict[str, Any] = json.loads(written.read_text())
    return doc


@pytest.fixture(scope="module")
def first_deploy(stack_env: dict[str, str], bundles: tuple[Path, Path]) -> tuple[dict[str, Any], float]:
    """The stack, deployed once for the module's tests (a deploy takes minutes)."""
    first, first_s = swarm_cli(stack_env, "deploy", "--model-dir", str(bundles[0]), "--replicas", str(REPLICAS))
    assert first.returncode == 0, first.stderr[-3000:]
    print(f"\n[e2e] first deploy, {first_s:.0f} s:\n" + timeline(first.stderr))
    out: dict[str, Any] = json.loads(first.stdout)
    assert out["model_version"] == "test-v1"
    return out, first_s


@pytest.fixture(scope="module")
def signed_up(stack_env: dict[str, str], first_deploy: tuple[dict[str, Any], float]) -> list[requests.Session]:
    """The load's students, registered once for the module, one after another, before any load: a sign-up hashes
    a password with argon2 (64 MiB, seconds of the client's 0.5 CPU), and six at once took the client over 30 s
    (every student's first request timed out, load 10-13). The loads measure serving during a rollout, not
    sign-up bursts; the sessions stay signed in across them (the client is not redeployed)."""
    client = f"http://127.0.0.1:{stack_env['DKT_CLIENT_HOST_PORT']}"
    sessions = []
    for n in range(STUDENTS):
        s = requests.Session()
        token = CSRF.search(s.get(client + "/", timeout=60).text)
        assert token
        page = s.post(client + "/register", data=sign_up_form(token.group(1), f"e2e{n}"), timeout=120)
        assert page.status_code == 200 and MODEL_RE.search(page.text), (page.status_code, page.text[:300])
        sessions.append(s)
    return sessions


def test_answers_given_through_the_page_reach_the_next_data_version(
    stack_env: dict[str, str], first_deploy: tuple[dict[str, Any], float], airflow_home: Path, sim_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    assert first_deploy[0]["client_db"] == stack_env["DKT_CLIENT_DB"]
    client = f"http://127.0.0.1:{stack_env['DKT_CLIENT_HOST_PORT']}"
    push = subprocess.run([sys.executable, "-m", "dkt", "data", "push", str(sim_dir), "--version", "d1"], env=stack_env,
                          cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert push.returncode == 0, push.stderr[-2000:]
    key = answer_key(sim_dir / "questions.csv")
    given: dict[str, list[tuple[str, int]]] = {}  # nickname -> (item, answerCode) as answered on the page
    for n in range(3):
        nickname = f"swarm-answers-{n}"
        s = requests.Session()
        token = CSRF.search(s.get(client + "/", timeout=30).text)
        assert token
        page = s.post(client + "/register", data=sign_up_form(token.group(1), nickname), timeout=30)
        for k in range(4):
            item, token = ITEM.search(page.text), CSRF.search(page.text)
            assert page.status_code == 200 and item and token, page.text[:300]
            right = (n + k) % 2 == 0
            # A wrong answer is a wrong number: the page refuses a non-numeric one without storing it.
            answer = key[item.group(1)] if right else str(int(key[item.group(1)]) + 1)
            form = {"csrf_token": token.group(1), "item": item.group(1), "answer": answer}
            page = s.post(client + "/answer", data=form, timeout=30)
            given.setdefault(nickname, []).append((item.group(1), int(right)))
    # The container wrote the host file the export reads (one store, not a copy): the student ids are there.
    with sqlite3.connect(stack_env["DKT_CLIENT_DB"]) as c:
        ids = dict(c.execute("SELECT nickname, id FROM students WHERE nickname LIKE 'swarm-answers-%'").fetchall())
    want = Counter((f"web-{ids[nick]:06d}", item, code) for nick, rows in given.items() for item, code in rows)
    t0 = time.monotonic()
    dags_test(airflow_home, "update_data_dag", stack_env, tmp_path / "update-data.log", timeout=600)
    update_s = time.monotonic() - t0
    store = VersionedStore.from_env(store_settings(stack_env))
    latest = store.pointed("datasets", "latest")
    assert latest != "d1"
    store.pull("datasets", "latest", tmp_path / "latest")
    df = pd.read_csv(tmp_path / "latest" / "interactions.csv", dtype={"userID": str, "assessmentItemID": str})
    web = df[df["userID"].str.startswith("web-")]
    got = Counter(zip(web["userID"], web["assessmentItemID"], web["answerCode"].astype(int), strict=True))
    assert got == want, (want - got, got - want)
    print(f"\n[e2e] {sum(want.values())} answers given through the swarm client's page; update_data_dag "
          f"{update_s:.0f} s; data version {latest} holds each exactly once")  # fmt: skip


def test_the_stacks_prometheus_scrapes_every_inference_replica_and_the_client(
    stack_env: dict[str, str], first_deploy: tuple[dict[str, Any], float]
) -> None:
    """The stack's own Prometheus (an image built offline beside the others, Debian's binary) finds each replica
    through `tasks.inference` DNS and scrapes it: up == 1 for every running task, through its query API."""
    assert first_deploy[0]["prometheus"] == f"http://127.0.0.1:{stack_env['DKT_PROMETHEUS_HOST_PORT']}"
    t0 = time.monotonic()
    up = wait_until_prometheus_scrapes_every_task(stack_env, REPLICAS)
    # Scraped, not only reachable: BentoML's own metrics come from every replica (its /readyz checks count).
    query = {"query": "count by (instance) (bentoml_service_request_total)"}
    result = requests.get(first_deploy[0]["prometheus"] + "/api/v1/query", params=query, timeout=30).json()
    assert {s["metric"]["instance"] for s in result["data"]["result"]} == set(up["inference"]), result
    rules = requests.get(first_deploy[0]["prometheus"] + "/api/v1/rules", timeout=30).json()["data"]["groups"]
    alerts = {rule["name"] for group in rules for rule in group["rules"]}
    print(f"\n[e2e] Prometheus scrapes {up} ({time.monotonic() - t0:.0f} s after the tests before it); "
          f"{len(alerts)} alert rules loaded")  # fmt: skip
    assert {"DktOnlineAucBelowOffline", "DktOnlineCalibrationPoor", "DktNoAnswersInTerm"} <= alerts


def test_the_swarms_inference_image_is_the_slim_bento_and_scores_as_the_app_venv(
    stack_env: dict[str, str], first_deploy: tuple[dict[str, Any], float], bundles: tuple[Path, Path], sim_dir: Path
) -> None:
    """The image the first deploy built from the lstm Bento (`bentoml containerize` on the slim runtime: only the
    Bento's packages, pruned, stripped) is at most 700 MB (issue 15), and a replica scores a real request as the
    app venv's own predictor does (nothing stripped). Here rather than in a build of its own: the e2e builds it."""
    import numpy as np

    from tests.serving.test_service import items, local, student

    image = first_deploy[0]["images"]["inference"]
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True, check=True).stdout)  # fmt: skip
    print(f"\n[e2e] inference image {image}: {size / 1e6:,.1f} MB")
    assert size <= 700e6, f"{image} is {size / 1e6:,.1f} MB"
    history, candidates, at = student(sim_dir, 30), items(sim_dir, 20), "2031-01-01 00:00:00"
    url = f"http://127.0.0.1:{stack_env['DKT_INFERENCE_HOST_PORT']}/predict"
    got = requests.post(url, json={"history": history, "candidates": candidates, "at": at}, timeout=120)
    assert got.status_code == 200, got.text[:500]
    want = local(bundles[0], history, candidates, pd.Timestamp(at))
    np.testing.assert_allclose([p["probability"] for p in got.json()["predictions"]], want, rtol=0, atol=1e-5)


def test_rolling_update_rollback_and_scale_serve_every_request(
    stack_env: dict[str, str],
    bundles: tuple[Path, Path],
    first_deploy: tuple[dict[str, Any], float],
    signed_up: list[requests.Session],
    airflow_home: Path,
    tmp_path: Path,
) -> None:
    _v1, v2 = bundles
    client = f"http://127.0.0.1:{stack_env['DKT_CLIENT_HOST_PORT']}"
    first_s = first_deploy[1]

    # 1. A new model is promoted; update_inference_server_dag rolls it out while students answer.
    with Load(client, signed_up) as load:
        load.replies_after(0, STUDENTS)
        started = time.monotonic()
        push = subprocess.run([sys.executable, "-m", "dkt", "models", "push", str(v2), "--promote"], env=stack_env,
                              cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
        assert push.returncode == 0, push.stderr[-2000:]
        out = deploy_dag(airflow_home, stack_env, tmp_path / "deploy-v2.log")["result"]
        converged = time.monotonic()
        load.replies_after(converged, 2 * STUDENTS)
    during = load.between(started, converged)
    if load.failures:
        print(f"\n[e2e] update: {load.timeline(started)}; diagnostics in {dump_diagnostics(stack_env, 'update')}")
    print(
        f"\n[e2e] first deploy {first_s:.0f} s; promoted -> all replicas serve v2 {converged - started:.0f} s "
        f"(DAG: build {out['build_seconds']} s, rollout {out['rollout_seconds']} s); "
        f"requests sent during it: {during}; in all {load.ok} ok, {len(load.failures)} failed"
    )
    assert out["model_version"] == "test-v2" and out["inference"]["running"] == REPLICAS
    assert load.failures == [], (len(load.failures), sorted(set(f[:90] for f in load.failures))[:5])
    assert during >= MIN_DURING_UPDATE, f"only {during} requests went through during the update"
    assert {v for _, v in load.versions} >= {"test-v1", "test-v2"}
    after = [v for t, v in load.versions if t > converged]
    assert after and set(after) == {"test-v2"}

    # 2. An image whose readiness check fails: Swarm rolls it back, the command fails and says so.
    v2_image = out["images"]["inference"]
    broken = v2_image.rsplit(":", 1)[0] + ":test-broken"
    dockerfile = f"FROM {v2_image}\nENV DKT_MODEL_TAG=dkt-model:no-such-version\n"
    subprocess.run(["docker", "build", "-t", broken, "-"], input=dockerfile, text=True, check=True, capture_output=True)
    subprocess.run(["docker", "push", broken], check=True, capture_output=True)

    with Load(client, signed_up) as load:
        load.replies_after(0, STUDENTS)
        started = time.monotonic()
        # The broken image never turns ready; with the 240 s start period a host needs, Swarm would count its
        # failed checks only after 255 s. A short one for this deploy alone: the rollback restores the previous
        # spec, its start period included (asserted below).
        rollback, rollback_s = swarm_cli(
            {**stack_env, "DKT_INFERENCE_START_PERIOD": "20s"}, "deploy", "--image", broken
        )
        ended = time.monotonic()
        load.replies_after(ended, STUDENTS)
    during = load.between(started, ended)
    if load.failures:
        print(f"\n[e2e] rollback: {load.timeline(started)}; diagnostics in {dump_diagnostics(stack_env, 'rollback')}")
        print(rollback.stderr[-3000:])
    print(
        f"[e2e] broken image rolled back in {rollback_s:.0f} s; requests sent during it: {during}; "
        f"in all {load.ok} ok, {len(load.failures)} failed"
    )
    assert rollback.returncode == 1, rollback.stdout + rollback.stderr[-2000:]
    assert "failed and was rolled back" in rollback.stderr and ":test-broken" in rollback.stderr
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 20 and {v for _, v in load.versions} == {"test-v2"}

    status, _ = swarm_cli(stack_env, "status")
    inference = json.loads(status.stdout)["services"]["inference"]
    assert inference["image"].startswith(v2_image) and inference["running"] == REPLICAS
    fmt = "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck.StartPeriod}}"
    name = f"{stack_env['DKT_STACK']}_inference"
    start_ns = subprocess.run(["docker", "service", "inspect", "--format", fmt, name], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    default = SwarmSettings.model_fields["inference_start_period"].default  # "240s"
    assert start_ns == str(int(default.removesuffix("s")) * 10**9), start_ns  # nanoseconds: the spec rolled back whole

    # 3. An operator scales inference with the DAG's `replicas` param: the same model, no rolling update.
    with Load(client, signed_up) as load:
        load.replies_after(0, STUDENTS)
        started = time.monotonic()
        scaled = deploy_dag(airflow_home, stack_env, tmp_path / "deploy-scale.log", conf={"replicas": REPLICAS - 1})[
            "result"
        ]
        ended = time.monotonic()
        load.replies_after(ended, STUDENTS)
    if load.failures:
        print(f"\n[e2e] scale: {load.timeline(started)}; diagnostics in {dump_diagnostics(stack_env, 'scale')}")
    print(
        f"[e2e] scaled {REPLICAS} -> {REPLICAS - 1} replicas with the DAG in {ended - started:.0f} s; requests: "
        f"{load.between(started, ended)}; in all {load.ok} ok, {len(load.failures)} failed"
    )
    assert scaled["images"]["inference"] == v2_image, "redeploying the same version must reuse its image"
    assert scaled["inference"]["replicas"] == scaled["inference"]["running"] == REPLICAS - 1
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 20 and {v for _, v in load.versions} == {"test-v2"}
    # Prometheus follows the replicas through the update and the scale: the new tasks are its targets, the gone
    # ones are not (tasks.inference DNS), each answering.
    t0 = time.monotonic()
    up = wait_until_prometheus_scrapes_every_task(stack_env, REPLICAS - 1)
    print(f"[e2e] after the update and the scale, Prometheus scrapes {up} ({time.monotonic() - t0:.0f} s)")
