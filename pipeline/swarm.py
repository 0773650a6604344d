"""Build, push and roll out the DKT stack on Docker Swarm; scale it; report its state.

CLI (``python -m pipeline.swarm COMMAND --help``). Progress goes to stderr, one JSON object to stdout;
exit 1 with ``error: ...`` when something fails (a rolled-back update included), 2 on bad arguments.

  build   --model-dir DIR | --model-tag TAG   build and push the images (runtime, inference, client, proxy)
  deploy  --model-dir DIR | --model-tag TAG | --image REF  [--replicas N] [--expect-version V]
          builds and pushes, then `docker stack deploy` (first time: creates the stack; later: a rolling
          update of inference, start-first, one task at a time). Waits until every replica runs the new
          image, then checks /metadata through the proxy. A new image whose readiness check fails
          is rolled back by Swarm and the command exits 1 saying so.
  scale   --replicas N                         scale inference; the stack keeps serving while it scales
  status                                       services, replicas, update state, model version served
  down                                         `docker stack rm`

Importable: ``deploy``, ``build``, ``scale_inference``, ``status``, ``down`` (all take ``SwarmSettings``).

Environment (defaults in brackets):
  DKT_REGISTRY [127.0.0.1:5000]            registry the images are pushed to and swarm pulls from
  DKT_STACK [config's "stack": dkt]         stack name
  DKT_STACK_CONFIG [config/swarm.json]      image specs and service names
  DKT_COMPOSE_FILE [docker-compose.yml]     the stack file
  DKT_BASE_IMAGE [local/python:3.11-bookworm]  base of every image (python:3.11-slim where a registry is reachable)
  DKT_CLIENT_URL [http://127.0.0.1:8080]   the client as the host reaches it (through the proxy)
  DKT_METADATA_URL [http://127.0.0.1:3000/metadata]  inference /metadata through the proxy (the client has
                                            no JSON endpoint; the proxy balances over the same dnsrr tasks)
  DKT_CLIENT_HOST_PORT, DKT_INFERENCE_HOST_PORT [8080, 3000]  host ports the proxy publishes (compose file)
  DKT_QUESTIONS [data/sim/questions.csv]    the question bank baked into the client image
  DKT_SWARM_TIMEOUT [300]                   seconds to wait for a rollout or a scale
  DKT_WHEELS_DIR [first PIP_FIND_LINKS dir, else /opt/wheels]  where the CPU torch wheel is
  DKT_BUILD_CA [/etc/ssl/certs/ca-certificates.crt]  CA bundle pip trusts inside builds
  DKT_SECRET_KEY [generated once into var/swarm/client_secret_key]  the client's Flask secret
  DKT_CLIENT_DB [var/client.db]             the answer store: the client service bind-mounts this file's folder
                                            and writes this file; update_data_dag exports from the same path.
                                            The folder must exist, hold nothing but the database, and be writable
                                            by its owner, whose uid:gid the client container runs as
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from dkt.cli import Parser
from pipeline.swarm_images import (
    REPO_ROOT,
    DockerError,
    StackConfig,
    build_hashed_image,
    build_inference_image,
    image_exists,
    load_stack_config,
    run,
)
from pipeline.swarm_service import (
    RolloutFailed,
    ServiceState,
    scale,
    service_exists,
    service_state,
    strip_digest,
    wait_for_rollout,
)

DEFAULT_REPLICAS = 3
METADATA_SAMPLES = 12  # dnsrr spreads requests at random: this many agreeing replies make a stale replica unlikely


class SwarmSettings(BaseModel):
    registry: str = "127.0.0.1:5000"
    stack: str | None = None
    stack_config: Path = REPO_ROOT / "config" / "swarm.json"
    compose_file: Path = REPO_ROOT / "docker-compose.yml"
    base_image: str = "local/python:3.11-bookworm"
    client_url: str = "http://127.0.0.1:8080"
    metadata_url: str = "http://127.0.0.1:3000/metadata"
    questions: Path = REPO_ROOT / "data" / "sim" / "questions.csv"
    timeout: float = 300.0
    wheels_dir: Path = Path("/opt/wheels")
    build_ca: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    secret_key: str | None = None
    secret_key_file: Path = REPO_ROOT / "var" / "swarm" / "client_secret_key"
    # The same default as the client's (``var/client.db``, relative to the repository root where the export runs).
    client_db: Path = REPO_ROOT / "var" / "client.db"


SWARM_ENV = {
    "DKT_REGISTRY": "registry",
    "DKT_STACK": "stack",
    "DKT_STACK_CONFIG": "stack_config",
    "DKT_COMPOSE_FILE": "compose_file",
    "DKT_BASE_IMAGE": "base_image",
    "DKT_CLIENT_URL": "client_url",
    "DKT_METADATA_URL": "metadata_url",
    "DKT_QUESTIONS": "questions",
    "DKT_SWARM_TIMEOUT": "timeout",
    "DKT_WHEELS_DIR": "wheels_dir",
    "DKT_BUILD_CA": "build_ca",
    "DKT_SECRET_KEY": "secret_key",
    "DKT_CLIENT_DB": "client_db",
}


def swarm_settings(env: dict[str, str] | None = None) -> SwarmSettings:
    """Settings from the environment; ValueError naming the variable on a bad value."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {field: env[name] for name, field in SWARM_ENV.items() if env.get(name)}
    if "wheels_dir" not in raw and env.get("PIP_FIND_LINKS"):
        first = env["PIP_FIND_LINKS"].split()[0]
        if not first.startswith(("http://", "https://")):
            raw["wheels_dir"] = first.removeprefix("file://")
    # The compose file publishes on these host ports: follow them unless the URLs are given outright.
    if "client_url" not in raw and env.get("DKT_CLIENT_HOST_PORT"):
        raw["client_url"] = f"http://127.0.0.1:{env['DKT_CLIENT_HOST_PORT']}"
    if "metadata_url" not in raw and env.get("DKT_INFERENCE_HOST_PORT"):
        raw["metadata_url"] = f"http://127.0.0.1:{env['DKT_INFERENCE_HOST_PORT']}/metadata"
    try:
        s = SwarmSettings(**raw)
    except ValidationError as exc:
        first_err = exc.errors()[0]
        name = next((n for n, f in SWARM_ENV.items() if f == first_err["loc"][0]), str(first_err["loc"][0]))
        raise ValueError(f"environment variable {name}: {first_err['msg']}") from None
    if s.timeout <= 0:
        raise ValueError(f"environment variable DKT_SWARM_TIMEOUT: must be > 0, got {s.timeout}")
    # The exporter (update_data_dag) runs from the repository root: a relative path means the same file to both.
    if not s.client_db.is_absolute():
        s.client_db = REPO_ROOT / s.client_db
    return s


