"""The steps of ``update_inference_server_dag``: pull the production model -> pack -> deploy -> verify.

Local mode (the default, no Docker) is a blue/green switch on one machine:
start a second ``bentoml serve`` on the other port, wait for ``/readyz``, check
that ``/metadata`` reports the new version, atomically rewrite the URL file the
client reads (``DKT_INFERENCE_URL_FILE``), wait for in-flight requests to drain,
then stop the old server. Any failure before the switch leaves the old server
serving; a failed check after it switches back. Swarm mode hands the packed
bento to ``pipeline.swarm`` (a rolling update).

The store names what is served: a pack, deploy or verify that fails puts the production
pointer back on the version that the live ``/metadata`` reports (only if the pointer still
names the failed version: a promotion made meanwhile is left alone), and a verified deploy
records ``state/serving.json`` (version, mode, ``/metadata`` URL) that ``python -m models list``
reads to mark the version serving now.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pipeline.blobs import StoreError, pid_alive
from pipeline.data_update import read_json, write_json
from pipeline.settings import REPO_ROOT, SettingsError, env_float, env_path
from pipeline.store import PointerMoved, VersionedStore, VersionError

SERVING_STATE = "serving"


class DeployError(RuntimeError):
    """The new model could not be served; the message says which step failed."""


def run_dir() -> Path:
    return env_path("DKT_RUN_DIR", REPO_ROOT / "run")


def bentoml_home() -> Path:
    return env_path("BENTOML_HOME", REPO_ROOT / "var" / "bentoml")


def url_file() -> Path:
    return env_path("DKT_INFERENCE_URL_FILE", run_dir() / "inference_url")


def state_file() -> Path:
    return run_dir() / "serving.json"


def deploy_mode() -> str:
    mode = os.environ.get("DKT_DEPLOY_MODE", "local")
    if mode not in ("local", "swarm"):
        raise SettingsError(f"environment variable DKT_DEPLOY_MODE: expected 'local' or 'swarm', got {mode!r}")
    return mode


def app_env() -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(bentoml_home())}


# -- steps ----------------------------------------------------------------------------------
def pull_model(work: Path, store: VersionedStore) -> dict[str, Any]:
    m = store.pull("models", "production", work / "model")
    doc = {"model_version": m["version"]}
    write_json(work / "pull.json", doc)  # which version this run deploys, for the steps after it
    return doc


def pack(work: Path) -> dict[str, Any]:
    """Import the bundle into the BentoML store and build a bento with packer.py."""
    argv = [sys.executable, str(REPO_ROOT / "packer.py"), "--model-dir", str(work / "model")]
    print("pack: " + " ".join(argv), file=sys.stderr)
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=app_env(), stdout=subprocess.PIPE, text=True, timeout=900)
    if proc.returncode != 0:
        raise DeployError(f"packer.py failed with exit {proc.returncode}")
    tags = parse_pack_output(proc.stdout)
    meta = json.loads((work / "model" / "bundle.json").read_text())
    doc = {**tags, "model_version": str(meta["model_version"])}
    write_json(work / "pack.json", doc)
    return doc


def parse_pack_output(stdout: str) -> dict[str, str]:
    """packer.py's contract: the last two lines are ``model: <tag>`` and ``bento: <tag>``."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    found = dict(
        re.match(r"^(model|bento):\s*(\S+)$", ln).groups() for ln in lines[-2:] if re.match(r"^(model|bento):", ln)
    )
    if set(found) != {"model", "bento"}:
        raise DeployError(f"packer.py output does not end with 'model: TAG' and 'bento: TAG' lines: {lines[-2:]!r}")
    return {"model_tag": found["model"], "bento_tag": found["bento"]}


def deploy(work: Path, replicas: int | None = None) -> dict[str, Any]:
    """Roll the packed model out. ``replicas`` (swarm only) also scales inference; None keeps the count."""
    packed = read_json(work / "pack.json")
    if replicas is not None and replicas < 1:
        raise DeployError(f"replicas must be at least 1, got {replicas}")
    if deploy_mode() == "swarm":
        # pipeline.swarm's documented CLI: builds the images from the model the pack step put in
        # BENTOML_HOME and rolls the stack over, one replica at a time (start-first); a failing new
        # image is rolled back by Swarm (exit 1).
        argv = [sys.executable, "-m", "pipeline.swarm", "deploy", "--model-tag", packed["model_tag"],
                "--expect-version", packed["model_version"]]  # fmt: skip
        if replicas is not None:
            argv += ["--replicas", str(replicas)]
        print("deploy: " + " ".join(argv), file=sys.stderr)
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=app_env(), stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise DeployError(f"swarm rollout failed (exit {proc.returncode}); the previous version keeps serving")
        lines = proc.stdout.strip().splitlines()
        doc = {"mode": "swarm", **packed, "result": json.loads(lines[-1]) if lines else {}}
    else:
        if replicas not in (None, 1):
            # One blue/green server is all local mode runs; say so rather than fail a model rollout over it.
            print(f"deploy: local mode runs one server; replicas={replicas} applies to swarm mode only",
                  file=sys.stderr)  # fmt: skip
        doc = {"mode": "local", **switch_local(packed["model_tag"], packed["model_version"])}
    write_json(work / "deploy.json", doc)
    return doc


