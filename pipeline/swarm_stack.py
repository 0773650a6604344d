"""The stack itself: its names (config/swarm.json), the compose file's variables, `docker stack deploy` and `rm`."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from dkt import secret_file
from pipeline.swarm_answers import ClientStore
from pipeline.swarm_images import DockerError, StackConfig, load_stack_config, run
from pipeline.swarm_settings import SwarmSettings


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


def client_secret(settings: SwarmSettings) -> str:
    """The client's Flask secret: DKT_SECRET_KEY, else one generated once into a file (sessions survive redeploys)."""
    if settings.secret_key:
        return settings.secret_key
    return secret_file.read_or_create(settings.secret_key_file)  # mode 0600 from creation, never chmod-ed after


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
        "DKT_PROMETHEUS_IMAGE": images["prometheus"],
        "DKT_INFERENCE_REPLICAS": str(replicas),
        "DKT_SECRET_KEY": client_secret(settings),
    }
    run(["docker", "stack", "deploy", "-c", str(settings.compose_file), stack.name], env=env)


def down(settings: SwarmSettings) -> dict[str, Any]:
    stack = Stack(settings)
    run(["docker", "stack", "rm", stack.name])
    # `stack rm` returns before the tasks and the network are gone; a quick redeploy would race them.
    deadline = time.monotonic() + settings.timeout
    while time.monotonic() < deadline:
        if not _labelled(stack.name, "ps") and not _labelled(stack.name, "network", "ls"):
            break
        time.sleep(1)
    return {"stack": stack.name, "removed": True}


def _labelled(stack_name: str, *command: str) -> list[str]:
    """Ids that ``docker <command> -q`` lists for the stack's label (containers, networks); empty once removed."""
    argv = ["docker", *command, "-q", "--filter", f"label=com.docker.stack.namespace={stack_name}"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
