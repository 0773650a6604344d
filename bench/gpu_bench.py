"""CUDA training and serving of every sequence model on ASSISTments 2009, beside the same machine's CPU.

    bash bench/gpu_run.sh                         # on the lent GPU machine (docs/gpu.md)
    .venv/bin/python bench/gpu_bench.py --quick   # here, on CPU, tiny settings: proves the script runs

For each kind (lstm, lstmattn, bert, saint, dkvmn; config/<kind>.json unchanged except where --quick
shrinks it) the project's own ``dkt.experiment.run`` trains on the accelerator for --epochs epochs and
evaluates on the test file (the AUC is the one train.py reports). Then one epoch of the same run on
the CPU gives the CPU's seconds per epoch (its test evaluation is cut to a few users: only its epoch
time is used). Seconds per epoch are read from the bundle's history.json: training plus validation
scoring, as the training loop times them.

Serving: the trained bundle is loaded with ``dkt.predictor.load_predictor`` on each device, and
``predict_candidates_batch`` (what the service calls for each micro-batch) scores batches of test
students' histories (--history answers each, --candidates catalog items each). Latency is per call,
so every request in a batch waits that long; throughput is students per second. The CPU side runs
with --serve-cpu-threads torch threads (default 1, the service's DKT_TORCH_THREADS default).

Prints two tables; writes the figures as JSON to $OUT/gpu_bench.json when OUT is set (or --json),
rewritten after every step, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dkt.experiment import load_run_data, run  # noqa: E402
from dkt.predictor import load_predictor  # noqa: E402
from dkt.settings import DevSettings, load_or_exit  # noqa: E402

KINDS = ("lstm", "lstmattn", "bert", "saint", "dkvmn")
DATA_DIRS = (ROOT / ".gpu-data", ROOT.parent / "shared" / "data" / "assist2009")
HISTORY_COLUMNS = ["userID", "assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag"]
SEED = 42


class BenchError(Exception):
    """Bad input or a machine that cannot run the bench; main prints it as one line."""


@dataclasses.dataclass
class Settings:
    epochs: int
    batch_sizes: list[int]  # serving, on the accelerator
    cpu_batch_sizes: list[int]  # serving on one CPU thread: a batch of 256 would take seconds a call
    history: int
    candidates: int
    serve_seconds: float  # each (kind, device, batch size) is timed for at least this long and min_calls calls,
    min_calls: int
    cell_cap_s: float  # but stops after this long once it has 3 calls (slow CPU cells)
    cpu_test_users: int  # the CPU run's test evaluation is not reported: keep it tiny
    cpu_deadline_s: float  # no CPU epoch starts after this many seconds of the run: the GPU figures come first
    train_users: int | None = None  # --quick: first N users of each file, shorter windows
    test_users: int | None = None
    max_seq_len: int | None = None


FULL = Settings(epochs=5, batch_sizes=[1, 8, 64, 256], cpu_batch_sizes=[1, 8, 64], history=100, candidates=20,
                serve_seconds=1.0, min_calls=10, cell_cap_s=3.0, cpu_test_users=20, cpu_deadline_s=330)  # fmt: skip
QUICK = Settings(epochs=1, batch_sizes=[1, 8], cpu_batch_sizes=[1, 8], history=10, candidates=4, serve_seconds=0.0,
                 min_calls=3, cell_cap_s=0.0, cpu_test_users=5, cpu_deadline_s=600, train_users=60, test_users=20,
                 max_seq_len=30)  # fmt: skip


def subset_kt3(src: Path, dst: Path, users: int) -> None:
    """The first ``users`` students of a 3-line KT file (length / skills / answers)."""
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(lines[: 3 * users]) + "\n")


def write_config(kind: str, folder: Path, s: Settings) -> Path:
    """config/<kind>.json as shipped; --quick shortens the windows (positions stay within max_positions)."""
    doc = json.loads((ROOT / "config" / f"{kind}.json").read_text())
    if s.max_seq_len is not None:
        doc.setdefault("train", {})["max_seq_len"] = s.max_seq_len
    path = folder / f"{kind}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def epoch_seconds(bundle: Path) -> list[float]:
    return [float(h["seconds"]) for h in json.loads((bundle / "history.json").read_text())]


def make_jobs(test: pd.DataFrame, catalog: pd.DataFrame, n: int, history: int, k: int) -> list[tuple]:
    """``n`` requests as the service builds them: one test student's last ``history`` answers and ``k`` items each."""
    rng = np.random.default_rng(SEED)
    users = test.groupby("userID", sort=False)
    frames = [g.tail(history).loc[:, HISTORY_COLUMNS].reset_index(drop=True) for _, g in users]
    frames = [f for f in frames if len(f)]
    jobs = []
    for i in range(n):
        hist = frames[i % len(frames)]
        cands = catalog.iloc[rng.choice(len(catalog), size=k, replace=len(catalog) < k)].reset_index(drop=True)
        # Shown right after the last answer: a fixed time keeps runs comparable (the service defaults to now).
        jobs.append((hist, cands, hist["Timestamp"].iloc[-1] + pd.Timedelta(seconds=60)))
    return jobs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_serving(predictor: Any, jobs: list[tuple], batch: int, s: Settings, device: str) -> dict[str, Any]:
    """P50/P99 of one ``predict_candidates_batch`` call on ``batch`` students, and students per second."""
    chunks = [jobs[i : i + batch] for i in range(0, len(jobs) - batch + 1, batch)] or [jobs[:batch]]
    for c in chunks[: 2 if device == "cuda" else 1]:  # warm-up: CUDA kernels, allocator, first-call imports
        predictor.predict_candidates_batch(c)
    sync(device)
    lat: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(lat) >= s.min_calls and elapsed >= s.serve_seconds) or (len(lat) >= 3 and elapsed >= s.cell_cap_s):
            break
        t = time.perf_counter()
        out = predictor.predict_candidates_batch(chunks[len(lat) % len(chunks)])
        sync(device)
        lat.append(time.perf_counter() - t)
        if len(out) != len(chunks[0]) or not all(np.isfinite(p).all() and len(p) for p in out):
            raise BenchError(f"serving on {device} returned {len(out)} results, some empty or not finite")
    wall = time.perf_counter() - start
    ms = np.array(lat) * 1e3
    return {
        "calls": len(lat),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "students_per_s": round(batch * len(lat) / wall, 1),
    }


