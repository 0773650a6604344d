"""Rolling the stack over and watching it: deploy (build, `docker stack deploy`, wait for every replica, check
/metadata through the proxy), scale, status. Swarm rolls a failing new image back; the caller gets RolloutFailed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.swarm_answers import check_client_store
from pipeline.swarm_build import build, say
from pipeline.swarm_service import (
    RolloutFailed,
    ServiceState,
    scale,
    service_exists,
    service_state,
    wait_for_rollout,
)
from pipeline.swarm_settings import SwarmSettings
from pipeline.swarm_stack import Stack, stack_deploy

DEFAULT_REPLICAS = 3
METADATA_SAMPLES = 12  # dnsrr spreads requests at random: this many agreeing replies make a stale replica unlikely


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
    say(f"docker stack deploy {stack.name}: inference {images['inference']} x{n}")
    t_deploy = time.monotonic()
    cs = client_store
    say(f"client answers: {cs.db} (bind mount of {cs.folder}, container user {cs.uid}:{cs.gid})")
    stack_deploy(settings, stack, images, n, client_store)
    for key in ("client", "proxy", "prometheus"):
        wait_for_rollout(stack.service(key), images[key], settings.timeout, progress=say)
    st = wait_for_rollout(
        inference,
        images["inference"],
        settings.timeout,
        progress=say,
        stale_update=before.update_started if before else None,
    )
    rollout_s = time.monotonic() - t_deploy
    meta = check_metadata(settings, expect_version, timeout=min(settings.timeout, 120))
    return {
        "stack": stack.name,
        "images": images,
        "model_version": meta.get("model_version"),
        "client_db": str(client_store.db),
        "prometheus": settings.prometheus_url,
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
    st = wait_for_rollout(name, service_state(name).image, settings.timeout, progress=say)
    return {"service": name, **st.as_dict(), "seconds": round(time.monotonic() - t0, 1)}


def status(settings: SwarmSettings) -> dict[str, Any]:
    stack = Stack(settings)
    services: dict[str, Any] = {}
    for key in stack.config.services:
        name = stack.service(key)
        services[key] = service_state(name).as_dict() if service_exists(name) else None
    out: dict[str, Any] = {
        "stack": stack.name,
        "services": services,
        "client_db": str(settings.client_db),
        "prometheus": settings.prometheus_url,
    }
    try:
        out["metadata"] = fetch_metadata(settings)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out["metadata_error"] = str(exc)
    return out
