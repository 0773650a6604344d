"""Serving benchmark: the BentoML service (adaptive batching) against a naive per-request Flask baseline.

    .venv/bin/python bench/serve_bench.py --model-dir artifacts/lstm

Both servers run side by side in this one run, on the same model, one process
each. Every request is one student: a history of --history answers and
--candidates items to score. Prints latency p50/p99 at concurrency 1 and
throughput at each concurrency, then the ratios. Targets: p99 at concurrency 1
under 50 ms; at concurrency 32, throughput >= 2x the baseline with no failed
request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402


@contextmanager
def server(cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout: float = 180) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; log: {log}")
            try:
                if requests.get(ready_url, timeout=1).status_code < 500:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{ready_url} not ready after {timeout:.0f} s; log: {log}")
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def make_body(model_dir: Path, n_history: int, n_candidates: int, seed: int) -> dict:
    """One student's request built from the bundle's own item catalog (items the model knows)."""
    catalog = json.loads((model_dir / "catalog.json").read_text())
    items = [(int(tag), item, test) for tag, pairs in catalog.items() for item, test in pairs]
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2024-01-01T00:00:00")
    history = []
    for i in range(n_history):
        tag, item, test = items[int(rng.integers(len(items)))]
        ts = str(t0 + np.timedelta64(40 * i, "s")).replace("T", " ")
        history.append(
            {
                "assessmentItemID": item,
                "testId": test,
                "KnowledgeTag": tag,
                "answerCode": int(rng.random() < 0.7),
                "Timestamp": ts,
            }
        )
    picks = rng.choice(len(items), size=n_candidates, replace=len(items) < n_candidates)
    candidates = [{"assessmentItemID": items[i][1], "testId": items[i][2], "KnowledgeTag": items[i][0]} for i in picks]
    return {"history": history, "candidates": candidates}


@dataclass
class Result:
    latencies: np.ndarray
    seconds: float
    failed: int

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


def load(url: str, body: dict, concurrency: int, n_requests: int) -> Result:
    payload = json.dumps(body)
    sessions = [requests.Session() for _ in range(concurrency)]

    def one(i: int) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            r = sessions[i % concurrency].post(
                url, data=payload, headers={"Content-Type": "application/json"}, timeout=60
            )
            ok = r.status_code == 200 and len(r.json().get("predictions", r.json().get("probabilities", []))) > 0
        except requests.RequestException:
            ok = False
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    seconds = time.perf_counter() - start
    for s in sessions:
        s.close()
    return Result(np.array([r[0] for r in results]), seconds, sum(not r[1] for r in results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="model bundle written by train.py")
    ap.add_argument("--history", type=int, default=100, help="answers in each request's history")
    ap.add_argument("--candidates", type=int, default=20, help="candidate items per request")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    body = make_body(args.model_dir, args.history, args.candidates, args.seed)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        env = {**os.environ, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
        pack = subprocess.run(
            [PY, "-m", "dkt", "pack", "--model-dir", str(args.model_dir), "--no-bento"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if pack.returncode != 0:
            print(pack.stderr, file=sys.stderr)
            return 2
        env["DKT_MODEL_TAG"] = pack.stdout.strip().splitlines()[-1].split(": ", 1)[1]
        bento_port, naive_port = free_port(), free_port()
        bento_cmd = [PY, "-m", "dkt", "serve", "--port", str(bento_port), "--host", "127.0.0.1"]
        naive_cmd = [PY, "-m", "gunicorn", "-w", "1", "--threads", "8", "-b", f"127.0.0.1:{naive_port}"]
        naive_cmd.append("bench.naive_server:create_app()")
        naive_env = {**env, "DKT_BUNDLE": str(args.model_dir.resolve())}
        targets = {
            "bentoml": f"http://127.0.0.1:{bento_port}/predict",
            "naive": f"http://127.0.0.1:{naive_port}/predict",
        }
        results: dict[tuple[str, int], Result] = {}
        with (
            server(bento_cmd, env, f"http://127.0.0.1:{bento_port}/readyz", Path(tmp) / "bento.log"),
            server(naive_cmd, naive_env, f"http://127.0.0.1:{naive_port}/", Path(tmp) / "naive.log"),
        ):
            for url in targets.values():
                load(url, body, 4, 20)  # warm-up: first calls pay for lazy imports and allocations
            for c in levels:
                for name, url in targets.items():  # interleaved so background load hits both alike
                    results[name, c] = load(url, body, c, args.requests)
                    r = results[name, c]
                    print(
                        f"{name:8s} c={c:<3d} p50 {1000 * np.percentile(r.latencies, 50):7.1f} ms  "
                        f"p99 {1000 * np.percentile(r.latencies, 99):7.1f} ms  "
                        f"{r.throughput:7.1f} req/s  failed {r.failed}",
                        flush=True,
                    )
    print(
        f"\nrequest: history {args.history} answers, {args.candidates} candidates; {args.requests} requests per level"
    )
    if 1 in levels:
        p99 = 1000 * np.percentile(results["bentoml", 1].latencies, 99)
        print(f"bentoml p99 at c=1: {p99:.1f} ms (target < 50 ms: {'met' if p99 < 50 else 'NOT met'})")
    for c in levels:
        ratio = results["bentoml", c].throughput / results["naive", c].throughput
        print(
            f"throughput ratio bentoml/naive at c={c}: {ratio:.2f}x  (failed: bentoml {results['bentoml', c].failed}, "
            f"naive {results['naive', c].failed})"
        )
    if 32 in levels:
        ok = (
            results["bentoml", 32].throughput >= 2 * results["naive", 32].throughput
            and results["bentoml", 32].failed == 0
        )
        print(f"target at c=32 (>= 2x naive, no failures): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
