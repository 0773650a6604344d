"""Local deploy mode: a blue/green switch between two ``bentoml serve`` processes on this machine.

Start the new model on the other port, wait for ``/readyz``, check that ``/metadata`` reports the new
version, atomically rewrite the URL file the client reads (``DKT_INFERENCE_URL_FILE``, default
``$DKT_RUN_DIR/inference_url``), let in-flight requests drain, then stop the old server. A failure before
the switch leaves the old server serving; ``restore_previous`` switches back after one. What serves now is
recorded in ``$DKT_RUN_DIR/serving.json`` (pid, port, URL, model tag and version, and the previous server).
A shadow model, when deployed, is part of what a server serves: started with ``DKT_SHADOW_MODEL_TAG``, checked
in ``/metadata``, recorded and restored with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import requests

from dkt.bundle import write_json
from dkt.settings import REPO_ROOT, ClientSettings, PipelineSettings, load
from pipeline.blobs import pid_alive, pid_cmdline, runs_command
from pipeline.timings import Laps

SERVER_WORDS = ("bentoml", "serve")  # in start_server's command line: stop_server checks it


class DeployError(RuntimeError):
    """The new model could not be served; the message says which step failed."""


class Shadow(NamedTuple):
    """The shadow model a server scores beside production (serving/shadow.py)."""

    model_tag: str
    version: str


def run_dir() -> Path:
    return load(PipelineSettings).run_dir


def url_file() -> Path:
    return Path(load(ClientSettings).inference_url_file or run_dir() / "inference_url")


def state_file() -> Path:
    return run_dir() / "serving.json"


def app_env() -> dict[str, str]:
    """The environment of the app processes deploy starts (packer.py, bentoml serve, pipeline.swarm)."""
    return {**os.environ, "BENTOML_HOME": str(load(PipelineSettings).bentoml_home)}


def base_port() -> int:
    return load(PipelineSettings).serve_port


def read_state() -> dict[str, Any]:
    p = state_file()
    return json.loads(p.read_text()) if p.is_file() else {}


def write_state(doc: dict[str, Any]) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    write_json(state_file(), doc)


def current_url() -> str:
    f = url_file()
    if f.is_file() and f.read_text().strip():
        return f.read_text().strip()
    return load(ClientSettings).inference_url or f"http://127.0.0.1:{base_port()}"


def switch_url(url: str) -> None:
    f = url_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.tmp")
    tmp.write_text(url + "\n")
    tmp.replace(f)  # atomic: the client never reads half a URL


def alive(pid: int | None) -> bool:
    """Whether the server process ``pid`` still runs (a zombie we have not reaped counts as gone)."""
    return bool(pid) and pid_alive(int(pid or 0))


STORE_PARTS = ("models", "bentos")  # what a server reads from the shared BentoML store


def server_home(port: int) -> Path:
    """The BENTOML_HOME of the server on ``port``: its own folder under the run dir, the store's models and Bentos
    linked in. ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts and BentoML has no
    setting for that folder (it sets PROMETHEUS_MULTIPROC_DIR for its workers itself), so on a shared home the new
    server of a switch wiped the metric files of the old one while it drained. One folder per port: blue and green
    never share it, and a restart on the same port only empties its own predecessor's files."""
    store = load(PipelineSettings).bentoml_home
    home = run_dir() / "bentoml-home" / str(port)
    home.mkdir(parents=True, exist_ok=True)
    for part in STORE_PARTS:
        target, link = (store / part).resolve(), home / part
        target.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink():
            link.unlink()  # the store moved (BENTOML_HOME changed since the last deploy on this port)
        elif link.exists():
            raise DeployError(f"{link} is not a link to {target}: remove it (the server's home only links the store)")
        link.symlink_to(target, target_is_directory=True)
    return home


def start_server(model_tag: str, port: int, shadow: Shadow | None = None) -> dict[str, Any]:
    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"bentoml-{port}.log"
    env = {**app_env(), "DKT_MODEL_TAG": model_tag, "DKT_SHADOW_MODEL_TAG": shadow.model_tag if shadow else ""}
    env["BENTOML_HOME"] = str(server_home(port))  # its own metrics folder (server_home)
    bentoml = Path(sys.executable).with_name("bentoml")
    from packer import bento_tag_for  # here: packer.py is the app venv's, this module is imported elsewhere too

    # The Bento packer.py built around the model (issue 15: the Bento is what ships), not the checkout's code.
    bento = bento_tag_for(model_tag)
    if not (load(PipelineSettings).bentoml_home / "bentos" / bento.replace(":", "/") / "bento.yaml").is_file():
        raise DeployError(f"no Bento {bento} in {load(PipelineSettings).bentoml_home}: pack {model_tag} with packer.py")
    argv = [str(bentoml), "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        # Own session: the server outlives the Airflow task that started it and is stopped as a group.
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    doc = {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}", "model_tag": model_tag, "log": str(log),
           "bentoml_home": env["BENTOML_HOME"]}  # fmt: skip
    return {**doc, "shadow_model_tag": shadow.model_tag, "shadow_version": shadow.version} if shadow else doc