class Report:
    """The figures so far; written to the JSON file after every step."""

    def __init__(self, path: Path | None, header: dict[str, Any]):
        self.path = path
        self.doc: dict[str, Any] = {"machine": header, "training": {}, "serving": [], "errors": []}

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.doc, indent=2) + "\n")


def machine(accel: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "accelerator": accel,
        "card": torch.cuda.get_device_name(0) if accel == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "transformers": version("transformers"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if accel == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu_memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}
    return info


def train_kind(kind: str, cfg: Path, data: Any, work: Path, accel: str, s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = run(cfg, data, work / kind / accel, epochs=s.epochs, device=accel, seed=SEED, progress=False)
    wall = time.perf_counter() - t0
    secs = epoch_seconds(work / kind / accel)
    row: dict[str, Any] = {
        "kind": kind,
        "n_params": m["n_params"],
        "epochs": m["epochs_run"],
        "best_epoch": m["best_epoch"],
        "accel_s_epoch_first": round(secs[0], 2),
        # Later epochs: the first pays for CUDA start-up and kernel selection.
        "accel_s_epoch": round(float(np.median(secs[1:] if len(secs) > 1 else secs)), 2),
        "accel_run_wall_s": round(wall, 1),
        "test_auc": m["test_auc"],
        "test_auc_last": m["test_auc_last"],
        "test_acc": m["test_acc"],
    }
    return row


def cpu_epoch(kind: str, cfg: Path, cpu_data: Any, work: Path) -> float:
    run(cfg, cpu_data, work / kind / "cpu", epochs=1, device="cpu", seed=SEED, progress=False)
    return epoch_seconds(work / kind / "cpu")[0]


def serve_kind(kind: str, bundle: Path, test: pd.DataFrame, devices: list[str], s: Settings, threads: int) -> list:
    rows = []
    default_threads = torch.get_num_threads()
    for device in devices:
        predictor = load_predictor(bundle, device=device)
        n_jobs = 2 * max(s.batch_sizes + s.cpu_batch_sizes)
        jobs = make_jobs(test, predictor.catalog_candidates(), n_jobs, s.history, s.candidates)
        if device == "cpu":
            torch.set_num_threads(threads)
        try:
            for b in s.batch_sizes if device != "cpu" else s.cpu_batch_sizes:
                r = {"kind": kind, "device": device, "batch": b} | time_serving(predictor, jobs, b, s, device)
                print(json.dumps(r), file=sys.stderr, flush=True)
                rows.append(r)
        finally:
            torch.set_num_threads(default_threads)
    return rows


def tables(doc: dict[str, Any], accel: str) -> str:
    m = doc["machine"]
    lines = [
        f"machine: {m['card'] or 'no GPU'} | torch {m['torch']} (CUDA {m['cuda']}) | python {m['python']} | "
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads for CPU training",
        "",
        f"| kind | params | {accel} s/epoch (1st) | {accel} s/epoch | cpu s/epoch | cpu/{accel} | epochs (best) "
        "| test AUC | AUC last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["training"].values():
        gpu, cpu = r.get("accel_s_epoch"), r.get("cpu_s_epoch")
        ratio = f"{cpu / gpu:.1f}x" if gpu and cpu else "-"
        lines.append(
            f"| {r['kind']} | {r['n_params']:,} | {r['accel_s_epoch_first']:.2f} | {gpu:.2f} | "
            f"{'-' if cpu is None else f'{cpu:.1f}'} | {ratio} | {r['epochs']} ({r['best_epoch']}) | "
            f"{r['test_auc']:.4f} | {r['test_auc_last']:.4f} |"
        )
    serve = {(r["kind"], r["device"], r["batch"]): r for r in doc["serving"]}
    lines += [
        "",
        f"serving: predict_candidates_batch, {doc['settings']['history']} answers + "
        f"{doc['settings']['candidates']} candidates per student; cpu with {doc['settings']['serve_cpu_threads']} "
        "torch thread(s); latency per call (batch)",
        "",
        f"| kind | batch | {accel} p50 ms | {accel} p99 ms | {accel} students/s | cpu p50 ms | cpu p99 ms "
        f"| cpu students/s | {accel}/cpu throughput |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, b in dict.fromkeys((k, b) for k, _, b in serve):
        g, c = serve.get((kind, accel, b), {}), serve.get((kind, "cpu", b), {})
        cells = [f"{x[key]:.2f}" if x else "-" for x in (g, c) for key in ("p50_ms", "p99_ms")]
        speed = f"{g['students_per_s'] / c['students_per_s']:.1f}x" if g and c else "-"
        lines.append(
            f"| {kind} | {b} | {cells[0]} | {cells[1]} | {g.get('students_per_s', '-')} | {cells[2]} | {cells[3]} "
            f"| {c.get('students_per_s', '-')} | {speed} |"
        )
    for e in doc["errors"]:
        lines.append(f"error in {e}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings; runs on CPU when there is no GPU")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--epochs", type=int, help="accelerator epochs per kind (default 5; --quick 1)")
    p.add_argument("--no-cpu-epoch", action="store_true", help="skip the CPU training epoch")
    p.add_argument("--batch-sizes", help="accelerator serving batch sizes (default 1,8,64,256; --quick 1,8)")
    p.add_argument("--cpu-batch-sizes", help="CPU serving batch sizes (default 1,8,64; --quick 1,8)")
    p.add_argument("--serve-cpu-threads", type=int, default=1, help="torch threads for CPU serving (default 1)")
    p.add_argument("--data", type=Path, help="folder with train.csv and test.csv (default .gpu-data/, else shared/)")
    p.add_argument("--work", type=Path, help="where bundles go (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="JSON output (default $OUT/gpu_bench.json when OUT is set)")
    return p.parse_args(argv)


def int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(b) for b in text.split(",")]
    except ValueError:
        raise BenchError(f"{option} {text!r}: comma-separated integers expected") from None
    if min(values) < 1:
        raise BenchError(f"{option} {text!r}: sizes must be at least 1")
    return sorted(set(values))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = dataclasses.replace(QUICK if args.quick else FULL)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise BenchError(f"--kinds {args.kinds!r}: choose from {','.join(KINDS)}")
    if args.epochs is not None:
        if args.epochs < 1:
            raise BenchError(f"--epochs {args.epochs}: must be at least 1")
        s.epochs = args.epochs
    if args.batch_sizes:
        s.batch_sizes = int_list("--batch-sizes", args.batch_sizes)
    if args.cpu_batch_sizes:
        s.cpu_batch_sizes = int_list("--cpu-batch-sizes", args.cpu_batch_sizes)
    if args.serve_cpu_threads < 1:
        raise BenchError(f"--serve-cpu-threads {args.serve_cpu_threads}: must be at least 1")
    accel = "cuda" if torch.cuda.is_available() else "cpu"
    if accel == "cpu" and not args.quick:
        raise BenchError("torch sees no CUDA device; --quick checks the script on CPU")
    folder = args.data or next((d for d in DATA_DIRS if (d / "train.csv").is_file()), DATA_DIRS[-1])
    for name in ("train.csv", "test.csv"):
        if not (folder / name).is_file():
            raise BenchError(f"{folder / name}: not found (copy shared/data/assist2009 there, see docs/gpu.md)")
    out_dir = load_or_exit(DevSettings).out_dir
    out_json = args.json or (out_dir / "gpu_bench.json" if out_dir else None)

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = args.work or Path(tmp)
        (work / "config").mkdir(parents=True, exist_ok=True)
        train_file, test_file = folder / "train.csv", folder / "test.csv"
        if s.train_users:
            (work / "data").mkdir(exist_ok=True)
            train_file, test_file = work / "data" / "train.csv", work / "data" / "test.csv"
            subset_kt3(folder / "train.csv", train_file, s.train_users)
            subset_kt3(folder / "test.csv", test_file, s.test_users or s.train_users)
        report = Report(out_json, machine(accel))
        report.doc["settings"] = dataclasses.asdict(s) | {
            "kinds": kinds,
            "data": str(folder),
            "serve_cpu_threads": args.serve_cpu_threads,
            "quick": args.quick,
        }
        t_start = time.perf_counter()
        try:
            data = None
            for kind in kinds:
                cfg = write_config(kind, work / "config", s)
                if data is None:  # every shipped config holds out the same share of users
                    valid_ratio = json.loads(cfg.read_text()).get("train", {}).get("valid_ratio", 0.1)
                    data = load_run_data(train_file, test_file, None, "kt3", valid_ratio, seed=SEED)
                    first = data.test["userID"].drop_duplicates().iloc[: s.cpu_test_users]
                    cpu_data = dataclasses.replace(data, test=data.test[data.test["userID"].isin(first)])
                try:
                    row = train_kind(kind, cfg, data, work, accel, s)
                    report.doc["training"][kind] = row
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    report.save()
                    devices = list(dict.fromkeys([accel, "cpu"]))
                    rows = serve_kind(kind, work / kind / accel, data.test, devices, s, args.serve_cpu_threads)
                    report.doc["serving"] += rows
                except Exception as exc:  # one kind's failure must not lose the others' figures
                    report.doc["errors"].append(f"{kind}: {type(exc).__name__}: {exc}")
                    print(f"error: {kind}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                report.save()
            # CPU epochs last: the slowest part, and the GPU figures are the point of a run on a lent GPU.
            if not args.no_cpu_epoch:
                for kind in [k for k in kinds if k in report.doc["training"]]:
                    if time.perf_counter() - t_start > s.cpu_deadline_s:
                        report.doc["errors"].append(f"{kind} cpu epoch: not started, past {s.cpu_deadline_s:.0f} s")
                        continue
                    try:
                        secs = cpu_epoch(kind, work / "config" / f"{kind}.json", cpu_data, work)
                        report.doc["training"][kind]["cpu_s_epoch"] = round(secs, 2)
                        print(json.dumps({"kind": kind, "cpu_s_epoch": round(secs, 2)}), file=sys.stderr, flush=True)
                    except Exception as exc:
                        report.doc["errors"].append(f"{kind} cpu epoch: {type(exc).__name__}: {exc}")
                    report.save()
        except KeyboardInterrupt:  # gpu_run.sh's timeout: keep and print what was measured
            report.doc["errors"].append("run: interrupted by its time limit")
        report.doc["wall_s"] = round(time.perf_counter() - t_start, 1)
        report.save()
        text = tables(report.doc, accel)
        print(text)
        if out_json is not None:
            out_json.with_suffix(".md").write_text(text + "\n")
    return 1 if report.doc["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
