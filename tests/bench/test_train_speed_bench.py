"""bench/train_speed_bench.py: our lstm and the reference DKT trained in one run, one table and their ratio."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bench import train_speed_bench


def test_one_run_prints_both_models_and_the_ratio_of_their_times(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "speed.json"
    argv = ["--data", *map(str, pair), "--epochs", "2", "--threads", "1", "--json", str(out_json)]
    assert train_speed_bench.main([*argv, "--set", "train.batch_size=8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | to early stop (s)") and len(lines) == 5, lines
    ref, ours = (line.rstrip(" |").split(" | ") for line in lines[2:4])
    assert ref[0] == "| reference DKT (bench/min_dkt.py)" and ours[0] == "| lstm (lstm.json, train.batch_size=8)"
    assert all(r[2].startswith(("1 (", "2 (")) and 0.5 < float(r[5]) <= 1 for r in (ref, ours)), (ref, ours)
    saved = json.loads(out_json.read_text())
    ratio = float(re.search(r"reference: (\S+)x", lines[4]).group(1))  # type: ignore[union-attr]
    assert ratio == pytest.approx(saved["ratio"], abs=0.005)
    times = [r["seconds"] for r in saved["results"].values()]
    assert saved["ratio"] == pytest.approx(times[1] / times[0])


def test_also_times_each_variant_of_ours_in_the_same_run(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "speed.json"
    argv = ["--data", *map(str, pair), "--epochs", "1", "--threads", "1", "--json", str(out_json)]
    also = "train.bucket_batches=true train.batch_tokens=400"
    assert train_speed_bench.main([*argv, "--set", "train.batch_size=8", "--also", also]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7, lines
    names = [line.split(" | ")[0] for line in lines[2:5]]
    assert names == ["| reference DKT (bench/min_dkt.py)", f"| lstm, {also}", "| lstm (lstm.json, train.batch_size=8)"]
    saved = json.loads(out_json.read_text())
    seconds = [r["seconds"] for r in saved["results"].values()]
    variant = float(re.search(rf"lstm, {also} / reference: (\S+)x", lines[5]).group(1))  # type: ignore[union-attr]
    assert variant == pytest.approx(seconds[1] / seconds[0], abs=0.005)
    assert saved["ratio"] == pytest.approx(seconds[2] / seconds[0]) == saved["ratios"][names[2].lstrip("| ")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "error: --threads must be at least 1"),
        (["--set", "train.batch_size"], "error: --set train.batch_size: expected train.KEY=VALUE"),
        (["--also", "train.lr=0.01 train.batch_tokens=x"], "error: --also train.batch_tokens=x: the value is not JSON"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "error: --device cuda: torch sees no CUDA")]),
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_speed_bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(message), err


def test_seeds_train_every_model_once_per_seed_and_report_their_means(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "speed.json"
    argv = ["--data", *map(str, pair), "--epochs", "1", "--threads", "1", "--json", str(out_json)]
    assert train_speed_bench.main([*argv, "--set", "train.batch_size=8", "--seeds", "3,7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "means over 2 seeds (3,7)" and len(lines) == 6, lines
    saved = json.loads(out_json.read_text())
    assert saved["seeds"] == [3, 7]
    for name, runs in saved["per_seed"].items():
        assert len(runs) == 2
        assert runs[0]["valid_auc"] != runs[1]["valid_auc"]  # each seed its own model
        mean = saved["results"][name]
        for key in ("seconds", "valid_auc", "test_auc"):
            assert mean[key] == pytest.approx((runs[0][key] + runs[1][key]) / 2)
    times = [r["seconds"] for r in saved["results"].values()]
    assert saved["ratio"] == pytest.approx(times[1] / times[0])


@pytest.mark.parametrize(
    ("seeds", "message"), [("1,1", "a seed is repeated"), ("1,x", "expected comma-separated integers")]
)
def test_bad_seeds_exit_2_naming_the_flag(seeds: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_speed_bench.main(["--seeds", seeds]) == 2
    err = capsys.readouterr().err
    assert f"error: argument --seeds: {message}" in err and "Traceback" not in err, err
