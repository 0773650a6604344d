"""Shared by the Docker end-to-end tests: a single-node swarm, a throwaway registry, two model versions
and the environment of a throwaway stack.

The swarm, the registry and so every image are made once per session and shared by the test modules (an
image whose content tag the registry already holds is not rebuilt, the way a second deploy on a host
works); each module deploys a stack of its own. No Docker engine is a failure, never a skip: `make test`
promises the swarm suite ran. At the end the session removes every image, container, volume and network it
created and the registry's data, and fails when any is left (``DKT_TEST_KEEP_IMAGES=1`` keeps the images
it built, as a build cache for the next local run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipeline.swarm_images import REPO_ROOT
from tests.support.ports import free_port


def docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI (make test-setup installs docker.io as root)"
    info = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[:200]}"
    if shutil.which("docker-registry") is None and not os.environ.get("DKT_REGISTRY"):
        return "no docker-registry binary and no DKT_REGISTRY (apt-get install -y docker-registry)"
    return None


def docker_lines(*args: str) -> set[str]:
    return set(subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split())


def docker_objects() -> dict[str, set[str]]:
    """What the engine holds, by kind: the session compares its end with its start."""
    return {
        "image": docker_lines("images", "-a", "--no-trunc", "--format", "{{.ID}}"),
        "image ref": docker_lines("images", "--format", "{{.Repository}}:{{.Tag}}") - {"<none>:<none>"},
        "container": docker_lines("ps", "-aq", "--no-trunc"),
        "volume": docker_lines("volume", "ls", "-q"),
        "network": docker_lines("network", "ls", "-q", "--no-trunc"),
    }


def disk_usage() -> str:
    out = subprocess.run(["docker", "system", "df", "--format", "{{.Type}} {{.Size}}"], capture_output=True, text=True)
    return ", ".join(out.stdout.strip().splitlines())


@pytest.fixture(scope="session")
def swarm() -> Iterator[None]:
    reason = docker_missing()
    if reason:
        pytest.fail(f"the Docker suite needs an engine: {reason} (make test-setup starts one)", pytrace=False)
    before = docker_objects()
    print(f"\n[docker] before the suite: {disk_usage()}")
    state = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    created = state != "active"
    if created:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, check=True)
    yield
    if created:
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)
    after = docker_objects()
    new_refs = after["image ref"] - before["image ref"]
    if os.environ.get("DKT_TEST_KEEP_IMAGES") != "1":
        if new_refs:
            subprocess.run(["docker", "rmi", "-f", *sorted(new_refs)], capture_output=True)
        left_images = docker_lines("images", "-a", "--no-trunc", "--format", "{{.ID}}") - before["image"]
        if left_images:  # untagged layers of images the session rebuilt
            subprocess.run(["docker", "rmi", "-f", *sorted(left_images)], capture_output=True)
    # swarm leave leaves the docker_gwbridge network its init made
    new_nets = docker_lines("network", "ls", "-q", "--no-trunc") - before["network"]
    if new_nets:
        subprocess.run(["docker", "network", "rm", *sorted(new_nets)], capture_output=True)
    left = {k: sorted(v - before[k]) for k, v in docker_objects().items()}
    if os.environ.get("DKT_TEST_KEEP_IMAGES") == "1":
        print(f"\n[docker] DKT_TEST_KEEP_IMAGES=1: kept {len(left['image ref'])} images: {left['image ref']}")
        left["image"] = left["image ref"] = []
    print(f"\n[docker] after the suite: {disk_usage()}")
    assert not any(left.values()), f"the Docker suite left behind: { {k: v for k, v in left.items() if v} }"


@pytest.fixture(scope="session")
def registry(swarm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("DKT_REGISTRY"):
        yield os.environ["DKT_REGISTRY"]
        return
    addr = f"127.0.0.1:{free_port()}"
    root = tmp_path_factory.mktemp("registry")
    env = {**os.environ, "REGISTRY_HTTP_ADDR": addr, "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root)}
    log = (root / "registry.log").open("w")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(REPO_ROOT / "docker" / "registry.yml")], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://{addr}/v2/", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    yield addr
    proc.terminate()
    proc.wait(timeout=10)
    log.close()
    # pytest keeps the last runs' temporary folders: without this each run would leave GBs of layers there
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def bundles(lstm_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """v1 is the session's trained bundle; v2 the same weights under a new model version (a deploy does not
    care how a model was trained, only that its version differs and /metadata says so)."""
    v2 = tmp_path_factory.mktemp("bundle-v2") / "lstm"
    shutil.copytree(lstm_bundle, v2)
    meta = json.loads((v2 / "bundle.json").read_text())
    meta["model_version"] = "test-v2"
    (v2 / "bundle.json").write_text(json.dumps(meta))
    return lstm_bundle, v2


@pytest.fixture(scope="module")
def stack_env(registry: str, sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    stack = f"dkte2e{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DKT_REGISTRY": registry,
        "DKT_STACK": stack,
        "DKT_CLIENT_HOST_PORT": str(free_port()),
        "DKT_INFERENCE_HOST_PORT": str(free_port()),
        "DKT_PROMETHEUS_HOST_PORT": str(free_port()),  # not 9090: `make up`'s Prometheus may hold it
        "DKT_QUESTIONS": str(sim_dir / "questions.csv"),
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
        "DKT_SWARM_TIMEOUT": "600",
        # Every new inference replica at once (still start-first: the old ones serve until the new are healthy),
        # and a 2 s watch after it turned healthy instead of 10 s: each rollout waits one model load and one
        # window instead of one per replica (docs/testing.md, "Docker suite, round 1"). A replica that fails
        # still fails its update: the broken image never turns healthy, whatever the window.
        "DKT_INFERENCE_UPDATE_PARALLELISM": "0",
        "DKT_INFERENCE_UPDATE_MONITOR": "2s",
        "DKT_SECRET_KEY": uuid.uuid4().hex,
        # update_inference_server_dag in swarm mode, pulling from a local model store
        "DKT_DEPLOY_MODE": "swarm",
        "DKT_STORE": "local",
        "DKT_STORE_ROOT": str(tmp_path_factory.mktemp("store")),
        "DKT_WORK_ROOT": str(tmp_path_factory.mktemp("work")),
        # The answer store: a folder of its own, bind-mounted by the client service; the export reads the same file.
        "DKT_CLIENT_DB": str(tmp_path_factory.mktemp("client-answers") / "client.db"),
    }
    yield env
    # The stack goes with its module; its images stay for the next module until the session removes them.
    subprocess.run([sys.executable, "-m", "dkt", "swarm", "down"], env=env, cwd=REPO_ROOT, capture_output=True)


def swarm_cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "swarm", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    return proc, time.monotonic() - t0


def timeline(output: str) -> str:
    """The time-stamped progress lines of a deploy (`[swarm HH:MM:SS]`) or of the init script (`==> HH:MM:SS`):
    where a phase spent its time, printed with -s."""
    return "\n".join(ln for ln in output.splitlines() if ln.startswith(("[swarm ", "==> ")))