def verify(work: Path) -> dict[str, Any]:
    """Check the live endpoint reports the new version; on failure switch back to the previous server."""
    packed = read_json(work / "pack.json")
    if deploy_mode() == "swarm":
        # pipeline.swarm checked /metadata through the client path (--expect-version) before returning 0.
        return {"mode": "swarm", "model_version": packed["model_version"], **read_json(work / "deploy.json")}
    url = current_url()
    try:
        meta = wait_metadata(url, packed["model_version"], timeout=env_float("DKT_VERIFY_TIMEOUT", 60))
    except DeployError:
        if deploy_mode() == "local":
            restored = restore_previous()
            raise DeployError(f"{url} does not serve {packed['model_version']}; restored {restored}") from None
        raise
    return {"url": url, "model_version": meta.get("model_version"), "model": meta.get("model")}


# -- local blue/green -----------------------------------------------------------------------
def base_port() -> int:
    return int(os.environ.get("DKT_SERVE_PORT", "3000"))


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
    return os.environ.get("DKT_INFERENCE_URL", f"http://127.0.0.1:{base_port()}")


def switch_url(url: str) -> None:
    f = url_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.tmp")
    tmp.write_text(url + "\n")
    tmp.replace(f)  # atomic: the client never reads half a URL


def alive(pid: int | None) -> bool:
    """Whether the server process ``pid`` still runs (a zombie we have not reaped counts as gone)."""
    return bool(pid) and pid_alive(int(pid or 0))


