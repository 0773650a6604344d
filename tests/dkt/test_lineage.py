"""Lineage: the commit is recorded from a checkout and honestly "unknown" elsewhere; the config hash is canonical."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dkt.bundle import UNKNOWN, code_commit, code_version, config_hash, read_meta
from tests.conftest import ROOT, TINY_LSTM

PROBE = (
    "import json; from dkt.bundle import code_commit, code_version; print(json.dumps([code_commit(), code_version()]))"
)


def probe(package_parent: Path) -> Any:
    env = {"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(res.stdout)


def test_commit_from_this_checkout() -> None:
    sha, dirty = code_commit()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # HEAD may move while the suite runs (others commit): the recorded commit is HEAD or one of its ancestors.
    same_or_older = subprocess.run(["git", "merge-base", "--is-ancestor", sha, head], cwd=ROOT).returncode == 0
    assert len(sha) == 40 and same_or_older and isinstance(dirty, bool)
    assert code_version(sha).endswith(f"+{sha[:12]}")


def test_unknown_outside_a_checkout_and_inside_someone_elses(tmp_path: Path) -> None:
    copy = tmp_path / "installed"
    shutil.copytree(ROOT / "dkt", copy / "dkt", ignore=shutil.ignore_patterns("__pycache__"))
    assert probe(copy) == [[UNKNOWN, None], "0.1.0+unknown"]
    # An installed copy inside another repository must not report that repository's commit.
    other = tmp_path / "other"
    shutil.move(copy, other / "vendor" / "installed")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(other)], check=True)
    subprocess.run([*git, "-C", str(other), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    assert probe(other / "vendor" / "installed") == [[UNKNOWN, None], "0.1.0+unknown"]


def test_config_hash_is_canonical() -> None:
    a = {"model": "lstm", "train": {"lr": 0.002, "epochs": 3}}
    b = {"train": {"epochs": 3, "lr": 0.002}, "model": "lstm"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "train": {"lr": 0.002, "epochs": 4}})


@pytest.mark.slow  # trains an ensemble and its members
def test_ensemble_config_hash_covers_its_members_configs(sim_dir: Path, tmp_path: Path) -> None:
    # The ensemble config only names its members' files: hashing it alone would miss a change inside them.
    from dkt.experiment import load_run_data, run

    (tmp_path / "m.json").write_text(json.dumps({**TINY_LSTM, "train": {**TINY_LSTM["train"], "epochs": 1}}))
    (tmp_path / "e.json").write_text(json.dumps({"model": "ensemble", "members": [{"config": "m.json"}]}))
    data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
    run(tmp_path / "e.json", data, tmp_path / "out", device="cpu", seed=1, progress=False)
    meta, member = read_meta(tmp_path / "out"), read_meta(tmp_path / "out" / "members" / "00-lstm")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    member_config = json.loads((tmp_path / "out" / "members" / "00-lstm" / "config.json").read_text())
    assert member["config_hash"] == config_hash(member_config)
    assert meta["config_hash"] == config_hash(config | {"member_config_hashes": [member["config_hash"]]})
    assert meta["config_hash"] != config_hash(config)
