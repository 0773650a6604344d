"""The Prometheus server of ``make up``: scrapes the inference service, the client and itself; loads the alerts.

    python -m pipeline.prometheus up       # render the config, start (or reload) Prometheus, print its address
    python -m pipeline.prometheus down     # stop it
    python -m pipeline.prometheus status
    python -m pipeline.prometheus config   # the rendered prometheus.yml on stdout

config/prometheus/prometheus.yml holds the scrape jobs with the default ports; ``render`` fills in the ports
and the scrape interval of the settings (dkt/settings.py: DKT_PROMETHEUS_*, DKT_SERVE_PORT, DKT_CLIENT_PORT)
and the absolute path of config/prometheus/alerts.yml. Binary: Debian's ``prometheus`` (``make prometheus``
installs it). State: config and TSDB under $DKT_VAR_DIR/prometheus, pid and log in $DKT_RUN_DIR like the
other parts of ``make up``. See docs/prometheus.md.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests
import yaml

from dkt.cli import run_actions
from dkt.settings import ClientSettings, PipelineSettings, PrometheusSettings, StackSettings, load_or_exit, stop
from pipeline.settings import REPO_ROOT
from pipeline.stack import running, say, start, stop_part, wait_http

CONFIG_DIR = REPO_ROOT / "config" / "prometheus"
TEMPLATE = CONFIG_DIR / "prometheus.yml"
RULES = CONFIG_DIR / "alerts.yml"
NAME = "prometheus"  # the pid and log name under $DKT_RUN_DIR, as stack.py names its parts
INSTALL_HINT = "`make prometheus` installs Debian's package (root + apt-get)"


def binary() -> str:
    """The ``prometheus`` executable on PATH; exit 2 with how to install it when there is none."""
    found = shutil.which("prometheus")
    if found is None:
        stop(f"prometheus: not found on PATH; {INSTALL_HINT}")
    return found


def targets() -> dict[str, list[str]]:
    """Scrape job -> host:port targets of the parts ``make up`` starts on this host."""
    serve = load_or_exit(PipelineSettings).serve_port
    return {
        "prometheus": [f"127.0.0.1:{load_or_exit(PrometheusSettings).port}"],
        # Blue/green: a deploy starts the new server on the other of the two ports (pipeline/deploy_local.py).
        "inference": [f"127.0.0.1:{serve}", f"127.0.0.1:{serve + 1}"],
        "client": [f"127.0.0.1:{load_or_exit(ClientSettings).client_port}"],
    }


def render(jobs: Mapping[str, Sequence[str]], scrape_interval: str, rules: Path = RULES) -> str:
    """config/prometheus/prometheus.yml with each job's targets replaced by ``jobs``'s, the scrape and rule
    evaluation interval set to ``scrape_interval`` and the rule file given by absolute path (the rendered
    file lives elsewhere). A job the template does not declare is an error: a typo would scrape nothing."""
    doc = yaml.safe_load(TEMPLATE.read_text())
    doc["global"]["scrape_interval"] = doc["global"]["evaluation_interval"] = scrape_interval
    doc["rule_files"] = [str(rules.resolve())]
    declared = {job["job_name"]: job for job in doc["scrape_configs"]}
    if unknown := sorted(set(jobs) - set(declared)):
        raise ValueError(f"{TEMPLATE}: no scrape job {', '.join(unknown)} (jobs: {', '.join(declared)})")
    for name, hosts in jobs.items():
        declared[name]["static_configs"] = [{"targets": list(hosts)}]
    return yaml.safe_dump(doc, sort_keys=False)


def state_dir() -> Path:
    return load_or_exit(StackSettings).var_dir / "prometheus"


def url() -> str:
    return f"http://127.0.0.1:{load_or_exit(PrometheusSettings).port}"


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def write_config() -> Path:
    settings = load_or_exit(PrometheusSettings)
    config = state_dir() / "prometheus.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(render(targets(), settings.scrape_interval))
    return config


def up() -> int:
    settings = load_or_exit(PrometheusSettings)
    exe = binary()
    config = write_config()
    if pid := running(NAME):
        # Already ours: pick up changed settings or rules without losing the data (--web.enable-lifecycle).
        say(f"{NAME} already running (pid {pid}); reloading {config}")
        requests.post(url() + "/-/reload", timeout=30).raise_for_status()
    else:
        if port_taken(settings.port):
            # Debian's package starts its own prometheus.service on 9090 where systemd runs.
            stop(f"DKT_PROMETHEUS_PORT={settings.port}: the port is in use by another process (Debian's"
                 " prometheus.service? `systemctl disable --now prometheus`, or choose another port)")  # fmt: skip
        start(NAME, [exe, f"--config.file={config}", f"--storage.tsdb.path={state_dir() / 'data'}",
                     f"--storage.tsdb.retention.time={settings.retention}",
                     f"--web.listen-address=127.0.0.1:{settings.port}", "--web.enable-lifecycle"])  # fmt: skip
    wait_http(url() + "/-/ready", 120, "Prometheus")
    print("Prometheus is up.")
    print(f"  metrics    {url()}          (Prometheus: /alerts, /targets; rules {RULES.relative_to(REPO_ROOT)})")
    return 0


def down() -> int:
    stop_part(NAME)
    return 0


def status() -> int:
    print(f"{NAME:24s} {f'pid {pid} {url()}' if (pid := running(NAME)) else 'stopped'}")
    return 0


def config() -> int:
    sys.stdout.write(render(targets(), load_or_exit(PrometheusSettings).scrape_interval))
    return 0


def main(argv: list[str] | None = None) -> int:
    commands = {
        "up": (up, "render the config, start Prometheus (or reload the running one), print its address"),
        "down": (down, "stop the Prometheus `up` started"),
        "status": (status, "whether it runs, and where"),
        "config": (config, "the prometheus.yml `up` would write, on stdout"),
    }
    return run_actions("python -m pipeline.prometheus", __doc__, commands, argv)


if __name__ == "__main__":
    sys.exit(main())
