"""What the swarm commands are configured with: dkt/settings.py's swarm group plus the client settings it shares.

Every variable is declared in dkt/settings.py (``SwarmSettings``; ``DKT_CLIENT_DB``, ``DKT_QUESTIONS`` and
``DKT_SECRET_KEY`` in ``ClientSettings``, because the client reads them too). This module only resolves them
for the swarm: relative paths against the repository root, where the exporter (update_data_dag) runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dkt import settings as declared
from dkt.settings import REPO_ROOT, ClientSettings, load

# Generated once when DKT_SECRET_KEY is unset (pipeline/swarm_stack.py), so the client's sessions survive redeploys.
SECRET_KEY_FILE = REPO_ROOT / "var" / "swarm" / "client_secret_key"


@dataclass
class SwarmSettings:
    registry: str
    stack: str | None
    stack_config: Path
    compose_file: Path
    base_image: str
    client_url: str
    metadata_url: str
    prometheus_url: str  # the stack's Prometheus as this host reaches it (its published port)
    timeout: float
    questions: Path
    client_db: Path  # the answer store: the client service bind-mounts its folder, the exporter reads it
    secret_key: str | None
    secret_key_file: Path = SECRET_KEY_FILE


def at_root(path: str | Path) -> Path:
    """A relative path means the same file to the swarm commands and the exporter, which runs at the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def swarm_settings(env: Mapping[str, str] | None = None) -> SwarmSettings:
    """Settings from ``env`` (default: the environment); ``SettingsError`` (a ValueError) naming a bad variable."""
    s = load(declared.SwarmSettings, env)
    c = load(ClientSettings, env)
    return SwarmSettings(
        registry=s.registry,
        stack=s.stack,
        stack_config=s.stack_config,
        compose_file=s.compose_file,
        base_image=s.base_image,
        client_url=str(s.client_url),
        metadata_url=str(s.metadata_url),
        prometheus_url=f"http://127.0.0.1:{s.prometheus_host_port}",
        timeout=s.timeout,
        # A DKT_QUESTIONS that is given is taken as given (relative: to the working directory), as before.
        questions=Path(c.questions) if "questions" in c.model_fields_set else at_root(c.questions),
        client_db=at_root(c.client_db),
        secret_key=c.secret_key.get_secret_value() if c.secret_key else None,
    )
