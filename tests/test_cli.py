"""The ``dkt`` command as people, make and the DAGs run it: real subprocesses of the installed script.

The script is the one ``make setup`` puts beside this Python (``pip install -e .``); most runs start in a
folder outside the checkout, so they also prove the installed command finds the project from anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dkt.cli import COMMANDS
from tests.serving.servers import ROOT, bentoml_env, free_port, running
from tests.support.cli import in_process, product_env

DKT = Path(sys.executable).with_name("dkt")


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    assert DKT.is_file(), f"{DKT} is missing: `make setup` installs the project (pip install -e .) and the command"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the product's variables (a developer's DKT_STORE=s3 must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DKT_", "AWS_"))}
    return {**env, **extra}


def dkt(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DKT), *map(str, args)], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_help_lists_every_command_and_imports_no_model_code(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    out = dkt("--help", cwd=tmp_path)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert listed == list(COMMANDS)
    print(f"\n`dkt --help`: {seconds:.2f} s wall (a fresh process)")
    # Lazy loading, checked where it matters: after the help, none of the heavy libraries is in the process.
    probe = ("import json, sys; from dkt.cli import main; main(['--help']); "
             "print(json.dumps(sorted(m for m in ('torch', 'pandas', 'numpy', 'bentoml', 'boto3', 'pydantic') "
             "if m in sys.modules)))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


# Commands that operators and the DAG tasks run most, which need no table or model code: run one after another in
# one fresh interpreter, the heavy libraries checked after each (a library loaded by any of them stays listed).
LIGHT_COMMANDS = (["models", "--help"], ["data", "--help"], ["infer", "--help"], ["train", "--help"],
                  ["data", "list"], ["models", "list"])  # fmt: skip
LIGHT_PROBE = """
import json, sys
from dkt.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out.append([argv, code or 0, sorted(m for m in ("pandas", "torch") if m in sys.modules)])
print(json.dumps(out))
"""


def test_store_commands_and_helps_start_without_pandas_or_torch(tmp_path: Path) -> None:
    """pandas (0.8 CPU-s) and torch (2 CPU-s) are imported only where tables or models are worked on, so these start
    in a fraction of that (docs/testing.md#cli-start-up): an import moved back to a module's top fails here."""
    env = clean_env(DKT_STORE="local", DKT_STORE_ROOT=str(tmp_path / "store"), DKT_WORK_ROOT=str(tmp_path / "work"))
    res = subprocess.run([sys.executable, "-c", LIGHT_PROBE, json.dumps(LIGHT_COMMANDS)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert [argv for argv, _, _ in results] == list(LIGHT_COMMANDS)
    for argv, code, heavy in results:
        assert code == 0, f"dkt {' '.join(argv)}: exit {code}: {res.stderr[-2000:]}"
        assert heavy == [], f"after dkt {' '.join(argv)}: {heavy} imported"


# Every command's --help in one fresh interpreter (each command's own imports, as in a process of its own): one
# start-up instead of one per command. The installed script runs every command in the bad-input test below.
EVERY_HELP = """
import contextlib, io, json, sys
from dkt.cli import COMMANDS, main
out = {}
for name in COMMANDS:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main([name, "--help"])
        except SystemExit as stop:
            code = stop.code
    out[name] = [code or 0, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_command_has_help_in_one_style(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", EVERY_HELP], cwd=tmp_path, env=clean_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(results) == list(COMMANDS)
    for name, (code, stdout) in results.items():
        assert code == 0, f"dkt {name} --help: exit {code}: {res.stderr[-2000:]}"
        assert stdout.startswith(f"usage: dkt {name} "), f"dkt {name} --help: {stdout[:200]!r}"


def test_no_command_or_an_unknown_one_is_one_error_line(tmp_path: Path) -> None:
    none, unknown = dkt(cwd=tmp_path), dkt("trian", cwd=tmp_path)
    assert (none.returncode, none.stderr) == (2, "error: dkt: a command is required (see dkt --help)\n")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: dkt: unknown command 'trian' (choose from train, infer,")
    assert unknown.stderr.count("\n") == 1 and unknown.stdout == ""


def bad_input_cases(tmp: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """Per command: arguments, extra environment, and what the one error line must name (tmp paths: no spaces)."""
    store = {"DKT_STORE": "local", "DKT_STORE_ROOT": str(tmp / "store")}
    missing, config = tmp / "missing.csv", ROOT / "config" / "lstm.json"
    train = f"--config {config} --train-file {missing} --test-file {missing} --output-dir {tmp / 'out'}"
    return {
        "train": (train.split(), {}, f"{missing}: file not found"),
        "infer": (
            f"--model-dir {tmp} --data-file {missing} --output {tmp / 'p.csv'}".split(),
            {},
            f"{missing}: file not found",
        ),
        "simulate": (f"--users 1 --out {tmp / 'sim'}".split(), {}, "--users must be at least 2"),
        "pack": (["--model-dir", str(tmp / "nobundle")], {}, f"{tmp / 'nobundle'}: no such folder"),
        "serve": (["--port", "70000"], {}, "invalid port value: '70000'"),
        "data": (f"pull v-missing --dest {tmp / 'd'}".split(), store, "no complete datasets version 'v-missing'"),
        "models": (["promote", "v-missing"], store, "no complete models version 'v-missing'"),
        "deploy": (["verify"], {}, "--run-id is required"),
        "stack": (["start"], {}, "invalid choice: 'start'"),
        # Argument errors: swarm's own checks (--replicas 0, bad settings) exit 1, as before this command existed.
        "swarm": (["scale", "--replicas", "many"], {}, "invalid int value: 'many'"),
        "settings": (["show"], {"DKT_SERVE_PORT": "abc"}, "DKT_SERVE_PORT='abc'"),
        "client": (["routes"], {"DKT_SECRET_KEY": "cli-test"}, "data/sim/questions.csv: item bank not found"),
        "file-export": (["--source", str(tmp)], {}, "the following arguments are required: --out"),
        "steps": (["--run-id", "r", "data nope"], {}, "step 'data nope' is not a DAG step"),
    }


def test_bad_input_is_one_error_line_and_exit_2_in_every_group(tmp_path: Path) -> None:
    cases = bad_input_cases(tmp_path)
    assert set(cases) == set(COMMANDS), "a command without a bad-input case here"
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(cases, pool.map(lambda c: dkt(c[0], *c[1][0], cwd=tmp_path, env=clean_env(**c[1][1])),
                                           cases.items()), strict=True))  # fmt: skip
    for name, out in results.items():
        what = f"dkt {name} {' '.join(cases[name][0])}"
        assert out.returncode == 2, f"{what}: exit {out.returncode}: {out.stderr[-2000:]}"
        assert "Traceback" not in out.stderr, what
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, f"{what}: {out.stderr!r}"
        assert cases[name][2] in out.stderr, f"{what}: {out.stderr!r}"
    assert not (tmp_path / "out" / "bundle.json").exists()


@pytest.mark.slow  # nine interpreters for four --help texts; train.py and inference.py run in tests/dkt too
def test_thin_entry_points_run_the_same_commands() -> None:
    """``python train.py``, ``python -m data`` ... are the names the project is known by: the same code.

    (``packer.py`` and ``python -m dkt.simulate`` are the modules ``dkt pack`` / ``dkt simulate`` call.)"""
    pairs = {
        "train": [sys.executable, "train.py"],
        "infer": [sys.executable, "inference.py"],
        "data": [sys.executable, "-m", "data"],
        "models": [sys.executable, "-m", "models"],
    }

    def both(name: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        old = subprocess.run([*pairs[name], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        return dkt(name, "--help", cwd=ROOT), old

    with ThreadPoolExecutor(4) as pool:
        for name, (new, old) in zip(pairs, pool.map(both, pairs), strict=True):
            assert new.returncode == old.returncode == 0, (name, new.stderr[-500:], old.stderr[-500:])
            assert old.stdout == new.stdout, name
    argv = ["--epochs", "0", "--config", "c", "--train-file", "t", "--test-file", "t", "--output-dir", "o"]
    bad = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (bad.returncode, bad.stderr) == (2, "error: --epochs must be at least 1\n")


def test_data_push_and_models_list_on_a_local_store(
    tmp_path: Path,
    sim_dir: Path,
    lstm_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process (was five `dkt` processes, about 1.4 CPU-s of imports each): this test is about what the store
    # commands write and print; the light ones' fresh-process start is test_store_commands_and_helps_start_....
    product_env(monkeypatch, DKT_STORE="local", DKT_STORE_ROOT=tmp_path / "store", DKT_WORK_ROOT=tmp_path / "work")
    monkeypatch.chdir(tmp_path)

    pushed = in_process(["data", "push", sim_dir, "--version", "d1"], capsys)
    assert pushed[0] == 0, pushed[2]
    doc = json.loads(pushed[1])
    assert doc["version"] == "d1" and doc["rows"]["interactions.csv"] > 0
    listed = in_process(["data", "list"], capsys)
    assert listed[0] == 0, listed[2]
    assert listed[1].startswith("d1  rows=") and listed[1].rstrip().endswith("<- latest")

    assert in_process(["models", "list"], capsys)[:2] == (0, "")
    promoted = in_process(["models", "push", lstm_bundle, "--promote"], capsys)
    assert promoted[0] == 0, promoted[2]
    assert json.loads(promoted[1]) == {"version": "test-v1", "promoted": True}
    models = in_process(["models", "list"], capsys)
    assert models[0] == 0, models[2]
    (line,) = models[1].splitlines()
    meta = json.loads((lstm_bundle / "bundle.json").read_text())
    assert line.startswith(f"test-v1  model=lstm  test_auc={meta['metrics']['test_auc']:.4f}  data=")
    assert line.endswith("<- production, latest")


@pytest.mark.slow
def test_serve_packs_a_bundle_and_serves_it(tmp_path: Path, lstm_bundle: Path) -> None:
    """``dkt serve --model-dir`` (what ``make serving-up`` runs): the process becomes ``bentoml serve``."""
    port = free_port()
    cmd = [str(DKT), "serve", "--model-dir", str(lstm_bundle), "--port", str(port)]
    with running(cmd, bentoml_env(tmp_path / "bentoml"), f"http://127.0.0.1:{port}", "/readyz",
                 tmp_path / "serve.log") as server:  # fmt: skip
        meta = requests.get(server.url + "/metadata", timeout=30)
        assert meta.status_code == 200, meta.text
        assert meta.json()["model_version"] == "test-v1"
        log = server.log.read_text()
    assert "model: dkt-model:" in log  # packed first, then served