# What may sit beside the database in its folder: SQLite's own files (WAL, shared memory, rollback journal)
# and a file system's lost+found. Anything else would be exposed to the client container by the bind mount.
_DB_SIDE_FILES = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True)
class ClientStore:
    """The host folder the client service bind-mounts, and the container user that can write in it."""

    db: Path
    uid: int
    gid: int

    @property
    def folder(self) -> Path:
        return self.db.parent

    def compose_env(self) -> dict[str, str]:
        return {
            "DKT_CLIENT_DATA_DIR": str(self.folder),
            "DKT_CLIENT_DB_NAME": self.db.name,
            "DKT_CLIENT_USER": f"{self.uid}:{self.gid}",
        }


def _writable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def check_client_store(db: Path) -> ClientStore:
    """Refuse (ValueError naming the path and the fix) an answer store the client container could not use.

    The client container runs as the uid:gid owning the folder, so the answers it writes belong to the
    same account as the files the exporter on this host opens (a WAL reader writes the -shm file too).
    """
    var = "DKT_CLIENT_DB"
    folder = db.parent
    if not folder.exists():
        raise ValueError(
            f"{var}={db}: folder {folder} does not exist; create it (mkdir -p {folder}) as the account that runs "
            "update_data_dag: the swarm client stores answers there and the data update exports them from there"
        )
    if not folder.is_dir():
        raise ValueError(f"{var}={db}: {folder} is not a folder")
    if db.exists() and not db.is_file():
        raise ValueError(f"{var}={db}: exists and is not a file")
    others = sorted(
        p.name
        for p in folder.iterdir()
        if p.name != "lost+found" and p.name not in {db.name + s for s in _DB_SIDE_FILES}
    )
    if others:
        raise ValueError(
            f"{var}={db}: folder {folder} holds more than the client database ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); the client container mounts the whole folder, so give the "
            "database a folder of its own (e.g. DKT_CLIENT_DB=var/client/client.db) and set the same DKT_CLIENT_DB "
            "for update_data_dag"
        )
    st = folder.stat()
    uid, gid = st.st_uid, st.st_gid
    if not (st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"{var}={db}: folder {folder} is not writable (mode {stat.filemode(st.st_mode)}, owner {uid}:{gid}); "
            f"the client container runs as its owner and creates the database and its WAL files there: "
            f"chmod u+rwx {folder}"
        )
    if os.geteuid() != uid:
        # The exporter (update_data_dag) runs as this account too; a WAL file or shared-memory index it creates
        # would belong to it and lock out the container (or the other way round).
        raise ValueError(
            f"{var}={db}: folder {folder} belongs to uid {uid}, but this deploy (and the data update's exporter, "
            f"which runs as the same account) runs as uid {os.geteuid()}; SQLite's WAL files must be writable by both "
            f"the client container and the exporter: chown {os.geteuid()}:{os.getegid()} {folder}"
        )
    for suffix in _DB_SIDE_FILES:
        f = folder / (db.name + suffix)
        if f.exists() and (not _writable_by(f.stat(), uid, gid) or not os.access(f, os.R_OK | os.W_OK)):
            fst = f.stat()
            raise ValueError(
                f"{var}={db}: {f} is not writable by the folder's owner {uid}:{gid}, whom the client container runs "
                f"as (file owner {fst.st_uid}:{fst.st_gid}, mode {stat.filemode(fst.st_mode)}): chown {uid}:{gid} {f}"
            )
    return ClientStore(db=db, uid=uid, gid=gid)


