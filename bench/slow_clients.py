"""Slow clients against the inference service, directly and through the swarm's haproxy (docs/serving.md#hardening):

    .venv/bin/python bench/slow_clients.py --url http://127.0.0.1:3000 [--n 300] [--rounds 10] [--haproxy]

Opens ``--n`` connections that send headers and part of a body, then stall, plus one that stops inside its headers
(tests/support/slow_clients.py); times ``/readyz`` and ``/predict`` while they are open, then reports what each slow
connection got and when. ``--haproxy`` does the same again through a local haproxy (Debian's, as in the proxy image)
running docker/haproxy.cfg's ``global`` and ``defaults`` (its timeouts) in front of ``--url``. Timings are wall-clock
on whatever machine runs it: say how loaded it was.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402
from tests.support.slow_clients import hold  # noqa: E402


def proxy_config(service_url: str, port: int) -> str:
    """docker/haproxy.cfg's global and defaults sections (minus Docker's DNS) and one backend: ``service_url``."""
    text = (ROOT / "docker" / "haproxy.cfg").read_text()
    sections = re.split(r"(?m)^(?=\S)", text)
    kept = [s for s in sections if s.startswith(("global", "defaults"))]
    kept = [re.sub(r"(?m)^\s*default-server .*$", "", s) for s in kept]
    target = urlsplit(service_url)
    return "".join(kept) + (
        f"\nfrontend inference_in\n    bind 127.0.0.1:{port}\n    default_backend inference\n"
        f"\nbackend inference\n    server s1 {target.hostname}:{target.port}\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="a running service, e.g. http://127.0.0.1:3000")
    p.add_argument("--n", type=int, default=300, help="slow connections to hold")
    p.add_argument("--rounds", type=int, default=10, help="probes of /readyz and /predict while they are held")
    p.add_argument("--wait", type=float, default=90, help="seconds to wait for the server to cut them")
    p.add_argument("--haproxy", action="store_true", help="also through a local haproxy with docker/haproxy.cfg")
    args = p.parse_args()
    print("direct: " + hold(args.url, args.n, args.rounds, args.wait).summary(), flush=True)
    if not args.haproxy:
        return 0
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        print("error: haproxy not found (apt-get install haproxy)", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(proxy_config(args.url, port))
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    requests.get(url + "/readyz", timeout=5)
                    break
                except requests.RequestException:
                    time.sleep(0.1)
            print("haproxy: " + hold(url, args.n, args.rounds, args.wait).summary(), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
