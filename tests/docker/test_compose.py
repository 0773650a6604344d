"""The stack file says what the issue asks of it: replicas, dnsrr, readiness healthcheck, limits, rolling updates."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pipeline.swarm_images import REPO_ROOT


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_inference_rolls_start_first_one_task_at_a_time_by_default_with_rollback(stack: dict[str, Any]) -> None:
    deploy = stack["services"]["inference"]["deploy"]
    assert deploy["replicas"] == "${DKT_INFERENCE_REPLICAS:-3}"
    assert deploy["endpoint_mode"] == "dnsrr"
    update = deploy["update_config"]
    # One at a time unless a host says otherwise (the Docker tests do: DKT_INFERENCE_UPDATE_PARALLELISM=0)
    one = "${DKT_INFERENCE_UPDATE_PARALLELISM:-1}"
    assert (update["parallelism"], update["order"], update["failure_action"]) == (one, "start-first", "rollback")
    assert (deploy["rollback_config"]["parallelism"], deploy["rollback_config"]["order"]) == (one, "start-first")
    assert update["monitor"] == deploy["rollback_config"]["monitor"] == "${DKT_INFERENCE_UPDATE_MONITOR:-10s}"
    assert {"cpus", "memory"} <= set(deploy["resources"]["limits"])


def test_inference_health_is_readiness(stack: dict[str, Any]) -> None:
    check = stack["services"]["inference"]["healthcheck"]
    assert any("/readyz" in part for part in check["test"])


def test_health_checks_tolerate_a_busy_host(stack: dict[str, Any]) -> None:
    # A 3 s limit (python3's start included) failed good replicas on a loaded host and rolled a good update back.
    for name in ("inference", "client"):
        check = stack["services"][name]["healthcheck"]
        assert int(check["timeout"].removesuffix("s")) >= 10, name
        assert int(check["retries"]) >= 3, name


def test_only_the_single_proxy_and_prometheus_publish_and_in_host_mode(stack: dict[str, Any]) -> None:
    services = stack["services"]
    publishers = [name for name, svc in services.items() if svc.get("ports")]
    assert publishers == ["proxy", "prometheus"]
    for name in publishers:
        assert services[name]["deploy"]["replicas"] == 1
        assert all(p["mode"] == "host" for p in services[name]["ports"])
        # two tasks cannot hold one host port: the task must stop before it starts again
        assert services[name]["deploy"]["update_config"]["order"] == "stop-first"


def test_client_reaches_inference_by_service_name_on_the_overlay(stack: dict[str, Any]) -> None:
    # through the proxy, which only balances over replicas whose /readyz answers; by name, so dnsrr (no IPVS)
    assert stack["services"]["client"]["environment"]["DKT_INFERENCE_URL"] == "http://proxy:3000"
    assert stack["services"]["proxy"]["deploy"]["endpoint_mode"] == "dnsrr"
    assert stack["networks"]["dkt"]["driver"] == "overlay"
    assert all(svc["networks"] == ["dkt"] for svc in stack["services"].values())


def test_images_are_never_defaulted_to_latest(stack: dict[str, Any]) -> None:
    for svc in stack["services"].values():
        assert svc["image"].startswith("${") and ":?" in svc["image"], svc["image"]


def test_client_writes_the_host_folder_the_export_reads_not_a_volume(stack: dict[str, Any]) -> None:
    client = stack["services"]["client"]
    (mount,) = client["volumes"]
    assert mount["type"] == "bind" and mount["target"] == "/data"
    assert mount["source"].startswith("${DKT_CLIENT_DATA_DIR:?")
    assert client["environment"]["DKT_CLIENT_DB"] == "/data/${DKT_CLIENT_DB_NAME:-client.db}"
    assert client["user"].startswith("${DKT_CLIENT_USER:?")
    # a bind mount exists on one node only: the client is pinned to the node holding the folder
    assert client["deploy"]["placement"]["constraints"] == [
        "node.id == ${DKT_CLIENT_NODE:?set DKT_CLIENT_NODE to the swarm node id holding the folder}"
    ]
    assert "volumes" not in stack, "no named volume may hold answers the export never sees"