def start_server(model_tag: str, port: int) -> dict[str, Any]:
    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"bentoml-{port}.log"
    env = {**app_env(), "DKT_MODEL_TAG": model_tag}
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [str(bentoml), "serve", "service:DKTService", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        # Own session: the server outlives the Airflow task that started it and is stopped as a group.
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    return {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}", "model_tag": model_tag, "log": str(log)}


def stop_server(pid: int | None, grace: float = 30.0) -> None:
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


def wait_metadata(url: str, version: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            r = requests.get(url + "/metadata", timeout=5)
            last = r.json() if r.ok else f"HTTP {r.status_code}"
            if isinstance(last, dict) and str(last.get("model_version")) == version:
                return last
        except (requests.RequestException, ValueError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise DeployError(f"{url}/metadata does not report model_version {version}: {last}")
        time.sleep(1)


def switch_local(model_tag: str, version: str) -> dict[str, Any]:
    old = read_state()
    if old.get("model_tag") == model_tag and alive(old.get("pid")) and current_url() == old.get("url"):
        print(f"deploy: {model_tag} already serving at {old['url']}", file=sys.stderr)
        return old
    # Blue/green: alternate between the base port and the next one.
    port = base_port() + 1 if old.get("port") == base_port() else base_port()
    if old.get("port") == port and alive(old.get("pid")):
        port = base_port() if port != base_port() else base_port() + 1
    new = start_server(model_tag, port)
    print(f"deploy: started {model_tag} on {new['url']} (pid {new['pid']})", file=sys.stderr)
    try:
        wait_ready(new, env_float("DKT_READY_TIMEOUT", 180))
        wait_metadata(new["url"], version, timeout=30)
    except DeployError:
        stop_server(new["pid"])
        raise
    switch_url(new["url"])
    doc = {**new, "model_version": version, "started_at": time.time(), "previous": _strip(old)}
    write_state(doc)
    print(f"deploy: client switched to {new['url']}", file=sys.stderr)
    if old.get("pid") and old.get("pid") != new["pid"]:
        # Requests that read the old URL just before the switch finish before the old server goes.
        time.sleep(env_float("DKT_DRAIN_SECONDS", 5))
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
    doc = switch_local(prev["model_tag"], str(prev.get("model_version")))
    return f"{prev['model_tag']} at {doc['url']}"


def stop_local() -> None:
    st = read_state()
    stop_server(st.get("pid"))
    if (prev := st.get("previous")) and prev.get("pid"):
        stop_server(prev.get("pid"))


# -- the store follows what is served ---------------------------------------------------------
def metadata_url() -> str:
    """Where the live service of this deploy mode reports its model version."""
    if deploy_mode() == "swarm":
        from pipeline.swarm import swarm_settings

        try:
            return swarm_settings().metadata_url
        except ValueError as exc:  # the swarm settings name the variable; keep it one clean error line
            raise SettingsError(str(exc)) from None
    return current_url() + "/metadata"


def served_now(url: str, timeout: float = 5.0) -> str | None:
    """The model version ``url`` (a ``/metadata`` endpoint) reports, or None when nothing answers it."""
    try:
        r = requests.get(url, timeout=timeout)
        v = r.json().get("model_version") if r.ok else None
    except (requests.RequestException, ValueError, AttributeError):
        return None
    return str(v) if v is not None else None


def record_serving(store: VersionedStore, version: str, url: str) -> None:
    store.put_state(SERVING_STATE, {"model_version": version, "mode": deploy_mode(), "metadata_url": url})


def deploying(work: Path) -> str | None:
    """The version this run deploys (recorded by pull-model), None before it was pulled."""
    for name in ("pack.json", "pull.json"):
        if (work / name).is_file():
            return str(read_json(work / name)["model_version"])
    return None


def production_back_on_served(store: VersionedStore, failed: str, why: str) -> str:
    """After a failed pack/deploy/verify: point production at what is really served. Returns what happened."""
    url = metadata_url()
    served = served_now(url)
    if served is None:
        return f"nothing answers {url}; production still names {failed}"
    if served == failed:
        record_serving(store, served, url)
        return f"{url} serves {failed}; production stays on it"
    if not store.exists("models", served):
        return f"{url} serves {served}, which is not a stored version; production still names {failed}"
    try:
        store.set_pointer("models", "production", served, reason=f"deploy of {failed} failed: {why}", only_if=failed)
    except PointerMoved:
        return f"production was moved meanwhile (not by this run); left where it is, {url} serves {served}"
    record_serving(store, served, url)
    return f"production pointer back on {served}, what {url} serves"


def production_on_verified(store: VersionedStore, version: str, url: str) -> str:
    """After a verified deploy: record it; if an earlier failed try of it reset production, move production back."""
    record_serving(store, version, url)
    ptr = store.pointer("models", "production") or {}
    if ptr.get("version") == version:
        return version
    last = (ptr.get("log") or [{}])[-1]
    if last.get("from") == version and str(last.get("reason", "")).startswith(f"deploy of {version} failed"):
        with contextlib.suppress(PointerMoved):
            store.set_pointer("models", "production", version, reason=f"deploy of {version} verified on retry",
                              only_if=ptr.get("version"))  # fmt: skip
            return version
    return str(ptr.get("version"))


FLOW = "update_inference_server"
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.deploy pull-model|pack|deploy|verify --run-id ID`` (the deploy DAG steps), or ``stop``."""
    import argparse

    from pipeline.workdir import work_dir

    p = argparse.ArgumentParser(prog="python -m pipeline.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("step", choices=["pull-model", "pack", "deploy", "verify", "stop"])
    p.add_argument("--run-id", help="the DAG run id; names the work folder (all steps but stop)")
    p.add_argument("--replicas", type=int, help="deploy only, swarm mode: inference replicas (default: keep)")
    args = p.parse_args(argv)
    if args.step == "stop":
        stop_local()
        return 0
    if not args.run_id:
        p.error("--run-id is required")
    work = work_dir(FLOW, args.run_id)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.step == "pull-model":
            doc = pull_model(work, VersionedStore.from_env())
        elif args.step == "pack":
            doc = pack(work)
        elif args.step == "deploy":
            doc = deploy(work, args.replicas)
        else:
            doc = verify(work)
            doc["production"] = production_on_verified(VersionedStore.from_env(), doc["model_version"], metadata_url())
    except (DeployError, StoreError, VersionError, SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = deploying(work)
        if isinstance(exc, DeployError) and failed:
            try:
                print(f"deploy: {production_back_on_served(VersionedStore.from_env(), failed, str(exc))}",
                      file=sys.stderr)  # fmt: skip
            except (StoreError, ValueError, OSError) as exc2:
                print(f"error: could not put production back on what is served: {exc2}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(doc, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
