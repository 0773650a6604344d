"""Watching Swarm services: their state, waiting for a rolling update to converge or roll back, scaling.

Swarm reports an update in ``UpdateStatus.State``: updating -> completed, or (with
``failure_action: rollback``) rollback_started -> rollback_completed. A task with a healthcheck
only counts as Running (and joins DNS) once healthy, so "all running tasks use the spec's image"
means every replica that receives traffic serves the new version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.swarm_images import DockerError, run

ROLLBACK_STATES = {"rollback_started", "rollback_paused", "rollback_completed"}


class RolloutFailed(RuntimeError):
    """A rolling update did not converge: rolled back, paused, or timed out. The message says which and why."""


@dataclass
class ServiceState:
    name: str
    image: str
    replicas: int | None
    update_state: str | None
    update_message: str
    previous_image: str | None
    update_started: str | None = None
    running_images: list[str] = field(default_factory=list)
    pending: int = 0

    @property
    def running(self) -> int:
        return len(self.running_images)

    def converged_on(self, image: str) -> bool:
        """Every running task uses ``image`` (tag or digest-pinned), as many as the spec asks for, none starting."""
        want = strip_digest(image)
        return (
            strip_digest(self.image) == want
            and self.update_state in (None, "completed", "pending")
            and self.replicas is not None
            and self.running == self.replicas
            and self.pending == 0
            and all(strip_digest(i) == want for i in self.running_images)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "replicas": self.replicas,
            "running": self.running,
            "pending": self.pending,
            "update_state": self.update_state,
            "update_message": self.update_message,
        }


def strip_digest(image: str) -> str:
    """`reg/name:tag@sha256:...` -> `reg/name:tag` (stack deploy pins digests; people name tags)."""
    return image.split("@", 1)[0]


def parse_service_state(inspect: dict[str, Any], tasks: list[dict[str, Any]]) -> ServiceState:
    """Build a ServiceState from `docker service inspect` JSON and `docker service ps --format '{{json .}}'` rows."""
    spec = inspect["Spec"]
    mode = spec.get("Mode", {})
    replicas = mode["Replicated"]["Replicas"] if "Replicated" in mode else None
    prev = inspect.get("PreviousSpec")
    upd = inspect.get("UpdateStatus") or {}
    running: list[str] = []
    pending = 0
    for t in tasks:
        if t.get("DesiredState") != "Running":
            continue
        current = str(t.get("CurrentState", ""))
        if current.startswith("Running"):
            running.append(str(t.get("Image", "")))
        else:
            pending += 1
    return ServiceState(
        name=spec["Name"],
        image=spec["TaskTemplate"]["ContainerSpec"]["Image"],
        replicas=replicas,
        update_state=upd.get("State"),
        update_message=str(upd.get("Message", "")),
        previous_image=prev["TaskTemplate"]["ContainerSpec"]["Image"] if prev else None,
        update_started=upd.get("StartedAt"),
        running_images=running,
        pending=pending,
    )


def service_exists(name: str) -> bool:
    try:
        run(["docker", "service", "inspect", name])
    except DockerError:
        return False
    return True


def service_state(name: str) -> ServiceState:
    inspect = json.loads(run(["docker", "service", "inspect", name]))[0]
    rows = run(["docker", "service", "ps", "--no-trunc", "--format", "{{json .}}", name]).splitlines()
    return parse_service_state(inspect, [json.loads(r) for r in rows if r.strip()])


def wait_for_rollout(
    name: str,
    image: str,
    timeout: float,
    *,
    state_fn: Callable[[str], ServiceState] = service_state,
    poll: float = 1.0,
    progress: Callable[[str], None] = lambda _msg: None,
    stale_update: str | None = None,
) -> ServiceState:
    """Wait until ``name`` runs ``image`` on all replicas. Raises RolloutFailed on rollback, pause or timeout.

    On a rollback it waits for the rollback to finish first, so that the caller's error is raised
    with the old version serving again. ``stale_update`` is ``UpdateStatus.StartedAt`` from before the
    deploy: until Swarm starts the new update, the old update's state (say, an earlier rollback) is ignored.
    """
    deadline = time.monotonic() + timeout
    last = ""
    rolling_back_since: str | None = None
    while True:
        st = state_fn(name)
        if stale_update is not None and st.update_started == stale_update:
            st.update_state = "pending" if st.update_state in ROLLBACK_STATES | {"paused"} else st.update_state
        line = f"{name}: {st.running}/{st.replicas} running, update {st.update_state or '-'}"
        if line != last:
            progress(line)
            last = line
        if st.update_state in ROLLBACK_STATES:
            rolling_back_since = rolling_back_since or st.update_message
            if st.update_state == "rollback_completed" or (
                st.update_state == "rollback_paused" or time.monotonic() > deadline
            ):
                raise RolloutFailed(
                    f"rolling update of service {name} to {strip_digest(image)} failed and was rolled back "
                    f"(swarm: {rolling_back_since or st.update_message}); "
                    f"rollback {st.update_state.removeprefix('rollback_')}, service runs {strip_digest(st.image)}"
                )
        elif st.update_state == "paused":
            raise RolloutFailed(
                f"rolling update of service {name} to {strip_digest(image)} paused (swarm: {st.update_message}); "
                f"run `docker service rollback {name}` or fix the image and deploy again"
            )
        elif st.converged_on(image):
            return st
        if time.monotonic() > deadline:
            raise RolloutFailed(
                f"service {name} did not converge on {strip_digest(image)} within {timeout:.0f} s "
                f"({st.running}/{st.replicas} running, update {st.update_state or '-'}: {st.update_message})"
            )
        time.sleep(poll)


def scale(name: str, replicas: int) -> None:
    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    run(["docker", "service", "scale", "--detach", f"{name}={replicas}"])
