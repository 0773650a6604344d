"""Shared fixtures: a small simulated data set and a small trained bundle, made once per session."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Serving fixtures (a packed model, a live `bentoml serve`) shared by tests/serving and tests/client; each xdist
# worker's share of the run, printed at its end; the xdist_group marks below honoured under pytest 9.2.
pytest_plugins = ["tests.serving.fixtures", "tests.support.timeline", "tests.support.xdist_groups"]
# torch, pandas and the dkt modules are imported inside the fixtures that use them: this file is also loaded by
# xdist's controller and by the Docker suite's pytest, which run no model code (5 CPU-s each, about 40 s on a busy
# machine, before the first test).

# Every process the tests start (train.py, `python -m dkt` commands, Airflow's tasks through `dags test`, which
# append the worker's environment) gets one OpenMP thread, as this process does (one_torch_thread below): torch's
# default is one per core, and with the tiny tensors of the tests the second thread only spins while the machine is
# saturated. A train.py run of TINY_LSTM beside two busy loops on 2 cores: 24.7 CPU-s and 43 s with torch's
# default, 6.5 CPU-s and 23 s with one thread. The served model already runs one (DKT_TORCH_THREADS, service.py);
# the product's own default for training is untouched: only the tests' environment sets this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSIST2009 = ROOT.parent / "shared" / "data" / "assist2009"

# Small but real: enough answers for a model to learn something in a couple of epochs.
TINY_LSTM = {
    "model": "lstm",
    "model_params": {"d_model": 32, "emb_dim": 16, "hidden_dim": 32},
    "train": {"max_seq_len": 50, "batch_size": 32, "lr": 0.005, "epochs": 2, "patience": 2},
}


# What each marker means is decided by what a test uses, not by what its author remembered to write: a test that
# asks for one of these fixtures gets the marker, so `make test-fast` (-m "not slow and not docker and not browser")
# can never pull in a live server, a Docker engine or Chromium by accident.
IMPLIED_MARKERS = {
    "service": ("slow",),  # a live `bentoml serve`
    "packed": ("slow",),  # packer.py in a subprocess, a Bento built
    "browser_page": ("slow", "browser"),  # headless Chromium
    "swarm": ("slow", "docker"),  # a Docker engine in swarm mode
}
# Tests that share the live `bentoml serve` run on one xdist worker, so the suite starts it once, not per worker.
SHARED_SERVICE_GROUP = "bentoml-service"
# Tests that build or load a BERT (a "bert" parameter, or every kind's bundles) run on one xdist worker too: importing
# transformers costs 4.4 CPU-s, which each worker running one of them would pay (dkt/models/bert.py imports it where a
# BERT is built, so collection no longer does).
TRANSFORMERS_GROUP = "transformers"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (Debian's chromium; make test-setup)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the implied markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marks in IMPLIED_MARKERS.items():
            if fixture in used:
                for mark in marks:
                    item.add_marker(mark)
        if used & {"service", "packed"}:
            item.add_marker(pytest.mark.xdist_group(SHARED_SERVICE_GROUP))
    # A module holding a fast test that builds or loads a BERT sends its fast tests there whole: its module-scoped
    # fixtures (data, small models) are then made once, not on both workers. Slow tests keep their own schedule (a
    # slow module in one group would make a tail). One group per test: two would make a group of their own
    # (tests/support/xdist_groups.py joins the names).
    fast = [item for item in items if not item.get_closest_marker("slow")]
    bert_modules = {getattr(item, "module", None) for item in fast if uses_bert(item)}
    for item in fast:
        if getattr(item, "module", None) in bert_modules and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(TRANSFORMERS_GROUP))
    # Modules holding slow tests first (collection order kept inside each module, so module fixtures are made
    # once): with parallel workers the long tests start early instead of forming the tail of the run.
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}  # type: ignore[attr-defined]
    items.sort(key=lambda item: getattr(item, "module", None) not in slow_modules)


def uses_bert(item: pytest.Item) -> bool:
    params = getattr(item, "callspec", None)
    named = params is not None and any(isinstance(v, str) and v == "bert" for v in params.params.values())
    # tests/dkt/models/test_interface.py's bundles: every kind, bert included
    return named or "bundles" in getattr(item, "fixturenames", ())


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``make(out)`` once per test run, however many xdist workers share it: the first worker makes it under
    the run's base folder, the others wait on the lock and read it. Only for read-only, seeded inputs."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's base folder sits in the run's
    out = base / name
    with (base / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / f"{name}.done").exists():
            shutil.rmtree(out, ignore_errors=True)  # what a worker that failed making it left
            out.mkdir()
            make(out)
            (base / f"{name}.done").touch()
    return out


def make_sim(out: Path) -> None:
    from dkt.simulate import simulate, write

    write(simulate(120, seed=7), out, test_ratio=0.25, seed=7)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return made_once(tmp_path_factory, "sim", make_sim)


@pytest.fixture(scope="session")
def lstm_bundle(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def train(out: Path) -> None:
        from dkt.config import parse_config
        from dkt.experiment import load_run_data, run

        data = load_run_data(sim_dir / "train.csv", sim_dir / "test.csv", None, "csv", 0.15, seed=1)
        run(parse_config(TINY_LSTM), data, out / "lstm", device="cpu", seed=1, model_version="test-v1", progress=False)

    return made_once(tmp_path_factory, "bundle", train) / "lstm"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds sync cost, and on a busy CPU it costs 10x or more (the
    session bundle's training: 16 s with torch's default two threads, 1.6 s with one, the same test AUC).
    For every test in the process, shared fixtures included: with two xdist workers on two cores, one thread each
    is all the machine has. Subprocesses (train.py, bentoml serve) keep the product's own thread settings."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
