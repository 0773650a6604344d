"""Build, push and roll out the DKT stack on Docker Swarm; scale it; report its state.

CLI (``dkt swarm COMMAND --help``, or ``python -m pipeline.swarm``). Progress goes to stderr, one JSON object to
stdout. ``error: ...`` and exit 2 on bad input (an argument, a setting, the answer folder, a folder that is no
bundle), exit 1 when the work fails (Docker, or an update Swarm rolled back).

  build   --model-dir DIR | --model-tag TAG   build and push the images (runtime, inference, client, proxy)
  deploy  --model-dir DIR | --model-tag TAG | --image REF  [--replicas N] [--expect-version V]
          builds and pushes, then `docker stack deploy` (first time: creates the stack; later: a rolling
          update of inference, start-first, one task at a time). Waits until every replica runs the new
          image, then checks /metadata through the proxy. A new image whose readiness check fails
          is rolled back by Swarm and the command exits 1 saying so.
  scale   --replicas N                         scale inference; the stack keeps serving while it scales
  status                                       services, replicas, update state, model version served
  down                                         `docker stack rm`

Settings: the ``swarm`` group of dkt/settings.py (``dkt settings show``), resolved by pipeline/swarm_settings.py.
The answer store ``DKT_CLIENT_DB`` (client group) is the file the client service writes through a bind mount of
its folder and update_data_dag exports: the folder must exist, hold nothing but the database, and be writable by
its owner, whose uid:gid the client container runs as (pipeline/swarm_answers.py).

The parts, in the order a deploy uses them:
  swarm_settings  the settings above           swarm_answers  the answer store check
  swarm_build     the model and the images     swarm_images   building and pushing one image
  swarm_stack     compose variables, `docker stack deploy` / `rm`
  swarm_rollout   deploy, scale, status        swarm_service  watching a service converge or roll back

Importable: ``deploy``, ``build``, ``scale_inference``, ``status``, ``down`` (all take ``SwarmSettings``, from
``swarm_settings()``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dkt.cli import Parser
from pipeline.swarm_answers import ClientStore, check_client_store
from pipeline.swarm_build import build
from pipeline.swarm_images import DockerError
from pipeline.swarm_rollout import DEFAULT_REPLICAS, METADATA_SAMPLES, check_metadata, deploy, scale_inference, status
from pipeline.swarm_service import RolloutFailed, strip_digest
from pipeline.swarm_settings import SwarmSettings, swarm_settings
from pipeline.swarm_stack import down


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
    except ValueError as exc:  # bad input: an argument, a setting, a folder, a bundle; nothing was changed yet
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DockerError, RolloutFailed) as exc:  # the work itself failed: Docker, or Swarm rolled the update back
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "METADATA_SAMPLES",
    "ClientStore",
    "SwarmSettings",
    "build",
    "check_client_store",
    "check_metadata",
    "deploy",
    "down",
    "main",
    "scale_inference",
    "status",
    "strip_digest",
    "swarm_settings",
]
