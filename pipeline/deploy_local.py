"""Local deploy mode: a blue/green switch between two ``bentoml serve`` processes on this machine.

Start the new model on the other port, wait for ``/readyz``, check that ``/metadata`` reports the new
version, atomically rewrite the URL file the client reads (``DKT_INFERENCE_URL_FILE``, default
``$DKT_RUN_DIR/inference_url``), let in-flight requests drain, then stop the old server. A failure before
the switch leaves the old server serving; ``restore_previous`` switches back after one. What serves now is
recorded in ``$DKT_RUN_DIR/serving.json`` (pid, port, URL, model tag and version, and the previous server).
A shadow model, when deployed, is part of what a server serves: started with ``DKT_SHADOW_MODEL_TAG``, checked
in ``/metadata``, recorded and restored with it.

``DKT_DEPLOY_STRATEGY=swap`` (the default): a server is started with ``DKT_SERVED_MODEL_FILE`` =
``$DKT_RUN_DIR/served_model.json``, and while it runs a new model is not packed nor served by a new server:
``swap_local`` copies the bundle to ``$DKT_RUN_DIR/bundles/<version>``, rewrites that file atomically and waits
until ``/metadata`` reports the new version (serving/swap.py: each worker picks it up within a second); a bundle
the server refuses, or a wait that runs out, rewrites the file back to the previous bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def served_file() -> Path:
    """What a swap-capable server serves (serving/swap.py reads it; ``swap_local`` writes it)."""
    return run_dir() / "served_model.json"


def read_served() -> dict[str, Any] | None:
    """The served-model file's document as last written (a switch-back writes it again), None when there is none."""
    return json.loads(served_file().read_text()) if served_file().is_file() else None


def swapping() -> bool:
    """Local mode with DKT_DEPLOY_STRATEGY=swap and a live server started to follow ``served_file()``: a new model
    is swapped into it (no pack, no new server)."""
    settings = load(PipelineSettings)
    if settings.deploy_mode != "local" or settings.deploy_strategy != "swap":
        return False
    st = read_state()
    return alive(st.get("pid")) and st.get("served_model_file") == str(served_file()) and current_url() == st["url"]


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


def start_server(model_tag: str, port: int, shadow: Shadow | None = None, served: Path | None = None) -> dict[str, Any]:
    """``bentoml serve`` of ``model_tag``'s Bento on ``port``; ``served``: the served-model file it follows (it then
    serves what that file names, which the caller wrote first)."""
    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"bentoml-{port}.log"
    env = {**app_env(), "DKT_MODEL_TAG": model_tag, "DKT_SHADOW_MODEL_TAG": shadow.model_tag if shadow else ""}
    env["DKT_SERVED_MODEL_FILE"] = str(served) if served else ""
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
    doc |= {"served_model_file": str(served)} if served else {}
    return {**doc, "shadow_model_tag": shadow.model_tag, "shadow_version": shadow.version} if shadow else doc


