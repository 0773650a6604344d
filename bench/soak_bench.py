"""Soak benchmark: the inference service under constant load for a long time; does its memory settle?

    .venv/bin/python bench/soak_bench.py --model-dir models/local/lstm [--minutes 30] [--concurrency 32]

Packs the bundle into a fresh BentoML store, starts the real service (`dkt serve`, one worker, as deployed) and
keeps ``--concurrency`` simulated students answering without pause for ``--minutes``: each student's history
grows by one answer per request (a realistic, changing body; it starts again after ``--max-history``; the seats
start at staggered lengths, so the mix of body sizes is steady from the start), with 20 candidates. Every
``--sample-s`` seconds it records the RSS of the server's whole process tree (BentoML's supervisor and its
worker). Each minute prints requests, errors, p50/p99 latency and RSS. At the end: RSS at the end of the warm-up
(``--warmup-minutes``, default 5) and at the end, the growth after warm-up in percent (target: under 5 %), and
errors (target: 0). Last line: ``soak: minutes=<m> rss_growth_pct=<g> errors=<n> requests=<r>``.

The load generator is asyncio (aiohttp, one process), so it costs little CPU beside the server; its own CPU share
is printed. Timings are wall-clock on whatever machine runs it: say how loaded it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from serve_bench import PY, catalog_items, free_port, pack, server  # this folder: python bench/soak_bench.py


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    rss_mb: list[float] = field(default_factory=list)


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB (shared pages count once per process: a trend, not a sum
    of unique memory)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


class Student:
    """One simulated student: a growing history of answers to the bundle's own items."""

    def __init__(self, items: list[tuple[int, str, str]], seed: int, max_history: int):
        self.rng = random.Random(seed)
        self.items = items
        self.max_history = max_history
        self.history: list[dict] = []
        self.t = 1_700_000_000 + seed * 86_400
        # Seats start at staggered history lengths, so the mix of body sizes is the same from the first minute
        # (all starting empty, bodies would grow for the first max_history requests: growth that is no leak).
        for _ in range(self.rng.randrange(max_history)):
            self.body(0)

    def body(self, n_candidates: int) -> dict:
        if len(self.history) >= self.max_history:
            self.history = []  # a new student takes the seat
        tag, item, test = self.rng.choice(self.items)
        self.t += self.rng.randint(20, 90)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t))
        self.history.append(
            {
                "assessmentItemID": item,
                "testId": test,
                "KnowledgeTag": tag,
                "answerCode": int(self.rng.random() < 0.7),
                "Timestamp": stamp,
            }
        )
        picks = self.rng.sample(self.items, min(n_candidates, len(self.items)))
        return {
            "history": self.history,
            "candidates": [{"assessmentItemID": i, "testId": t, "KnowledgeTag": g} for g, i, t in picks],
        }


