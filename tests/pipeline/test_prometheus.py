"""The Prometheus of `make up`: its config and alert rules checked and unit-tested by promtool, and a real server
started the way `make up` starts it, scraping a real Prometheus text endpoint and answering its query API."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipeline import prometheus
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "prometheus"


def tool(name: str) -> str:
    """Debian's binary, or a failure that says how to get it: a missing tool must never pass as a skip."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found on PATH: `make prometheus` (part of `make test-setup`) installs Debian's"
                    " prometheus package, which brings prometheus and promtool")  # fmt: skip
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=CONFIG, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        proc = promtool(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # What `make up` writes (default settings) is valid too, and loads the repository's rules by absolute path.
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(prometheus.render(prometheus.targets(), "15s"))
    proc = promtool("check", "config", str(rendered))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{CONFIG / 'alerts.yml'}" in proc.stdout and "SUCCESS: 5 rules found" in proc.stdout


def test_the_template_holds_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """config/prometheus/prometheus.yml is also read as documentation: its ports are the settings' defaults."""
    for name in ("DKT_PROMETHEUS_PORT", "DKT_SERVE_PORT", "DKT_CLIENT_PORT"):
        monkeypatch.delenv(name, raising=False)
    template = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    rendered = yaml.safe_load(prometheus.render(prometheus.targets(), "15s"))
    for doc in (template, rendered):
        doc["jobs"] = {job["job_name"]: job["static_configs"][0]["targets"] for job in doc["scrape_configs"]}
    assert rendered["jobs"] == template["jobs"]
    assert rendered["rule_files"] == [str(CONFIG / "alerts.yml")]


def test_render_refuses_a_job_the_template_lacks() -> None:
    with pytest.raises(ValueError, match="no scrape job clinet"):
        prometheus.render({"clinet": ["127.0.0.1:8000"]}, "15s")


def test_every_alert_fires_and_stays_silent_in_the_unit_tests() -> None:
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A rule added without tests would pass the run above: each alert needs a firing case and a silent one.
    alerts = {r["alert"] for g in yaml.safe_load((CONFIG / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert len(alerts) == 5
    cases = [c for t in yaml.safe_load((CONFIG / "alerts_test.yml").read_text())["tests"] for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts


@pytest.fixture
def exporter() -> Iterator[tuple[int, CollectorRegistry]]:
    """A real HTTP endpoint serving Prometheus text (prometheus_client), with the client's metric names."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, registry
    server.shutdown()
    thread.join(timeout=10)


def poll(what: str, fetch: Callable[[], Any], deadline_s: float = 120) -> Any:
    """``fetch()`` until it returns something truthy; connection errors and timeouts count as not yet."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if last := fetch():
                return last
        except (requests.RequestException, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s; last: {last!r}")


@pytest.mark.slow
def test_make_up_prometheus_scrapes_and_evaluates_the_rules(
    exporter: tuple[int, CollectorRegistry],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tool("prometheus")
    client_port, registry = exporter
    Gauge("dkt_online_auc", "online AUC", ["model_version"], registry=registry).labels("v1").set(0.71)
    Gauge("dkt_model_test_auc", "offline test AUC", ["model_version"], registry=registry).labels("v1").set(0.80)
    Gauge("dkt_online_ece", "online ECE", ["model_version"], registry=registry).labels("v1").set(0.2)
    serving = Gauge("dkt_model_serving", "served version", ["model_version", "role"], registry=registry)
    serving.labels("v1", "production").set(1)  # the AUC alert is about production only
    Counter("dkt_scored_answers", "scored answers", ["model_version"], registry=registry).labels("v1").inc(40)

    port = free_port()
    settings = {
        "DKT_PROMETHEUS_PORT": str(port),
        "DKT_PROMETHEUS_SCRAPE_INTERVAL": "1s",  # the test waits for a few scrapes and rule evaluations
        "DKT_CLIENT_PORT": str(client_port),
        "DKT_SERVE_PORT": str(free_port()),  # no service: its targets are down, which the server reports
        "DKT_VAR_DIR": str(tmp_path / "var"),
        "DKT_RUN_DIR": str(tmp_path / "run"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)

    # As `make up` runs it; the rest in-process, on the same settings.
    up = subprocess.run([sys.executable, "-m", "pipeline.prometheus", "up"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        url = f"http://127.0.0.1:{port}"
        assert f"metrics    {url}" in up.stdout  # `make up` prints the address like the other parts

        def query(expr: str) -> list[dict[str, Any]]:
            doc = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()
            assert doc["status"] == "success", doc
            return doc["data"]["result"]

        series = poll("dkt_online_auc scraped", lambda: query("dkt_online_auc"))
        assert [(s["metric"]["model_version"], s["metric"]["job"], float(s["value"][1])) for s in series] == [
            ("v1", "client", 0.71)
        ]
        assert float(query("dkt_scored_answers_total")[0]["value"][1]) == 40
        # Blue and green, each scraped on its own schedule: wait for both.
        poll("both idle inference targets reported down", lambda: len(query('up{job="inference"} == 0')) == 2)

        def rules() -> dict[str, dict[str, Any]]:
            doc = requests.get(f"{url}/api/v1/rules", timeout=30).json()
            return {r["name"]: {**r, "group": g["name"]} for g in doc["data"]["groups"] for r in g["rules"]}

        loaded = rules()
        assert {name: r["group"] for name, r in loaded.items()} == {
            "DktOnlineAucBelowOffline": "dkt-model-quality",
            "DktOnlineCalibrationPoor": "dkt-model-quality",
            "DktNoAnswersInTerm": "dkt-model-quality",
            "DktInferenceLatencyP99High": "dkt-service",
            "DktInference5xxRatioHigh": "dkt-service",
        }
        # The loaded rules evaluate the scraped series: ECE 0.2 and an AUC gap of 0.09 are pending (their `for`
        # has not elapsed), for model v1; the service's alerts see no traffic and stay inactive.
        for name in ("DktOnlineCalibrationPoor", "DktOnlineAucBelowOffline"):
            alerts = poll(f"{name} pending", lambda n=name: rules()[n]["alerts"])
            assert [(a["state"], a["labels"]["model_version"]) for a in alerts] == [("pending", "v1")], alerts
        assert rules()["DktInference5xxRatioHigh"]["state"] == "inactive"

        assert prometheus.main(["up"]) == 0  # running already: reloads the config instead of starting another
        assert "reloading" in capsys.readouterr().err
    finally:
        prometheus.main(["down"])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "prometheus still listening after `down`"


def test_up_refuses_a_port_another_process_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool("prometheus")
    monkeypatch.setenv("DKT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DKT_RUN_DIR", str(tmp_path / "run"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("DKT_PROMETHEUS_PORT", str(port))
        with pytest.raises(SystemExit) as stopped:
            prometheus.main(["up"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: DKT_PROMETHEUS_PORT={port}: the port is in use by another process (Debian's prometheus.service?"
        " `systemctl disable --now prometheus`, or choose another port)"
    ]
    assert not (tmp_path / "run" / "pids" / "prometheus.pid").exists()


def test_the_client_metrics_pass_promtool_and_hold_every_dkt_series_the_rules_read(
    tmp_path: Path, sim_dir: Path
) -> None:
    """The alert rules and the client's /metrics agree on names: a renamed metric would leave an alert that can
    never fire. The exposition itself passes `promtool check metrics` (Prometheus's own linter)."""
    from client import db
    from tests.client.conftest import make_app
    from tests.client.test_metrics import fill

    fill(tmp_path / "client.db", ["v1"] * 20, seed=1)
    meta = {"model_name": "lstm", "model_version": "v1", "metrics": {"test_auc": 0.75}}
    db.remember_model_version(db.connect(tmp_path / "client.db"), meta)  # as the page does on a version's first use
    app = make_app(tmp_path, sim_dir, f"http://127.0.0.1:{free_port()}")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    used = set(re.findall(r"\bdkt_[a-z_]+", (CONFIG / "alerts.yml").read_text()))
    assert used and used <= exposed, f"alerts.yml reads {sorted(used - exposed)}, which the client does not expose"