def stop_server(pid: int | None, grace: float = 30.0) -> None:
    """Stop the process group of a server this module started; a recorded pid that now names another process
    (pids are reused after a reboot or a crash) is left alone with a warning."""
    if not alive(pid):
        return
    assert pid is not None
    if not runs_command(pid, SERVER_WORDS):
        print(f"warning: pid {pid} runs `{pid_cmdline(pid)[:200]}`, not bentoml serve: left alone", file=sys.stderr)
        return
    stop_group(pid, grace)


def stop_group(pid: int | None, grace: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL after ``grace`` seconds. The caller has checked that
    ``pid`` is the process it started (stop_server, pipeline.stack.stop_part)."""
    if not alive(pid):
        return
    assert pid is not None
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def wait_ready(server: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(server["pid"]):
            raise DeployError(f"bentoml serve on port {server['port']} exited; see {server['log']}")
        try:
            if requests.get(server["url"] + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise DeployError(f"bentoml serve on port {server['port']} not ready after {timeout:.0f}s; see {server['log']}")


def wait_metadata(url: str, version: str, timeout: float, shadow: str | None = None) -> dict[str, Any]:
    """``url``'s /metadata once it reports ``version`` and, as its ``shadow``, the version ``shadow`` (no shadow
    when None: a server left with an old shadow is not the one deployed)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            r = requests.get(url + "/metadata", timeout=5)
            last = r.json() if r.ok else f"HTTP {r.status_code}"
            if isinstance(last, dict) and str(last.get("model_version")) == version:
                served_shadow = (last.get("shadow") or {}).get("model_version")
                if (str(served_shadow) if served_shadow is not None else None) == shadow:
                    return last
                last = f"model_version {version} with shadow {served_shadow}"
        except (requests.RequestException, ValueError, AttributeError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            want = f"model_version {version}" + (f" with shadow {shadow}" if shadow else " without a shadow")
            raise DeployError(f"{url}/metadata does not report {want}: {last}")
        time.sleep(1)


def switch_local(
    model_tag: str, version: str, shadow: Shadow | None = None, laps: Laps | None = None
) -> dict[str, Any]:
    """Serve ``model_tag`` on the other port, switch the client to it, stop the old server. ``laps``: where the
    seconds went (the new server's start to /readyz, its /metadata, the drain)."""
    laps = laps or Laps()
    old = read_state()
    same = old.get("model_tag") == model_tag and old.get("shadow_model_tag") == (shadow.model_tag if shadow else None)
    if same and alive(old.get("pid")) and current_url() == old.get("url"):
        print(f"deploy: {model_tag} already serving at {old['url']}", file=sys.stderr)
        return old
    # Blue/green: alternate between the base port and the next one.
    port = base_port() + 1 if old.get("port") == base_port() else base_port()
    if old.get("port") == port and alive(old.get("pid")):
        port = base_port() if port != base_port() else base_port() + 1
    new = start_server(model_tag, port, shadow)
    with_shadow = f" with shadow {shadow.model_tag}" if shadow else ""
    print(f"deploy: started {model_tag}{with_shadow} on {new['url']} (pid {new['pid']})", file=sys.stderr)
    timing = load(PipelineSettings)
    try:
        with laps.lap("new server start to /readyz"):
            wait_ready(new, timing.ready_timeout)
        with laps.lap("new server /metadata"):
            wait_metadata(new["url"], version, timeout=30, shadow=shadow.version if shadow else None)
    except DeployError:
        stop_server(new["pid"])
        raise
    switch_url(new["url"])
    doc = {**new, "model_version": version, "started_at": time.time(), "previous": _strip(old)}
    write_state(doc)
    print(f"deploy: client switched to {new['url']}", file=sys.stderr)
    if old.get("pid") and old.get("pid") != new["pid"]:
        # Requests that read the old URL just before the switch finish before the old server goes.
        with laps.lap("drain (DKT_DRAIN_SECONDS)"):
            time.sleep(timing.drain_seconds)
        with laps.lap("stop old server"):
            stop_server(old["pid"])
        print(f"deploy: stopped the previous server (pid {old['pid']})", file=sys.stderr)
    return doc


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "previous"}


def restore_previous() -> str:
    """Serve the previous model again (restarting it if it was already stopped) and switch back."""
    cur = read_state()
    prev = cur.get("previous") or {}
    if not prev.get("model_tag"):
        raise DeployError("no previous server to restore")
    shadow = Shadow(prev["shadow_model_tag"], str(prev["shadow_version"])) if prev.get("shadow_model_tag") else None
    doc = switch_local(prev["model_tag"], str(prev.get("model_version")), shadow)
    return f"{prev['model_tag']} at {doc['url']}"


def stop_local() -> None:
    st = read_state()
    stop_server(st.get("pid"))
    if (prev := st.get("previous")) and prev.get("pid"):
        stop_server(prev.get("pid"))
