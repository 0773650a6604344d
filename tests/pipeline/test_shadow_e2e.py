"""Acceptance of issue 12's live evidence, end to end with real parts: a production model and a shadow served by a
real `bentoml serve` (deployed by the update_inference_server_dag steps from the store's pointers), simulated
students answering through the real client under gunicorn, a real Prometheus scraping the client.

Phase 1: production = the session's LSTM, shadow = the same tiny LSTM trained on shuffled answers (worse).
  (a) the online AUC of each version (`dkt models quality --json`, the client's /metrics) is within 0.02 of the
      AUC its bundle gives offline on the same answers, each scored after the same history at the answer's time;
  (b) Prometheus returns a dkt_online_auc series for both versions through /api/v1/query;
  (c) `dkt models promote-shadow` refuses the worse shadow (exit 99), production stays.
Phase 2, roles swapped (the worse model in production, the better one its shadow; one more blue/green deploy):
  promote-shadow promotes the shadow (exit 0), production names it, the shadow pointer is cleared.
Both deploys are also the local blue/green switch's test (it was a test of its own in tests/pipeline/test_deploy.py,
two more `bentoml serve` and a Bento build proving the same steps): phase 1's pack reuses the session's Bento, phase
2's builds one; the client's URL file, the store's serving state and each server's own metric files follow each
switch, the old server is stopped after it, and `dkt deploy stop` ends the last.
Figures are printed with -s (`[shadow-e2e]` lines) and quoted in docs/monitoring.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dkt.cli import EXIT_SKIP
from dkt.data.schema import COLUMNS
from dkt.predictor import load_predictor
from dkt.quality import auc
from models.cli import main as models_cli
from pipeline import deploy, deploy_local, deploy_served, prometheus
from pipeline.store import VersionedStore
from pipeline.workdir import work_dir
from tests.pipeline.test_deploy import local_store
from tests.pipeline.test_prometheus import poll, tool
from tests.serving.fixtures import Packed
from tests.serving.servers import ROOT, free_port
from tests.serving.shadow_bundles import SHUFFLED_VERSION, shuffled_bundle_dir
from tests.support.ports import free_port_pair
from tests.support.students import client_server, irt_students, run_students

pytestmark = pytest.mark.slow

GOOD = "test-v1"  # the session bundle's model_version
PHASE_STUDENTS, PHASE_ANSWERS = 8, 20  # per phase: 160 answers, each scored by both models
MIN_ANSWERS = 100  # DKT_SHADOW_MIN_ANSWERS: what the gate waits for
# A question chosen by target difficulty (the candidate whose production probability is closest to 0.7) squeezes
# production's logged probabilities into 0.69-0.71 and its online AUC to about 0.5 whatever the model; the gate
# therefore reads explored questions only (docs/monitoring.md#exploration). Every question explored here, so every
# answer counts for the online AUCs and the gate alike.
EXPLORE_RATE = 1.0


@pytest.fixture(scope="session")
def shuffled_bundle(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shuffled_bundle_dir(sim_dir, tmp_path_factory)


def models(*argv: str) -> tuple[int, str]:
    """`dkt models ...` in-process: exit code and stdout."""
    out = io.StringIO()
    with redirect_stdout(out):
        rc = models_cli(list(argv))
    return rc, out.getvalue()


def deploy_steps(run_id: str) -> dict[str, Any]:
    """The four update_inference_server_dag steps; the verify step's document."""
    out = io.StringIO()
    for step in ("pull-model", "pack", "deploy", "verify"):
        err = io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = deploy.main([step, "--run-id", run_id])
        sys.stderr.write(err.getvalue())
        said = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
        assert rc == 0, f"dkt deploy {step} failed with {rc}: {said}"  # the reason in the summary line, not a log
    return json.loads(out.getvalue().strip().splitlines()[-1])