KILL_WAIT_S = 10.0  # after SIGKILL: how long to wait for the process to be gone (the kernel takes milliseconds)


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
    wait_gone(pid, grace, poll=0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        # SIGKILL is delivered, not done, when killpg returns: wait until the process is gone, so that a caller
        # (`deploy stop`, a switch) never reports stopped a server that still runs (ci38 met one, right after a
        # server ignored SIGTERM for the whole grace).
        wait_gone(pid, KILL_WAIT_S, poll=0.05)


def wait_gone(pid: int, seconds: float, poll: float) -> None:
    """Wait up to ``seconds`` for ``pid`` to end, reaping it if it is our child (a zombie counts as gone anyway)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive(pid):
        time.sleep(poll)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def log_tail(log: str | Path) -> str:
    """The last non-empty line of a server's log (its reason to exit, such as a port in use), or ''."""
    try:
        with Path(log).open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def wait_ready(server: dict[str, Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(server["pid"]):
            said = log_tail(server["log"])
            raise DeployError(f"bentoml serve on port {server['port']} exited"
                              f"{f' ({said})' if said else ''}; see {server['log']}")  # fmt: skip
        try:
            if requests.get(server["url"] + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise DeployError(f"bentoml serve on port {server['port']} not ready after {timeout:.0f}s; see {server['log']}")


def wait_metadata(
    url: str, version: str, timeout: float, shadow: str | None = None, refused_after: float | None = None
) -> dict[str, Any]:
    """``url``'s /metadata once it reports ``version`` and, as its ``shadow``, the version ``shadow`` (no shadow
    when None: a server left with an old shadow is not the one deployed). ``refused_after``: a swap of ``version``
    that /metadata reports refused since that time (``swap.failed``) fails at once instead of at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            r = requests.get(url + "/metadata", timeout=5)
            last = r.json() if r.ok else f"HTTP {r.status_code}"
            failed = (last.get("swap") or {}).get("failed") if isinstance(last, dict) else None
            if refused_after is not None and failed and failed.get("at", 0) >= refused_after:
                raise DeployError(f"{url} refused the swap to {failed.get('model_version')}: {failed.get('error')}")
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
    model_tag: str,
    version: str,
    shadow: Shadow | None = None,
    laps: Laps | None = None,
    served: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Serve ``model_tag`` on the other port, switch the client to it, stop the old server. ``laps``: where the
    seconds went (the new server's start to /readyz, its /metadata, the drain). ``served`` (swap strategy): the
    served-model file's document (``served_doc``), written before the new server starts, which then follows it."""
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
    previous = read_served() if served else None
    if served:
        write_json(served_file(), served)
    new = start_server(model_tag, port, shadow, served_file() if served else None)
    new |= {"served": served} if served else {}
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
        if served and previous:
            write_json(served_file(), previous)
        elif served:  # nothing was served from a file before: a later start must not try this bundle first
            served_file().unlink(missing_ok=True)
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


def stage_bundle(bundle: Path, version: str) -> Path:
    """A copy of ``bundle`` under ``$DKT_RUN_DIR/bundles`` (the deploy's work folder may be cleaned while it serves);
    one already there is reused. Copied beside and renamed in: a server never reads half a bundle."""
    from packer import tag_version  # here: packer.py is the app venv's, this module is imported elsewhere too

    target = run_dir() / "bundles" / tag_version(version)
    if (target / "bundle.json").is_file() and json.loads((target / "bundle.json").read_text()).get(
        "model_version"
    ) == json.loads((bundle / "bundle.json").read_text()).get("model_version"):
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def prune_bundles(keep: set[str]) -> None:
    """Remove the staged bundles other than ``keep`` (the served and the previous one: a switch-back needs it)."""
    for folder in (run_dir() / "bundles").glob("*"):
        if str(folder) not in keep and not folder.name.startswith("."):
            shutil.rmtree(folder, ignore_errors=True)


def served_doc(bundle: Path, version: str, shadow: tuple[Path, str] | None) -> dict[str, Any]:
    """The served-model file's document (serving/swap.py reads it), the bundles staged first."""
    doc: dict[str, Any] = {"bundle": str(stage_bundle(bundle, version)), "model_version": version, "shadow": None}
    if shadow is not None:
        doc["shadow"] = {"bundle": str(stage_bundle(*shadow)), "model_version": shadow[1]}
    return doc


def swap_local(
    bundle: Path, version: str, shadow: tuple[Path, str] | None = None, laps: Laps | None = None
) -> dict[str, Any]:
    """Swap ``bundle`` into the running server (``swapping()``): stage it, rewrite the served-model file, wait until
    /metadata reports it; refused or not reported in time: the file back on the previous bundle, DeployError."""
    laps = laps or Laps()
    st = read_state()
    previous = read_served()
    with laps.lap("stage bundle"):
        doc = served_doc(bundle, version, shadow)
    since = time.time()
    write_json(served_file(), doc)
    print(f"deploy: swap: {served_file()} names {version} ({doc['bundle']}); waiting for {st['url']}", file=sys.stderr)
    try:
        with laps.lap("swap: file written to /metadata reports it"):
            wait_metadata(st["url"], version, load(PipelineSettings).verify_timeout,
                          shadow=shadow[1] if shadow else None, refused_after=since)  # fmt: skip
    except DeployError as exc:
        if previous is not None:
            write_json(served_file(), previous)  # the switch-back: the server keeps (or goes back to) the old one
        back = previous and previous["model_version"]
        raise DeployError(f"swap to {version} failed, {served_file()} back on {back}: {exc}") from None
    served = {"model_tag": f"bundle:{doc['bundle']}", "model_version": version, "served": doc, "swapped_at": since,
              "served_at": time.time()}  # fmt: skip
    served |= {"shadow_model_tag": f"bundle:{doc['shadow']['bundle']}", "shadow_version": shadow[1]} if shadow else {}
    new = {**_strip(st), **served, "previous": {**_strip(st), "served": previous}}
    for key in ("shadow_model_tag", "shadow_version"):
        if not shadow:
            new.pop(key, None)
    write_state(new)
    keep = {b for d in (doc, previous) if d for b in (d["bundle"], (d.get("shadow") or {}).get("bundle")) if b}
    prune_bundles(keep)
    print(f"deploy: swap: {st['url']} serves {version}", file=sys.stderr)
    return new


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "previous"}


def restore_previous() -> str:
    """Serve the previous model again (restarting it if it was already stopped) and switch back."""
    cur = read_state()
    prev = cur.get("previous") or {}
    if prev.get("served") and swapping():  # a swap: the file back on the previous bundle, in the same server
        back = prev["served"]
        shadow = (Path(back["shadow"]["bundle"]), str(back["shadow"]["model_version"])) if back.get("shadow") else None
        doc = swap_local(Path(back["bundle"]), str(back["model_version"]), shadow)
        return f"{back['model_version']} swapped back in at {doc['url']}"
    if not prev.get("model_tag"):
        raise DeployError("no previous server to restore")
    shadow = Shadow(prev["shadow_model_tag"], str(prev["shadow_version"])) if prev.get("shadow_model_tag") else None
    doc = switch_local(prev["model_tag"], str(prev.get("model_version")), shadow, served=prev.get("served"))
    return f"{prev['model_tag']} at {doc['url']}"


def stop_local() -> None:
    st = read_state()
    stop_server(st.get("pid"))
    if (prev := st.get("previous")) and prev.get("pid"):
        stop_server(prev.get("pid"))
