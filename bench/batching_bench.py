"""Batching benchmark: the in-process micro-batcher (DKT_BATCHING=inprocess, the default) against BentoML's adaptive
batching (DKT_BATCHING=bentoml: serving/model_worker.py), the same model, side by side in one run.

    .venv/bin/python bench/batching_bench.py --model-dir artifacts/lstm [--requests 320] [--concurrency 1,8,32]

Both are `bentoml serve service:DKTService` on one packed model; only DKT_BATCHING differs. Each server has its own
BENTOML_HOME (the store linked in): `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir at start, which
would freeze the other's /metrics. The load is bench/serve_bench.py's asyncio generator (one aiohttp client per
concurrent stream, in this process, its CPU share printed per level), one student (--history answers,
--candidates items, a fixed ``at``), each level sent to both servers in turn so background load hits both alike.
Per level: p50/p99 latency, throughput, the mean jobs per model call (``dkt_batch_size`` on each /metrics); last:
``batching: c<max>_ratio=<bentoml/inprocess throughput> p99_c<min>_ms=<bentoml>/<inprocess> failed=<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import (
    PY,
    ROOT,
    Result,
    answers,
    candidates,
    catalog_items,
    free_port,
    pack,
    report,
    run_load,
    server,
)

VARIANTS = ("inprocess", "bentoml")
BATCH_METRIC = re.compile(r"^dkt_batch_size_(sum|count)(?:\{[^}]*\})? (\S+)$", re.M)


def batch_sizes(base: str) -> tuple[float, float]:
    """(sum, count) of the server's ``dkt_batch_size`` histogram: jobs, model calls."""
    found = BATCH_METRIC.findall(requests.get(base + "/metrics", timeout=60).text)
    return sum(float(v) for k, v in found if k == "sum"), sum(float(v) for k, v in found if k == "count")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="model bundle written by train.py")
    ap.add_argument("--history", type=int, default=100, help="answers in each request's history")
    ap.add_argument("--candidates", type=int, default=20, help="candidate items per request")
    ap.add_argument("--requests", type=int, default=320, help="requests per concurrency level and server")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model_dir = args.model_dir.resolve()
    try:
        catalog_items(model_dir)
    except ValueError as exc:
        print(f"error: --model-dir {exc}", file=sys.stderr)
        return 2
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        print(f"error: --concurrency {args.concurrency!r}: not comma-separated integers", file=sys.stderr)
        return 2
    doc = {"history": answers(model_dir, args.history, args.seed), "at": "2031-01-01 00:00:00"}
    body = json.dumps(doc | {"candidates": candidates(model_dir, args.candidates, args.seed)}).encode()

    with tempfile.TemporaryDirectory(prefix="batching-bench-") as tmp:
        store = Path(tmp, "store")
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONPATH": str(ROOT), "DKT_ACCESS_LOG": "0"}
        try:
            env["DKT_MODEL_TAG"] = pack(model_dir, {**env, "BENTOML_HOME": str(store)})
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        urls: dict[str, str] = {}
        procs: dict[str, psutil.Process] = {}
        results: dict[tuple[str, int], Result] = {}
        with ExitStack() as stack:
            for variant in VARIANTS:
                home = Path(tmp, variant)
                home.mkdir()
                (home / "models").symlink_to(store / "models")
                port = free_port()
                urls[variant] = f"http://127.0.0.1:{port}"
                cmd = [PY, "-m", "bentoml", "serve", "service:DKTService", "--host", "127.0.0.1", "--port", str(port)]
                venv = {**env, "BENTOML_HOME": str(home), "DKT_BATCHING": variant}
                log = Path(tmp, f"{variant}.log")
                procs[variant] = psutil.Process(
                    stack.enter_context(server(cmd, venv, urls[variant] + "/readyz", log)).pid
                )
            for variant in VARIANTS:  # warm-up: lazy imports, allocations, BentoML's dispatcher's first estimates
                run_load(urls[variant] + "/predict", [[body] * 10] * 4, procs[variant])
            for c in levels:
                for variant in VARIANTS:
                    before = batch_sizes(urls[variant])
                    streams = [[body] * max(1, args.requests // c) for _ in range(c)]
                    results[variant, c] = run_load(urls[variant] + "/predict", streams, procs[variant])
                    jobs, calls = (a - b for a, b in zip(batch_sizes(urls[variant]), before, strict=True))
                    report(f"{variant} ({jobs / max(1.0, calls):4.1f} jobs/call)", c, results[variant, c])
    print(
        f"\nrequest: history {args.history} answers, {args.candidates} candidates; {args.requests} requests per level"
    )
    for c in levels:
        ratio = results["bentoml", c].throughput / results["inprocess", c].throughput
        print(f"throughput bentoml/inprocess at c={c}: {ratio:.2f}x")
    top, one = max(levels), min(levels)
    failed = sum(r.failed for r in results.values())
    ratio = results["bentoml", top].throughput / results["inprocess", top].throughput
    p99 = "/".join(f"{results[v, one].pct(99):.1f}" for v in ("bentoml", "inprocess"))
    print(f"batching: c{top}_ratio={ratio:.2f} p99_c{one}_ms={p99} failed={failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
