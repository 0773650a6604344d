"""Reading Swarm service state and waiting for rollouts (pipeline.swarm_service), from docker's JSON shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.swarm_service import RolloutFailed, ServiceState, parse_service_state, strip_digest, wait_for_rollout

OLD = "127.0.0.1:5000/dkt-inference:v1"
NEW = "127.0.0.1:5000/dkt-inference:v2"


def inspect(image: str, replicas: int = 3, update: dict[str, Any] | None = None, prev: str | None = None) -> dict:
    """The fields of `docker service inspect` that matter, shaped as docker prints them."""
    out: dict[str, Any] = {
        "Spec": {
            "Name": "dkt_inference",
            "TaskTemplate": {"ContainerSpec": {"Image": image + "@sha256:" + "a" * 64}},
            "Mode": {"Replicated": {"Replicas": replicas}},
        }
    }
    if update:
        out["UpdateStatus"] = update
    if prev:
        out["PreviousSpec"] = {"TaskTemplate": {"ContainerSpec": {"Image": prev}}}
    return out


def task(image: str, current: str = "Running 3 seconds ago", desired: str = "Running") -> dict[str, str]:
    return {"Image": image, "CurrentState": current, "DesiredState": desired}


def test_strip_digest() -> None:
    assert strip_digest(NEW + "@sha256:" + "b" * 64) == NEW
    assert strip_digest(NEW) == NEW


def test_parse_counts_running_and_starting_tasks() -> None:
    st = parse_service_state(
        inspect(NEW, update={"State": "updating", "Message": "update in progress", "StartedAt": "t1"}, prev=OLD),
        [
            task(OLD),
            task(OLD),
            task(NEW, "Starting 2 seconds ago"),
            task(OLD, "Shutdown 1 second ago", desired="Shutdown"),
        ],
    )
    assert (st.running, st.pending, st.replicas, st.update_state, st.update_started) == (2, 1, 3, "updating", "t1")
    assert st.previous_image == OLD
    assert not st.converged_on(NEW)


def test_converged_only_when_every_running_task_has_the_image() -> None:
    done = parse_service_state(inspect(NEW, update={"State": "completed"}), [task(NEW)] * 3)
    assert done.converged_on(NEW) and done.converged_on(NEW + "@sha256:" + "c" * 64)
    assert not parse_service_state(inspect(NEW), [task(NEW)] * 2).converged_on(NEW)
    assert not parse_service_state(inspect(NEW), [task(NEW), task(NEW), task(OLD)]).converged_on(NEW)
    assert not done.converged_on(OLD)


def states(*items: ServiceState) -> Callable[[str], ServiceState]:
    seq = list(items)

    def next_state(_name: str) -> ServiceState:
        return seq.pop(0) if len(seq) > 1 else seq[0]

    return next_state


def st(image: str, running: list[str], update: str | None = None, started: str | None = None) -> ServiceState:
    return parse_service_state(
        inspect(image, update={"State": update, "Message": f"swarm says {update}", "StartedAt": started}),
        [task(i) for i in running],
    )


def test_wait_returns_once_the_update_completes() -> None:
    fn = states(st(NEW, [OLD] * 3, "updating"), st(NEW, [OLD, OLD, NEW], "updating"), st(NEW, [NEW] * 3, "completed"))
    seen: list[str] = []
    out = wait_for_rollout("dkt_inference", NEW, timeout=5, state_fn=fn, poll=0, progress=seen.append)
    assert out.running == 3 and seen[-1] == "dkt_inference: 3/3 running, update completed"


def test_wait_reports_a_rollback_after_it_finishes() -> None:
    fn = states(
        st(NEW, [OLD] * 3, "updating", "t2"),
        st(OLD, [OLD] * 3, "rollback_started", "t2"),
        st(OLD, [OLD] * 3, "rollback_completed", "t2"),
    )
    with pytest.raises(RolloutFailed, match=r"dkt-inference:v2 failed and was rolled back .*rollback completed.*:v1"):
        wait_for_rollout("dkt_inference", NEW, timeout=5, state_fn=fn, poll=0)


def test_an_earlier_rollback_is_not_taken_for_this_update() -> None:
    # Right after `stack deploy` Swarm may still show the last update's state.
    fn = states(
        st(NEW, [OLD] * 3, "rollback_completed", "old"),
        st(NEW, [OLD, OLD, NEW], "updating", "new"),
        st(NEW, [NEW] * 3, "completed", "new"),
    )
    assert wait_for_rollout("dkt_inference", NEW, timeout=5, state_fn=fn, poll=0, stale_update="old").running == 3


def test_a_paused_update_fails_with_the_way_out() -> None:
    with pytest.raises(RolloutFailed, match=r"paused.*docker service rollback dkt_inference"):
        wait_for_rollout("dkt_inference", NEW, timeout=5, state_fn=states(st(NEW, [OLD] * 3, "paused")), poll=0)


def test_timeout_says_how_far_it_got() -> None:
    with pytest.raises(RolloutFailed, match=r"did not converge .* within 0 s \(2/3 running"):
        wait_for_rollout("dkt_inference", NEW, timeout=0.01, state_fn=states(st(NEW, [NEW, NEW])), poll=0.02)