def node_id() -> str:
    """This host's swarm node id: the client task is placed here, where the answer folder (and the exporter) is."""
    out = run(["docker", "info", "--format", "{{.Swarm.NodeID}}"]).strip()
    if not out:
        raise DockerError(
            "this host is not a swarm node (`docker info` shows no Swarm.NodeID): run `docker swarm init`"
        )
    return out


class Stack:
    """Names derived from settings + config/swarm.json."""

    def __init__(self, settings: SwarmSettings):
        self.settings = settings
        self.config: StackConfig = load_stack_config(settings.stack_config)
        self.name = settings.stack or self.config.stack

    def service(self, key: str) -> str:
        return f"{self.name}_{self.config.services[key]}"


def _say(msg: str) -> None:
    print(f"[swarm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def resolve_model(model_dir: Path | None, model_tag: str | None) -> tuple[str, str]:
    """(bentoml model tag, model version). A bundle dir is packed first with packer.py."""
    if model_tag:
        if ":" not in model_tag:
            raise ValueError(f"--model-tag {model_tag!r}: expected NAME:VERSION, e.g. dkt-model:v2")
        bundle_version = None
    else:
        assert model_dir is not None
        meta_file = model_dir / "bundle.json"
        if not meta_file.is_file():
            raise ValueError(f"{model_dir}: not a model bundle (no bundle.json)")
        bundle_version = str(json.loads(meta_file.read_text())["model_version"])
        _say(f"packing {model_dir} with packer.py")
        out = run(
            [sys.executable, str(REPO_ROOT / "packer.py"), "--model-dir", str(model_dir), "--no-bento"], cwd=REPO_ROOT
        )
        tags = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("model:")]
        if not tags:
            raise DockerError(f"packer.py printed no `model: TAG` line for {model_dir}")
        model_tag = tags[-1]
    version = bundle_version or model_tag.split(":", 1)[1]
    return model_tag, version


def ensure_base_image(settings: SwarmSettings) -> None:
    if image_exists(settings.base_image) or not settings.base_image.startswith("local/"):
        return  # a public base (python:3.11-slim) is pulled by docker build itself
    _say(f"building base image {settings.base_image} (debootstrap, about a minute)")
    env = {**os.environ, "DKT_BASE_IMAGE": settings.base_image}
    run([str(REPO_ROOT / "docker_manual" / "build_base_image.sh")], env=env)


