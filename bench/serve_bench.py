"""Serving benchmark: the BentoML service against a naive per-request Flask baseline, side by side in one run.

    .venv/bin/python bench/serve_bench.py --model-dir artifacts/lstm

For lstm and for the default served model (the model `make up` serves is trained from DKT_TRAIN_CONFIG, by
default config/lstm.json, so the same run covers both): a bundle from `dkt train --config config/lstm.json ...
--output-dir artifacts/lstm` (any bundle folder works: --model-dir; another kind, e.g. config/saint.json, the same way).
Run it on a quiet machine: latencies need a free core for each server; under load compare the CPU-ms per request.

Both servers run on the same model (the service as `dkt serve` runs it, the baseline as one gunicorn process
with 8 threads, one model call per request). Every request is one student: a history of --history answers and
--candidates items to score. The load generator is asyncio (aiohttp, one connection per concurrent client, the
bodies serialised before the clock starts) in this process; its CPU share is printed beside each level.

What is measured, per level:
  naive / service        the same request again and again (no student_id): the whole history every time
  service cached         returning students (student_id): each client is one student whose next request
                         carries its one new answer with since=<the known_count the service gave back>, so
                         the service steps one answer from the cached state (concurrent students batched)
  service cached, whole  the same, each request carrying the student's whole history (no since)
  service cold           c=1 only: a new student_id each time (a full recompute, then cached)
  cached, long history   c=1 only: the same as "cached" with --long-history answers (flat cost: ratio)
Then the memory the cache holds per student (the service's own accounting in /metadata) for 10,000 students.

Targets (issue 15): at c=32, cached throughput >= 5x the baseline's with 0 failed; at c=1, p99 <= 10 ms for a
returning student and <= 30 ms for a cold one; the long history within 1.5x of the short one.
Last line: ``serve: c32_ratio=<x> p99_c1_ms=<y> failed=<n>`` (<y>: the returning student's p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402


@contextmanager
def server(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout: float = 240
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; log: {log}")
            try:
                if requests.get(ready_url, timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{ready_url} not ready after {timeout:.0f} s; log: {log}")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def pack(model_dir: Path, env: dict[str, str]) -> str:
    """Pack ``model_dir`` into ``env``'s BentoML store (`dkt pack --no-bento`) and return its model tag; a failed
    pack raises RuntimeError with the command's error output."""
    out = subprocess.run(
        [PY, "-m", "dkt", "pack", "--model-dir", str(model_dir), "--no-bento"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"error: dkt pack exited with {out.returncode}")
    return out.stdout.strip().splitlines()[-1].split(": ", 1)[1]


def catalog_items(model_dir: Path) -> list[tuple[int, str, str]]:
    """(KnowledgeTag, item, test) of every item in the bundle's catalog: the items the model knows. ValueError
    naming the folder when it holds no bundle's catalog or the catalog lists no item."""
    path = model_dir / "catalog.json"
    try:
        catalog = json.loads(path.read_text())
        items = [(int(tag), item, test) for tag, pairs in catalog.items() for item, test in pairs]
    except FileNotFoundError:
        raise ValueError(f"{model_dir}: no model bundle there (catalog.json missing)") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a model catalog ({exc})") from None
    if not items:
        raise ValueError(f"{path}: lists no items")
    return items


def answers(model_dir: Path, n: int, seed: int) -> list[dict]:
    """``n`` answers of one student over the bundle's own item catalog (items the model knows), 40 s apart."""
    items = catalog_items(model_dir)
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2024-01-01T00:00:00")
    out = []
    for i in range(n):
        tag, item, test = items[int(rng.integers(len(items)))]
        ts = str(t0 + np.timedelta64(40 * i, "s")).replace("T", " ")
        out.append(
            {
                "assessmentItemID": item,
                "testId": test,
                "KnowledgeTag": tag,
                "answerCode": int(rng.random() < 0.7),
                "Timestamp": ts,
            }
        )
    return out


def candidates(model_dir: Path, k: int, seed: int) -> list[dict]:
    items = catalog_items(model_dir)
    picks = np.random.default_rng(seed).choice(len(items), size=k, replace=len(items) < k)
    return [{"assessmentItemID": items[i][1], "testId": items[i][2], "KnowledgeTag": items[i][0]} for i in picks]


@dataclass
class Result:
    latencies: np.ndarray
    seconds: float
    failed: int
    client_cpu_s: float  # this process (the load generator) over the run
    server_cpu_s: float  # the server's processes over the run

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q))


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a server and every process under it (BentoML's workers, gunicorn's worker)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def _drive(url: str, streams: list[list[bytes]]) -> tuple[list[float], int, float]:
    """One client per stream, each sending its bodies in order, one at a time; (latencies, failed, seconds)."""
    latencies: list[float] = []
    failed = 0
    connector = aiohttp.TCPConnector(limit=len(streams), force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(bodies: list[bytes]) -> None:
            nonlocal failed
            for body in bodies:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        payload = await r.read()
                        ok = r.status == 200 and b'"probabilit' in payload
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - start)
                failed += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client(s) for s in streams))
        return latencies, failed, time.perf_counter() - start