def switched(run: Path, run_id: str, version: str, verified: dict[str, Any], store: VersionedStore) -> dict[str, Any]:
    """What one blue/green deploy left (the checks of test_deploy's former blue/green test): the Bento packed for
    ``version``, the client's URL file on the new server, the store's serving state, the server's metric files in
    its own BENTOML_HOME. Returns the local serving state with the metric files' names (``metric_files``)."""
    state = json.loads((run / "serving.json").read_text())
    url = (run / "inference_url").read_text().strip()
    packed = json.loads((work_dir(deploy.FLOW, run_id) / "pack.json").read_text())
    assert packed["bento_tag"] == f"dkt-service:{version}"
    assert verified["model_version"] == version and verified["production"] == version
    assert url == state["url"] == verified["url"]
    assert requests.get(url + "/metrics", timeout=30).status_code == 200
    metrics_dir = Path(state["bentoml_home"], "prometheus_multiproc_dir")
    state["metric_files"] = {p.name for p in metrics_dir.glob("*.db")}
    assert state["metric_files"], f"{version} wrote no metric files in {metrics_dir}"
    serving = store.get_state(deploy_served.SERVING_STATE)
    assert (serving["model_version"], serving["mode"], serving["metadata_url"]) == (version, "local", url + "/metadata")
    return state


def offline_auc(bundle: Path, client_db: Path, role: str, version: str) -> tuple[float | None, int]:
    """The AUC the bundle gives, in-process, on the answers the client logged a ``role`` prediction of ``version``
    for: each answer's item scored after the student's earlier answers, at the answer's Timestamp (when it was
    shown), as the client asked the service."""
    with sqlite3.connect(client_db) as conn:
        answers = pd.read_sql_query(
            "SELECT i.id, i.student_id, " + ", ".join(f"i.{c}" for c in COLUMNS) + " FROM interactions i ORDER BY id",
            conn,
        )
        logged = pd.read_sql_query(
            "SELECT interaction_id FROM predictions WHERE role = ? AND model_version = ?"
            " AND interaction_id IS NOT NULL",
            conn,
            params=(role, version),
        )
    answers["Timestamp"] = pd.to_datetime(answers["Timestamp"])
    answers["answerCode"] = answers["answerCode"].astype(int)
    by_id = answers.set_index("id")
    jobs = []
    for iid in logged["interaction_id"]:
        row = by_id.loc[iid]
        earlier = answers[(answers["student_id"] == row["student_id"]) & (answers["id"] < iid)]
        candidate = pd.DataFrame([{k: row[k] for k in ("assessmentItemID", "testId", "KnowledgeTag")}])
        jobs.append((earlier.loc[:, list(COLUMNS)].reset_index(drop=True), candidate, row["Timestamp"]))
    probs = [float(p[0]) for p in load_predictor(bundle).predict_candidates_batch(jobs)]
    labels = by_id.loc[logged["interaction_id"], "answerCode"].to_numpy()
    return auc(probs, labels), len(jobs)


def online(client_db: Path) -> dict[str, dict[str, Any]]:
    rc, out = models("quality", "--json", "--db", str(client_db), "--n-boot", "0")
    assert rc == 0
    return {str(r["model_version"]): r for r in json.loads(out)}


