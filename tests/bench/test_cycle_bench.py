"""bench/cycle_bench.py's reading of the retrain step's log: which candidate's training said what of its warm start,
so that with several candidates the report names the winner's own (a real retrain step's log, two candidates)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import cycle_bench
from dkt.bundle import read_meta
from pipeline import retrain, timings
from tests.conftest import TINY_LSTM

TINY_SAINT = {
    "model": "saint",
    "model_params": {"d_model": 16, "emb_dim": 8, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1},
    "train": TINY_LSTM["train"],
}


def test_each_candidate_s_warm_start_line_is_its_own(
    lstm_bundle: Path, sim_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        shutil.copy(sim_dir / name, work / "data" / name)
    (work / "data" / "manifest.json").write_text(json.dumps({"version": "d1"}))
    shutil.copytree(lstm_bundle, work / "production")  # an lstm: it seeds the lstm candidate, not the saint one
    configs = []
    for doc in (TINY_SAINT, TINY_LSTM):  # saint first: the first warm start line is not the warm-started one's
        path = tmp_path / f"{doc['model']}.json"
        path.write_text(json.dumps(doc))
        configs.append(str(path))
    capfd.readouterr()
    retrain.train(work, epochs=1, device="cpu", candidates=",".join(configs))
    log = capfd.readouterr().err

    said = cycle_bench.warm_start_lines(log)
    assert set(said) == {"1-saint", "2-lstm"}, said
    assert said["1-saint"].startswith("not from ") and "it is a lstm model, this is saint" in said["1-saint"]
    assert said["2-lstm"].startswith(f"from {work / 'production'} (test-v1): ")
    # The scheduler's task logs hold each line as a JSON event: the same reading.
    as_json = "\n".join(json.dumps({"event": line, "level": "info"}) for line in log.splitlines())
    assert cycle_bench.warm_start_lines(as_json) == said
    # Each candidate's own training loop, epochs and fine-tune in the step's timings, and the report splits each
    # candidate's train.py lap by its own loop (it once split both by the winner's).

    laps = timings.read(work)["train"]
    parts = dict(cycle_bench.step_parts(laps))
    for name, tuned in (("1-saint", False), ("2-lstm", True)):
        metrics = read_meta(work / "candidates" / name)["metrics"]
        what = f"training loop ({metrics['epochs_run']} epochs, fine-tune {tuned})"
        assert parts[f"train.py {name}: {what}"] == pytest.approx(metrics["train_seconds"])
        rest = parts[f"train.py {name}: process start, imports, data, test evaluation, bundle write"]
        assert rest == pytest.approx(laps[f"train.py {name}"] - metrics["train_seconds"]) and rest > 0
    assert set(parts) == {
        *(p for name in ("1-saint", "2-lstm") for p in parts if p.startswith(f"train.py {name}: ")),
        "select",
    }, parts
