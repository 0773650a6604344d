"""Run the inference service: ``bentoml serve service:DKTService`` from this checkout.

    dkt serve [--model-dir DIR] [--host $DKT_SERVICE_HOST (127.0.0.1)] [--port 3000]

Serves the model ``$DKT_MODEL_TAG`` (default ``dkt-model:latest``) of BentoML's store (``$BENTOML_HOME``).
With ``--model-dir``, that bundle is packed into the store first (``dkt pack --model-dir DIR --no-bento``),
so it is the one served. The process becomes ``bentoml serve`` (same pid, same signals), which is what
``make serving-up`` records in its pid file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dkt.cli import Parser
from dkt.settings import ServiceSettings, load_or_exit

ROOT = Path(__file__).resolve().parents[2]


def port(text: str) -> int:
    """argparse type: its name is what the error line calls a bad value ("invalid port value: '70000'")."""
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError(text)
    return number


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="dkt serve", description=__doc__)
    p.add_argument("--model-dir", type=Path, help="a model bundle to pack and serve (default: the store's latest)")
    host = load_or_exit(ServiceSettings).service_host
    p.add_argument("--host", default=host, help=f"address to listen on (default DKT_SERVICE_HOST: {host})")
    p.add_argument("--port", type=port, default=3000, help="port to listen on, 1-65535 (default 3000)")
    args = p.parse_args(argv)
    if args.model_dir is not None:
        import packer  # BentoML: imported only when a bundle is to be packed

        if rc := packer.main(["--model-dir", str(args.model_dir), "--no-bento"]):
            return rc
    argv_serve = [sys.executable, "-m", "bentoml", "serve", "service:DKTService", "--working-dir", str(ROOT),
                  "--host", args.host, "--port", str(args.port)]  # fmt: skip
    sys.stdout.flush()
    os.execv(sys.executable, argv_serve)