def run_load(url: str, streams: list[list[bytes]], proc: psutil.Process) -> Result:
    cpu0, srv0 = resource.getrusage(resource.RUSAGE_SELF), tree_cpu(proc)
    latencies, failed, seconds = asyncio.run(_drive(url, streams))
    cpu1, srv1 = resource.getrusage(resource.RUSAGE_SELF), tree_cpu(proc)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return Result(np.array(latencies), seconds, failed, client_cpu, srv1 - srv0)


def report(name: str, c: int, r: Result) -> None:
    print(
        f"{name:24s} c={c:<3d} p50 {r.pct(50):7.1f} ms  p99 {r.pct(99):7.1f} ms  {r.throughput:7.1f} req/s  "
        f"failed {r.failed}  | load generator {100 * r.client_cpu_s / r.seconds:4.0f}% of a core, "
        f"server {100 * r.server_cpu_s / r.seconds:4.0f}%, {1000 * r.server_cpu_s / len(r.latencies):5.1f} CPU-ms"
        " per request",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="model bundle written by train.py")
    ap.add_argument("--history", type=int, default=100, help="answers in each request's history")
    ap.add_argument("--long-history", type=int, default=1000, help="the long history of the flat-cost check")
    ap.add_argument("--candidates", type=int, default=20, help="candidate items per request")
    ap.add_argument("--requests", type=int, default=320, help="requests per concurrency level and server")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated concurrency levels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    model_dir = args.model_dir.resolve()
    try:
        cands = candidates(model_dir, args.candidates, args.seed)
    except ValueError as exc:
        print(f"error: --model-dir {exc}", file=sys.stderr)
        return 2
    n_max = max(levels)
    per_client = {c: max(1, args.requests // c) for c in levels}
    # Each returning student has the answers of all its requests: request r carries the first history + r + 1.
    longest = args.history + max(per_client.values()) + 2
    students = [
        answers(model_dir, max(longest, args.long_history + per_client[min(levels)] + 2), args.seed + s)
        for s in range(n_max)
    ]

    def body(hist: list[dict], student_id: str | None = None, since: int | None = None) -> bytes:
        doc = {"history": hist, "candidates": cands, "at": "2031-01-01 00:00:00"}
        doc |= {"student_id": student_id} if student_id else {}
        return json.dumps(doc | ({"since": since} if since is not None else {})).encode()

    same = body(students[0][: args.history])

    def returning(c: int, n_hist: int, tag: str, whole: bool = False) -> tuple[list[list[bytes]], list[list[bytes]]]:
        """(warm-up: each student's first request, the measured requests: one more answer each time). A returning
        client sends only its new answer after the ``known_count`` the service last gave it (``since``); with
        ``whole``, its whole history every time (the same scores)."""
        warm = [[body(students[s][:n_hist], f"{tag}-{s}")] for s in range(c)]
        if whole:
            timed = [
                [body(students[s][: n_hist + 1 + r], f"{tag}-{s}") for r in range(per_client[c])] for s in range(c)
            ]
        else:
            timed = [
                [body(students[s][n_hist + r : n_hist + 1 + r], f"{tag}-{s}", n_hist + r) for r in range(per_client[c])]
                for s in range(c)
            ]
        return warm, timed

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        env = {**os.environ, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
        env["DKT_ACCESS_LOG"] = "0"  # a log line per request is the server's cost, not the model's
        try:
            env["DKT_MODEL_TAG"] = pack(model_dir, env)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        bento_port, naive_port = free_port(), free_port()
        bento_cmd = [PY, "-m", "dkt", "serve", "--port", str(bento_port), "--host", "127.0.0.1"]
        naive_cmd = [PY, "-m", "gunicorn", "-w", "1", "--threads", "8", "-b", f"127.0.0.1:{naive_port}"]
        naive_cmd.append("bench.naive_server:create_app()")
        naive_env = {**env, "DKT_BUNDLE": str(model_dir)}
        bento_url, naive_url = f"http://127.0.0.1:{bento_port}", f"http://127.0.0.1:{naive_port}"
        results: dict[tuple[str, int], Result] = {}
        print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        with (
            server(bento_cmd, env, f"{bento_url}/readyz", Path(tmp) / "bento.log") as bento_proc,
            server(naive_cmd, naive_env, f"{naive_url}/", Path(tmp) / "naive.log") as naive_proc,
        ):
            bento, naive = psutil.Process(bento_proc.pid), psutil.Process(naive_proc.pid)
            predict = {"naive": (f"{naive_url}/predict", naive), "service": (f"{bento_url}/predict", bento)}
            for url, proc in predict.values():  # warm-up: first calls pay for lazy imports and allocations
                run_load(url, [[same] * 5] * 4, proc)
            for c in levels:
                n = per_client[c]
                for name in ("naive", "service"):  # interleaved so background load hits both alike
                    url, proc = predict[name]
                    results[name, c] = run_load(url, [[same] * n for _ in range(c)], proc)
                    report(name, c, results[name, c])
                warm, timed = returning(c, args.history, f"c{c}")
                run_load(predict["service"][0], warm, bento)
                results["cached", c] = run_load(predict["service"][0], timed, bento)
                report("service cached", c, results["cached", c])
                warm, timed = returning(c, args.history, f"w{c}", whole=True)
                run_load(predict["service"][0], warm, bento)
                results["whole", c] = run_load(predict["service"][0], timed, bento)
                report("service cached, whole", c, results["whole", c])
                if c == 1:
                    cold = [[body(students[0][: args.history], f"cold-{r}") for r in range(n)]]
                    results["cold", 1] = run_load(predict["service"][0], cold, bento)
                    report("service cold", 1, results["cold", 1])
                    warm, timed = returning(1, args.long_history, "long")
                    run_load(predict["service"][0], warm, bento)
                    results["long", 1] = run_load(predict["service"][0], timed, bento)
                    report(f"service cached {args.long_history}", 1, results["long", 1])
            cache = requests.get(f"{bento_url}/metadata", timeout=30).json().get("state_cache", {})
        print(f"load average {os.getloadavg()[0]:.1f} at the end")

    print(
        f"\nrequest: history {args.history} answers, {args.candidates} candidates; {args.requests} requests per level"
    )
    failed = sum(r.failed for r in results.values())
    for c in levels:
        ratio = results["service", c].throughput / results["naive", c].throughput
        cached = results["cached", c].throughput / results["naive", c].throughput
        whole = results["whole", c].throughput / results["naive", c].throughput
        print(f"c={c}: service/naive {ratio:.2f}x, service cached/naive {cached:.2f}x (whole history {whole:.2f}x)")
    if 1 in levels:
        warm, cold = results["cached", 1].pct(99), results["cold", 1].pct(99)
        flat = results["long", 1].pct(50) / results["cached", 1].pct(50)
        print(f"c=1 p99: returning {warm:.1f} ms (target <= 10: {'met' if warm <= 10 else 'NOT met'}), "
              f"cold {cold:.1f} ms (target <= 30: {'met' if cold <= 30 else 'NOT met'})")  # fmt: skip
        print(f"cached p50, {args.long_history} vs {args.history} answers: {flat:.2f}x "
              f"(target <= 1.5x: {'met' if flat <= 1.5 else 'NOT met'})")  # fmt: skip
    if cache.get("entries"):
        per = cache["bytes"] / cache["entries"]
        print(
            f"state cache: {cache['entries']} students, {cache['bytes'] / 1e6:.2f} MB ({per / 1e3:.1f} kB each): "
            f"{per * 10_000 / 1e6:.1f} MB per 10,000 students; hits {cache['hits']}, misses {cache['misses']}"
        )
    top = max(levels)
    c_ratio = results["cached", top].throughput / results["naive", top].throughput
    p99 = results["cached", 1].pct(99) if 1 in levels else float("nan")
    print(f"serve: c{top}_ratio={c_ratio:.2f} p99_c1_ms={p99:.1f} failed={failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
