"""Where a training step's time goes on CUDA: our lstm (train.py's path) and the reference DKT, under torch.profiler.

    bash bench/gpu_run.sh --profile                    # on a lent GPU machine (docs/gpu.md)
    .venv/bin/python bench/cuda_profile_bench.py --device cpu --max-students 100   # here: proves the script runs

Each model trains ``--epochs`` epochs (default 2) on the same data and split as bench/train_speed_bench.py, once
without the profiler (its seconds) and once under it. From the profiled run it prints, per model: the kernels the
device ran and their summed time (the device's busy time, overlaps aside), the host's time in the launch calls and in
the calls that wait for the device (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, blocking copies), and the
ops and kernels that cost the most. A run whose kernels sum to much less than its seconds is set by the host (Python,
dispatch, launches) or by its waits; one whose kernels sum to about its seconds is set by the device. The profiler adds
host time to every op, so its run's seconds are longer than the plain run's: compare the kernels' sum with the plain
seconds. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench.train_speed_bench import add_data_arguments, also_variants, config_and_data, reference  # noqa: E402
from dkt.config import ConfigError  # noqa: E402
from dkt.data.schema import DataValidationError  # noqa: E402
from dkt.experiment import run  # noqa: E402

WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def summarise(prof: profile, top: int) -> dict[str, Any]:
    """Kernel count and time on the device, host time in launches and in waits, the costliest ops and kernels."""
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    waits = [e for e in host if e.name.startswith(WAITS) and "Async" not in e.name]
    launches = [e for e in host if e.name in LAUNCHES]
    by_kernel: dict[str, list[float]] = {}
    for k in kernels:
        by_kernel.setdefault(k.name[:70], []).append(k.device_time_total)
    ops = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    return {
        "kernels": len(kernels),
        "kernel_s": sum(k.device_time_total for k in kernels) / 1e6,
        "launch_calls": len(launches),
        "launch_s": sum(e.cpu_time_total for e in launches) / 1e6,
        "wait_calls": len(waits),
        "wait_s": sum(e.cpu_time_total for e in waits) / 1e6,
        "top_kernels": sorted(
            ((name, len(ts), sum(ts) / 1e6) for name, ts in by_kernel.items()), key=lambda r: r[2], reverse=True
        )[:top],
        "top_host_ops": [(a.key[:70], a.count, a.self_cpu_time_total / 1e6) for a in ops[:top]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=2, help="epochs each model trains (default 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--top", type=int, default=12, help="ops and kernels listed per model (default 12)")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="'SECTION.KEY=JSON ...'",
        help="also profile ours with these keys changed (after --set); one run per --also (repeatable)",
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or args.top < 1:
        print("error: --epochs and --top must be at least 1", file=sys.stderr)
        return 2
    try:
        cfg, data = config_and_data(args)
        variants = {f"{cfg.model}, {c}": v for c, v in also_variants(cfg, args.also).items()}
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    importlib.import_module("torch._dynamo")  # the first optimizer imports it: paid here, not by the first run
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])

    def ours(c: Any) -> float:
        with tempfile.TemporaryDirectory() as out:
            return float(run(c, data, out, epochs=args.epochs, device=args.device, progress=False)["train_seconds"])

    runs = {"reference DKT (bench/min_dkt.py)": lambda: reference(data, args.epochs, args.device)["seconds"]}
    runs |= {name: (lambda c=c: ours(c)) for name, c in variants.items()}
    runs[f"{cfg.model} ({args.config.name})"] = lambda: ours(cfg)
    try:
        profile_runs(runs, activities, args.epochs, args.top, args.device)
    except KeyboardInterrupt:  # gpu_run.sh's time limit sends SIGINT: what was printed stands
        print("interrupted: the models above were profiled, the rest were not", file=sys.stderr)
        return 130
    return 0


def profile_runs(
    runs: dict[str, Callable[[], float]], activities: list[ProfilerActivity], epochs: int, top: int, device: str
) -> None:
    """Each run once plain and once profiled, its summary printed as soon as it is known."""
    for name, fn in runs.items():
        plain = fn()
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            fn()
            profiled = time.perf_counter() - t0
        if device == "cuda":
            torch.cuda.synchronize()
        r = summarise(prof, top)
        print(f"\n## {name}: {epochs} epochs, {plain:.2f} s (profiled {profiled:.2f} s)", flush=True)
        print(
            f"device: {r['kernels']:,} kernels, {r['kernel_s']:.2f} s summed ({r['kernel_s'] / plain:.0%} of the plain "
            f"run); host: {r['launch_calls']:,} launch calls {r['launch_s']:.2f} s, {r['wait_calls']:,} waits "
            f"{r['wait_s']:.2f} s"
        )
        print("| kernel | count | s |\n|---|---|---|")
        for kname, count, s in r["top_kernels"]:
            print(f"| {kname} | {count:,} | {s:.3f} |")
        print("| host op (self time) | count | s |\n|---|---|---|")
        for oname, count, s in r["top_host_ops"]:
            print(f"| {oname} | {count:,} | {s:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
