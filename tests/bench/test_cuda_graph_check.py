"""bench/cuda_graph_check.py: the CUDA-graphed training loop against the eager one, step for step.

On a GPU it is the check of dkt.cuda_graphs' capture (bash bench/gpu_run.sh --graph-check). Here the CPU ignores the
flag, so both runs are eager and must agree exactly; what it flags is tested on runs made to differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import cuda_graph_check

ROOT = Path(__file__).resolve().parents[2]


def test_on_the_cpu_both_runs_agree_exactly(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--data", *map(str, pair), "--epochs", "2", "--set", "train.batch_tokens=400"]
    assert cuda_graph_check.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split(" | ") for line in out if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == 2 and all(r[1] == r[2] and r[3] == r[4].rstrip(" |") for r in rows), out
    assert "largest weight difference: 0.00e+00" in out[-2] and out[-1].startswith("the graphed loop trains"), out


def history(loss: float, auc: float, epochs: int = 2) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": loss, "valid_auc": auc} for e in range(1, epochs + 1)]


def test_what_it_flags() -> None:
    weights = {"w": torch.tensor([1.0, -2.0]), "steps": torch.tensor([3])}
    same = {False: (history(0.5, 0.8), weights), True: (history(0.5004, 0.8015), dict(weights))}
    assert cuda_graph_check.compare(same) == []  # rounding within tolerance
    off = {"w": torch.tensor([1.0, -2.1]), "steps": torch.tensor([3])}
    bad = cuda_graph_check.compare({False: (history(0.5, 0.8), weights), True: (history(0.51, 0.8, 3), off)})
    assert bad[0] == "epochs run: 3 graphed against 2 eager"
    assert bad[1].startswith("epoch 1 train_loss: 0.510000 graphed against 0.500000 eager")
    assert bad[-1].startswith("weights w: differ by 5.00e-02") and len(bad) == 4, bad


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu", "--epochs", "0"], "error: --epochs must be at least 1"),
        (["--device", "cpu", "--config", str(ROOT / "config/lgbm.json")], "error: --config: lgbm is not a sequence"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "error: --device cuda: torch sees no CUDA")]),
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cuda_graph_check.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(message), err
