"""bench/cuda_profile_bench.py: where a training step's time goes, ours and the reference DKT, under torch.profiler.

On a GPU it splits a run into the device's kernels and the host's launches and waits (docs/training-speed.md,
round 9). Here, without one, it runs the same two trainings on the CPU: no kernels, and the host ops that cost most.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import cuda_profile_bench


def test_both_models_are_trained_and_profiled(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--data", *map(str, pair), "--epochs", "1", "--top", "3"]
    assert cuda_profile_bench.main([*argv, "--set", "train.batch_size=8", "--also", "train.batch_tokens=400"]) == 0
    out = capsys.readouterr().out
    heads = re.findall(r"^## (.+?): 1 epochs, ([\d.]+) s \(profiled ([\d.]+) s\)$", out, re.M)
    names = [h[0] for h in heads]
    assert names == ["reference DKT (bench/min_dkt.py)", "lstm, train.batch_tokens=400", "lstm (lstm.json)"], out
    assert all(float(plain) > 0 and float(profiled) > 0 for _, plain, profiled in heads)
    assert out.count("device: 0 kernels") == 3  # the CPU launches none
    ops = re.findall(r"^\| (aten::\S+|[A-Za-z].*?) \| ([\d,]+) \| ([\d.]+) \|$", out, re.M)
    assert len(ops) == 9 and all(int(count.replace(",", "")) > 0 for _, count, _ in ops), ops  # 3 host ops each


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu", "--epochs", "0"], "error: --epochs and --top must be at least 1"),
        (["--device", "cpu", "--also", "train.lr=x"], "error: --also train.lr=x: the value is not JSON"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "error: --device cuda: torch sees no CUDA")]),
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cuda_profile_bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(message), err