async def soak(url: str, args: argparse.Namespace, pid: int) -> list[Minute]:
    items = catalog_items(args.model_dir)
    minutes = [Minute() for _ in range(args.minutes)]
    start = time.monotonic()
    end = start + 60 * args.minutes

    def minute_now() -> Minute | None:
        i = int((time.monotonic() - start) // 60)
        return minutes[i] if i < len(minutes) else None

    async def student(n: int, session: aiohttp.ClientSession) -> None:
        s = Student(items, n, args.max_history)
        while time.monotonic() < end:
            body = s.body(args.candidates)
            t0 = time.perf_counter()
            ok = False
            try:
                async with session.post(url, json=body) as resp:
                    data = await resp.json(content_type=None)
                    ok = resp.status == 200 and len(data.get("predictions", [])) == args.candidates
            except (TimeoutError, aiohttp.ClientError, ValueError):
                ok = False
            m = minute_now()
            if m is None:
                break
            if ok:
                m.latencies.append(time.perf_counter() - t0)
            else:
                m.errors += 1

    async def sampler() -> None:
        while time.monotonic() < end:
            m = minute_now()
            if m is not None:
                m.rss_mb.append(tree_rss_mb(pid))
            await asyncio.sleep(args.sample_s)

    async def reporter() -> None:
        shown = 0
        while shown < args.minutes:
            await asyncio.sleep(max(0.0, start + 60 * (shown + 1) - time.monotonic()) + 0.5)
            print(line(shown + 1, minutes[shown]), flush=True)
            shown += 1

    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(sampler(), reporter(), *(student(n, session) for n in range(args.concurrency)))
    return minutes


def line(n: int, m: Minute) -> str:
    lat = np.asarray(m.latencies) * 1000
    p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (float("nan"),) * 2
    rss = m.rss_mb[-1] if m.rss_mb else float("nan")
    return (
        f"minute {n:3d}: {len(lat):6d} ok {m.errors:4d} errors  {len(lat) / 60:6.1f} req/s  "
        f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  RSS {rss:7.1f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="a model bundle written by `dkt train`")
    ap.add_argument("--minutes", type=int, default=30, help="how long the load runs")
    ap.add_argument("--warmup-minutes", type=int, default=5, help="RSS growth is measured from the end of these")
    ap.add_argument("--concurrency", type=int, default=32, help="simulated students answering at once")
    ap.add_argument("--candidates", type=int, default=20, help="candidate items per request")
    ap.add_argument("--max-history", type=int, default=200, help="a student's answers before a new one starts")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="a request taking longer counts as an error")
    ap.add_argument("--out", type=Path, help="also write the per-minute figures here (JSON)")
    args = ap.parse_args(argv)
    try:
        catalog_items(args.model_dir)
    except ValueError as exc:
        print(f"error: --model-dir {exc}", file=sys.stderr)
        return 2
    if not 0 < args.warmup_minutes < args.minutes:
        print("error: --warmup-minutes must be at least 1 and less than --minutes", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="soak-bench-") as tmp:
        env = {**os.environ, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
        port = free_port()
        cmd = [PY, "-m", "dkt", "serve", "--port", str(port), "--host", "127.0.0.1"]
        base = f"http://127.0.0.1:{port}"
        try:
            env["DKT_MODEL_TAG"] = pack(args.model_dir, env)
            with server(cmd, env, base + "/readyz", Path(tmp) / "service.log", timeout=300) as proc:
                rss0 = tree_rss_mb(proc.pid)
                print(f"service ready at {base}, RSS {rss0:.1f} MB; {args.concurrency} students for {args.minutes} min")
                me = psutil.Process()
                cpu0, t0 = me.cpu_times(), time.monotonic()
                minutes = asyncio.run(soak(base + "/predict", args, proc.pid))
                cpu1, wall = me.cpu_times(), time.monotonic() - t0
        except RuntimeError as exc:  # the pack failed, or the service never got ready (its log is named)
            print(exc if str(exc).startswith("error:") else f"error: {exc}", file=sys.stderr)
            return 2

    warm = minutes[args.warmup_minutes - 1].rss_mb[-1]
    final = minutes[-1].rss_mb[-1]
    growth = 100.0 * (final - warm) / warm
    errors = sum(m.errors for m in minutes)
    total = sum(len(m.latencies) for m in minutes) + errors
    after = [x for m in minutes[args.warmup_minutes :] for x in m.rss_mb]
    gen_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    print(
        f"RSS: start {rss0:.1f} MB, end of warm-up (minute {args.warmup_minutes}) {warm:.1f} MB, "
        f"max after warm-up {max(after):.1f} MB, end {final:.1f} MB: growth after warm-up {growth:+.2f} %"
    )
    print(f"requests {total}, errors {errors}; load generator CPU {100 * gen_cpu:.0f} % of one core")
    if args.out:
        doc = [
            {"minute": i + 1, "ok": len(m.latencies), "errors": m.errors, "rss_mb": m.rss_mb,
             "p50_ms": float(np.percentile(m.latencies, 50) * 1000) if m.latencies else None,
             "p99_ms": float(np.percentile(m.latencies, 99) * 1000) if m.latencies else None}
            for i, m in enumerate(minutes)
        ]  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"soak: minutes={args.minutes} rss_growth_pct={growth:.2f} errors={errors} requests={total}")
    return 0 if errors == 0 and growth < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