def build(
    settings: SwarmSettings, model_dir: Path | None = None, model_tag: str | None = None, with_model: bool = True
) -> dict[str, Any]:
    """Build and push every image; returns their refs and timings."""
    stack = Stack(settings)
    t0 = time.monotonic()
    # The model first: a bad bundle fails in seconds, before any image is built.
    model = resolve_model(model_dir, model_tag) if with_model else None
    ensure_base_image(settings)
    base = {"BASE_IMAGE": settings.base_image}
    images: dict[str, Any] = {}
    common = {"ca_bundle": settings.build_ca, "wheels_dir": settings.wheels_dir, "questions": settings.questions}
    for key, prefix in (("inference-runtime", "r"), ("client", "c"), ("proxy", "p")):
        spec = stack.config.images[key]
        _say(f"image {spec.name}: build (skipped when unchanged) and push")
        ref, built = build_hashed_image(spec, settings.registry, base, prefix=prefix, **common)
        images[key] = ref
        _say(f"image {spec.name}: {ref} ({'built' if built else 'unchanged'})")
    result: dict[str, Any] = {"images": images}
    if model is not None:
        tag, version = model
        _say(f"image inference for {tag}: build and push")
        images["inference"] = build_inference_image(
            stack.config.images["inference"], settings.registry, images["inference-runtime"], tag, version
        )
        result.update(model_tag=tag, model_version=version)
    result["build_seconds"] = round(time.monotonic() - t0, 1)
    return result


def _secret_key(settings: SwarmSettings) -> str:
    if settings.secret_key:
        return settings.secret_key
    f = settings.secret_key_file
    if not f.is_file():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(secrets.token_hex(32))
        f.chmod(0o600)
    return f.read_text().strip()


def stack_deploy(
    settings: SwarmSettings, stack: Stack, images: dict[str, str], replicas: int, client_store: ClientStore
) -> None:
    env = {
        **os.environ,
        **client_store.compose_env(),
        "DKT_CLIENT_NODE": node_id(),
        "DKT_INFERENCE_IMAGE": images["inference"],
        "DKT_CLIENT_IMAGE": images["client"],
        "DKT_PROXY_IMAGE": images["proxy"],
        "DKT_INFERENCE_REPLICAS": str(replicas),
        "DKT_SECRET_KEY": _secret_key(settings),
    }
    run(["docker", "stack", "deploy", "-c", str(settings.compose_file), stack.name], env=env)


