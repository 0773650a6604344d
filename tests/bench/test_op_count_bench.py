"""bench/op_count_bench.py: kernel ops and host reads per training step, and the loop's own promise that it reads
the host once per epoch, not once per step (on a GPU each read waits for every kernel queued)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import op_count_bench
from dkt.config import load_config, parse_config
from dkt.data.io import load_run_files
from dkt.experiment import split_run_files

ROOT = Path(__file__).resolve().parents[2]


def test_views_are_not_kernels_and_a_value_read_or_boolean_index_is_a_host_read() -> None:
    x = torch.arange(6.0)
    with op_count_bench.OpCounter() as counter:
        y = x.view(2, 3).t()  # views: no kernel
        z = y + 1  # one kernel
        z.add_(1)  # in place: one kernel
        assert not counter.reads
        _ = z.sum().item()  # a kernel and a read
        _ = z[z > 3]  # a comparison kernel, then an index that must read the mask to size its result
    assert counter.kernels["aten.add"] == 1 and counter.kernels["aten.add_"] == 1
    assert not any(op in counter.kernels for op in ("aten.view", "aten.t", "aten.transpose"))
    assert counter.reads == {"aten._local_scalar_dense": 1, "aten.index": 1}, counter.reads


def small_run(pair: tuple[Path, Path], batch_size: int, max_len: int = 20, **train: object) -> tuple[object, object]:
    doc = load_config(ROOT / "config" / "lstm.json").model_dump(mode="json", exclude_defaults=True)
    window = {"max_seq_len": max_len, "window_stride": max_len}
    doc["train"] |= {"batch_size": batch_size, "batch_tokens": None} | window | train
    files = load_run_files(*pair, None, "kt3")
    cfg = parse_config(doc, "test")
    return cfg, split_run_files(files, cfg.train.valid_ratio, seed=42)


def test_the_training_loop_reads_the_host_per_epoch_not_per_step(pair: tuple[Path, Path]) -> None:
    """Four times the steps, the same reads: nothing in a step waits for the device. The reference, which indexes
    its predictions by a boolean mask every step, reads at least once a step: the counter sees such reads."""
    runs = {b: op_count_bench.count_both(*small_run(pair, b), epochs=1) for b in (4, 16)}
    ours = {b: r["lstm (train.py's loop)"] for b, r in runs.items()}
    assert ours[4]["steps"] >= 3 * ours[16]["steps"] > 0
    assert ours[4]["host_reads"] == ours[16]["host_reads"] < ours[16]["steps"]
    assert ours[4]["kernels_per_step"] > 10 and ours[4]["top"][0][1] > 0
    ref = runs[4]["reference DKT (bench/min_dkt.py)"]
    assert ref["steps"] > 0 and ref["host_reads"] >= ref["steps"]


def test_the_recurrence_is_counted_per_training_step_and_token_batches_shorten_it(pair: tuple[Path, Path]) -> None:
    """An LSTM's time steps in training forwards: one batch's width each step (the windows are at most 100 long here,
    a user's last one shorter), none for the validation pass. Windows of like length cut by a budget of positions
    run fewer of them."""
    rand = op_count_bench.count_both(*small_run(pair, 8, 100, bucket_batches=False), epochs=1)
    tokens = op_count_bench.count_both(*small_run(pair, 8, 100, bucket_batches=True, batch_tokens=800), epochs=1)
    ours, ref = rand["lstm (train.py's loop)"], rand["reference DKT (bench/min_dkt.py)"]
    assert ours["steps"] <= ours["recurrence"] <= 100 * ours["steps"], ours
    assert ref["steps"] <= ref["recurrence"] <= 200 * ref["steps"], ref
    short = tokens["lstm (train.py's loop)"]
    assert 0 < short["recurrence"] < ours["recurrence"], (short["recurrence"], ours["recurrence"])
    # Every step computes at least its real answers; random batches compute padding too, token batches less of it.
    assert short["positions_per_epoch"] < ours["positions_per_epoch"] <= 100 * 8 * ours["steps"]


def test_main_prints_one_table_and_the_ratio(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert op_count_bench.main(["--data", *map(str, pair), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model | epochs | steps | kernel ops / step") and len(out) == 6, out
    rows = [line.split(" | ") for line in out[2:4]]
    assert all(int(r[2]) > 0 and float(r[3]) > 0 and r[6].count(",") == 2 for r in rows), rows
    ratio = float(re.search(r"reference: (\S+)x", out[4]).group(1))  # type: ignore[union-attr]
    assert ratio == pytest.approx(float(rows[1][3]) / float(rows[0][3]), abs=0.02)
    steps = [float(r[7].replace(",", "")) for r in rows]
    assert all(float(r[8].strip(" |").replace(",", "")) >= s for r, s in zip(rows, steps, strict=True))
    recurrence = float(re.search(r"reference: (\S+)x", out[5]).group(1))  # type: ignore[union-attr]
    assert out[5].startswith("recurrence steps per epoch") and min(steps) > 0
    assert recurrence == pytest.approx(steps[1] / steps[0], abs=0.02)


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert op_count_bench.main(["--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --epochs must be at least 1")