def metrics_auc(base: str) -> dict[str, float]:
    text = requests.get(base + "/metrics", timeout=60).text
    return {
        s.labels["model_version"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "dkt_online_auc"
        for s in family.samples
    }


def test_shadow_online_quality_prometheus_and_promotion_on_live_evidence(
    packed: Packed,
    shuffled_bundle: Path,
    sim_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tool("prometheus")
    t0 = time.monotonic()
    figures: list[str] = []

    def phase(what: str) -> None:
        figures.append(f"{time.monotonic() - t0:5.0f} s  {what}")

    store: VersionedStore = local_store(tmp_path, monkeypatch)
    run, home = tmp_path / "run", tmp_path / "bentoml"
    # The session's packer run already holds test-v1's model and Bento: its pack step reuses them.
    for part in ("models", "bentos"):
        shutil.copytree(packed.home / part, home / part, symlinks=True)
    client_db, client_port, prom_port = tmp_path / "client.db", free_port(), free_port()
    env = {
        "DKT_RUN_DIR": str(run), "DKT_WORK_ROOT": str(tmp_path / "work"), "DKT_VAR_DIR": str(tmp_path / "var"),
        "DKT_DEPLOY_MODE": "local", "BENTOML_HOME": str(home), "DKT_SERVE_PORT": str(free_port_pair()),
        "DKT_DEPLOY_STRATEGY": "restart",  # the blue/green switch is what this test checks (the swap: test_deploy)
        "DKT_DRAIN_SECONDS": "0", "DKT_READY_TIMEOUT": "240", "DKT_VERIFY_TIMEOUT": "120",
        "DKT_CLIENT_DB": str(client_db), "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "DKT_INFERENCE_URL_FILE": str(run / "inference_url"), "DKT_SECRET_KEY": "shadow-e2e-only",
        # Generous: on a loaded CI machine a page must not fall back to "predictions unavailable".
        "DKT_INFERENCE_TIMEOUT_S": "30", "DKT_INFERENCE_DEADLINE_S": "90",
        "DKT_CLIENT_PORT": str(client_port), "DKT_PROMETHEUS_PORT": str(prom_port),
        "DKT_PROMETHEUS_SCRAPE_INTERVAL": "1s", "DKT_SHADOW_MIN_ANSWERS": str(MIN_ANSWERS),
        "DKT_EXPLORE_RATE": str(EXPLORE_RATE),
    }  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    questions = sim_dir / "questions.csv"
    chance = irt_students(questions)
    bundles = {GOOD: packed.bundle, SHUFFLED_VERSION: shuffled_bundle}

    store.push("models", packed.bundle, GOOD, move_pointers=("latest", "production"))
    store.push("models", shuffled_bundle, SHUFFLED_VERSION)
    assert models("shadow", SHUFFLED_VERSION)[0] == 0
    servers: list[int] = []  # the pids of the deployed servers, in order
    try:
        up = subprocess.run([sys.executable, "-m", "pipeline.prometheus", "up"], cwd=ROOT, env={**os.environ},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
        assert up.returncode == 0, up.stderr
        verified = deploy_steps("phase-1")
        assert (verified["model_version"], verified["shadow_version"]) == (GOOD, SHUFFLED_VERSION)
        first = switched(run, "phase-1", GOOD, verified, store)
        servers.append(first["pid"])
        meta = requests.get(verified["url"] + "/metadata", timeout=30).json()
        assert (meta["model_version"], meta["shadow"]["model_version"]) == (GOOD, SHUFFLED_VERSION)
        phase(f"production {GOOD} + shadow {SHUFFLED_VERSION} deployed (4 steps), Prometheus up")

        with client_server({**os.environ}, client_port, tmp_path / "client.log", timeout=180) as base:
            tally = run_students(base, questions, PHASE_STUDENTS, PHASE_ANSWERS, seed=1, prefix="p1", chance=chance)
            assert tally.failed == 0 and tally.answers == PHASE_STUDENTS * PHASE_ANSWERS, tally.errors
            phase(f"phase 1: {tally.answers} answers through the client")

            # (a) online == offline, per version, within 0.02; /metrics says the same as the command.
            quality = online(client_db)
            assert set(quality) == {GOOD, SHUFFLED_VERSION}
            for version, role in ((GOOD, "production"), (SHUFFLED_VERSION, "shadow")):
                off, n = offline_auc(bundles[version], client_db, role, version)
                on = quality[version]["auc"]
                figures.append(f"      {role} {version}: n={n} online AUC {on:.4f}, offline {off:.4f}")
                assert quality[version]["n"] == n == tally.answers
                assert off is not None and abs(on - off) <= 0.02
            served = metrics_auc(base)
            conn = sqlite3.connect(client_db)
            try:  # every question was drawn at random, both roles' rows say so
                assert conn.execute("SELECT DISTINCT explored FROM predictions").fetchall() == [(1,)]
            finally:
                conn.close()
            assert served.keys() == quality.keys()
            assert all(abs(served[v] - quality[v]["auc"]) < 1e-9 for v in served)

            # (b) the real Prometheus has scraped both series, with the values the client shows now. A scrape taken
            # while the answers were still arriving holds an earlier AUC (ci27 met one): that is "not yet".
            seen: dict[str, float] = {}

            def query() -> dict[str, float]:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query"
                doc = requests.get(url, params={"query": 'dkt_online_auc{job="client"}'}, timeout=30).json()
                found = {s["metric"]["model_version"]: float(s["value"][1]) for s in doc["data"]["result"]}
                seen.clear()
                seen.update(found)
                done = found.keys() == {GOOD, SHUFFLED_VERSION}
                return found if done and all(abs(found[v] - quality[v]["auc"]) < 1e-6 for v in found) else {}

            try:
                scraped = poll("dkt_online_auc of both versions in Prometheus, as the client has it", query, 180)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; Prometheus last had {seen}, the client {quality}") from None
            phase(f"Prometheus query API: dkt_online_auc {scraped}")

            # (c) the worse shadow is not promoted.
            capsys.readouterr()
            assert models("promote-shadow", "--client-db", str(client_db))[0] == EXIT_SKIP
            err = capsys.readouterr().err
            assert "skip: not promoted" in err, err
            assert store.pointed("models", "production") == GOOD
            figures.append("      " + next(ln for ln in err.splitlines() if ln.startswith("promote-shadow:")))
            phase("promote-shadow refused the worse shadow (exit 99)")

            # Phase 2: the roles swapped, deployed blue/green under the running client.
            assert models("promote", SHUFFLED_VERSION)[0] == 0
            assert models("shadow", GOOD)[0] == 0
            verified = deploy_steps("phase-2")
            assert (verified["model_version"], verified["shadow_version"]) == (SHUFFLED_VERSION, GOOD)
            second = switched(run, "phase-2", SHUFFLED_VERSION, verified, store)
            servers.append(second["pid"])
            assert second["previous"]["model_version"] == GOOD and second["previous"]["port"] != second["port"]
            old_metrics = Path(second["previous"]["bentoml_home"], "prometheus_multiproc_dir")
            assert old_metrics != Path(second["bentoml_home"], "prometheus_multiproc_dir")
            assert first["metric_files"] <= {p.name for p in old_metrics.glob("*.db")}  # phase 2's start left them
            bento_yaml = Path("bentos", *packed.bento_tag.split(":"), "bento.yaml")
            assert (home / bento_yaml).read_text() == (packed.home / bento_yaml).read_text()  # phase 1 reused it
            assert not deploy_local.alive(first["pid"])  # the old server was stopped after the switch
            assert deploy_local.alive(second["pid"])
            phase(f"production {SHUFFLED_VERSION} + shadow {GOOD} deployed (4 steps, a Bento built)")
            # The same students go on (signed in again, same abilities): past the bank's easy first items, their
            # answers are less one-sided than new students' and the gate's interval is narrower.
            tally = run_students(base, questions, PHASE_STUDENTS, PHASE_ANSWERS, seed=1, prefix="p1", chance=chance)
            assert tally.failed == 0 and tally.answers == PHASE_STUDENTS * PHASE_ANSWERS, tally.errors
            phase(f"phase 2: {tally.answers} answers through the client")
            capsys.readouterr()
            rc, out = models("promote-shadow", "--client-db", str(client_db))
            err = capsys.readouterr().err
            assert rc == 0, err
            assert json.loads(out)["promoted"] == GOOD == store.pointed("models", "production")
            assert deploy.shadow_version(store) is None
            figures.append("      " + next(ln for ln in err.splitlines() if ln.startswith("promote-shadow:")))
            phase("promote-shadow promoted the better shadow (exit 0); the shadow pointer cleared")
    finally:
        prometheus.main(["down"])
        assert deploy.main(["stop"]) == 0
        print("\n[shadow-e2e] " + "\n[shadow-e2e] ".join(figures))
    assert not any(deploy_local.alive(pid) for pid in servers)  # `stop` ended the last one too