def fetch_metadata(settings: SwarmSettings, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(settings.metadata_url, timeout=timeout) as resp:
        return json.loads(resp.read())


def check_metadata(
    settings: SwarmSettings,
    expect_version: str | None,
    timeout: float,
    fetch: Callable[[SwarmSettings], dict[str, Any]] = fetch_metadata,
) -> dict[str, Any]:
    """Ask the client path for /metadata until METADATA_SAMPLES replies in a row agree (on ``expect_version``)."""
    deadline = time.monotonic() + timeout
    agreeing: list[str] = []
    last_error = ""
    while time.monotonic() < deadline:
        try:
            meta = fetch(settings)
            version = str(meta.get("model_version"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error, agreeing = str(exc), []
            time.sleep(0.5)
            continue
        if (expect_version is not None and version != expect_version) or (agreeing and agreeing[-1] != version):
            last_error, agreeing = f"a reply said model_version={version}", []
            time.sleep(0.2)
            continue
        agreeing.append(version)
        if len(agreeing) >= METADATA_SAMPLES:
            return meta
    want = f"model_version={expect_version}" if expect_version else "a steady model_version"
    raise RolloutFailed(f"{settings.metadata_url} did not report {want} within {timeout:.0f} s ({last_error})")


def deploy(
    settings: SwarmSettings,
    model_dir: Path | None = None,
    model_tag: str | None = None,
    image: str | None = None,
    replicas: int | None = None,
    expect_version: str | None = None,
) -> dict[str, Any]:
    """Build, push, deploy/update the stack and wait until it serves the new model. RolloutFailed on rollback."""
    stack = Stack(settings)
    t0 = time.monotonic()
    # Before any build: a deploy whose answers would not reach the data update must not start.
    client_store = check_client_store(settings.client_db)
    built = build(settings, model_dir, model_tag, with_model=image is None)
    images: dict[str, str] = dict(built["images"])
    if image is not None:
        images["inference"] = image
    else:
        expect_version = expect_version or built["model_version"]
    inference = stack.service("inference")
    before: ServiceState | None = service_state(inference) if service_exists(inference) else None
    n = replicas if replicas is not None else (before.replicas if before and before.replicas else DEFAULT_REPLICAS)
    _say(f"docker stack deploy {stack.name}: inference {images['inference']} x{n}")
    t_deploy = time.monotonic()
    cs = client_store
    _say(f"client answers: {cs.db} (bind mount of {cs.folder}, container user {cs.uid}:{cs.gid})")
    stack_deploy(settings, stack, images, n, client_store)
    for key in ("client", "proxy"):
        wait_for_rollout(stack.service(key), images[key], settings.timeout, progress=_say)
    st = wait_for_rollout(
        inference,
        images["inference"],
        settings.timeout,
        progress=_say,
        stale_update=before.update_started if before else None,
    )
    rollout_s = time.monotonic() - t_deploy
    meta = check_metadata(settings, expect_version, timeout=min(settings.timeout, 120))
    return {
        "stack": stack.name,
        "images": images,
        "model_version": meta.get("model_version"),
        "client_db": str(client_store.db),
        "inference": st.as_dict(),
        "build_seconds": built["build_seconds"],
        "rollout_seconds": round(rollout_s, 1),
        "total_seconds": round(time.monotonic() - t0, 1),
    }


def scale_inference(settings: SwarmSettings, replicas: int) -> dict[str, Any]:
    stack = Stack(settings)
    name = stack.service("inference")
    if not service_exists(name):
        raise ValueError(f"service {name} does not exist: deploy the stack first")
    t0 = time.monotonic()
    scale(name, replicas)
    st = wait_for_rollout(name, service_state(name).image, settings.timeout, progress=_say)
    return {"service": name, **st.as_dict(), "seconds": round(time.monotonic() - t0, 1)}


def status(settings: SwarmSettings) -> dict[str, Any]:
    stack = Stack(settings)
    services: dict[str, Any] = {}
    for key in stack.config.services:
        name = stack.service(key)
        services[key] = service_state(name).as_dict() if service_exists(name) else None
    out: dict[str, Any] = {"stack": stack.name, "services": services, "client_db": str(settings.client_db)}
    try:
        out["metadata"] = fetch_metadata(settings)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out["metadata_error"] = str(exc)
    return out


def down(settings: SwarmSettings) -> dict[str, Any]:
    stack = Stack(settings)
    run(["docker", "stack", "rm", stack.name])
    # `stack rm` returns before the tasks and the network are gone; a quick redeploy would race them.
    deadline = time.monotonic() + settings.timeout
    while time.monotonic() < deadline:
        left = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.stack.namespace={stack.name}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        nets = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack.name}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if not left and not nets:
            break
        time.sleep(1)
    return {"stack": stack.name, "removed": True}


def _model_args(p: argparse.ArgumentParser, allow_image: bool) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model-dir", type=Path, help="model bundle directory (packed with packer.py first)")
    g.add_argument("--model-tag", help="a model already in the BentoML store, e.g. dkt-model:v2")
    if allow_image:
        g.add_argument("--image", help="deploy this inference image as is (e.g. an older version, to go back)")


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="dkt swarm",
        description="Build, push and roll out the DKT stack on Docker Swarm (settings: see docs/docker.md).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and push the images")
    _model_args(b, allow_image=False)
    d = sub.add_parser("deploy", help="build, push, deploy or rolling-update, wait, check /metadata")
    _model_args(d, allow_image=True)
    d.add_argument("--replicas", type=int, help=f"inference replicas (default: keep current, else {DEFAULT_REPLICAS})")
    d.add_argument("--expect-version", help="model_version /metadata must report (default: the bundle's)")
    s = sub.add_parser("scale", help="scale the inference service")
    s.add_argument("--replicas", type=int, required=True, help="number of inference replicas")
    sub.add_parser("status", help="services, replicas, update state, served model version")
    sub.add_parser("down", help="remove the stack")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = swarm_settings()
        if args.command == "build":
            out = build(settings, args.model_dir, args.model_tag)
        elif args.command == "deploy":
            if args.replicas is not None and args.replicas < 1:
                raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
            out = deploy(settings, args.model_dir, args.model_tag, args.image, args.replicas, args.expect_version)
        elif args.command == "scale":
            if args.replicas < 1:
                raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
            out = scale_inference(settings, args.replicas)
        elif args.command == "status":
            out = status(settings)
        else:
            out = down(settings)
    except (ValueError, DockerError, RolloutFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ClientStore",
    "SwarmSettings",
    "build",
    "check_client_store",
    "deploy",
    "down",
    "scale_inference",
    "status",
    "strip_digest",
    "swarm_settings",
]
