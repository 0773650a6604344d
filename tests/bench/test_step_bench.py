"""bench/step_bench.py: one training step's CPU cost, and saint's attention against torch's own layers."""

from __future__ import annotations

import re

import pytest

from bench import step_bench


def test_torch_layers_times_both_saint_paths_and_prints_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "saint", "--torch-layers", "--steps", "2", "--batch", "2", "--len", "16"]
    assert step_bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("saint's attend") and out[1].startswith("torch's layers, float mask"), out
    costs = [float(re.search(r"median (\S+) CPU-s", line).group(1)) for line in out[:2]]  # type: ignore[union-attr]
    ratio = float(re.search(r"attend: (\S+)x", out[2]).group(1))  # type: ignore[union-attr]
    ours, theirs = costs  # printed to 0.001 CPU-s: the ratio of the unrounded medians lies within these bounds
    assert ours > 0 and (theirs - 5e-4) / (ours + 5e-4) - 0.005 <= ratio <= (theirs + 5e-4) / (ours - 5e-4) + 0.005


def test_torch_layers_on_another_model_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert step_bench.main(["--model", "lstm", "--torch-layers"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--torch-layers compares saint's attention paths" in err and "lstm" in err


def test_a_step_of_a_model_with_order_inputs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The random batch carries every continuous column: config/saint.json reads the order inputs too."""
    assert step_bench.main(["--model", "saint", "--steps", "1", "--batch", "2", "--len", "16"]) == 0
    assert "CPU-s per step (2 x 16, 1 thread(s))" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("optimizer", "extra"), [("fused", []), ("foreach", []), ("for-loop", []), ("fused", ["--one-gather"])]
)
def test_each_adamw_form_and_lookup_takes_a_step_on_a_large_table(
    optimizer: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "lstm", "--steps", "1", "--batch", "2", "--len", "8", "--vocab", "5000"]
    assert step_bench.main([*argv, "--optimizer", optimizer, *extra]) == 0
    assert "CPU-s per step (2 x 8, 1 thread(s))" in capsys.readouterr().out


def test_a_vocabulary_without_real_ids_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert step_bench.main(["--model", "lstm", "--vocab", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--vocab must be more than 2" in err, err
