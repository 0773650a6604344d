"""Time one retraining cycle: "N new interactions stored" -> "the service answers with the new model".

    .venv/bin/python bench/cycle_bench.py [--users 500] [--new 200] [--epochs N] [--candidates lstm] [--seed N]
        [--driver scheduler|dags-test]

Sets up a throwaway stack in a temp folder (simulated data, a first model, the BentoML
service, the client), lets simulated students store N answers through the client, then
runs the three DAGs and prints the seconds of each step. ``--driver scheduler`` (default) drives them as `make up`
does: its Airflow (api-server, scheduler, dag-processor: pipeline/stack.py), started after the answers are stored;
update_data_dag's first scheduled run starts the cycle, the asset events chain the other two; "new answers -> served"
runs from that run's creation to /metadata reporting the promoted version. ``--driver dags-test`` runs each DAG with
`airflow dags test` (its own start-up in the figures). Where the seconds went: each
task's duration from Airflow's database, the parts each step timed itself (its work folder's timings.json,
pipeline/timings.py), and what is left of the task (its start: Airflow's task runner, the app process, imports).
While the model is switched, students keep answering; failed requests are counted (target: 0).
Then the retrain step's candidate (warm-started from the first model) is set against the same config trained from
scratch on the same files: seconds and AUC on the gate's time holdout (DKT_GATE_MIN_ANSWERS is lowered to 100 so
the new answers make one). The students answer as the simulated data's (their ability against each item's difficulty)
and every question is drawn at random (DKT_EXPLORE_RATE 1.0), so that holdout can tell two models apart; it is still
a few hundred answers: --seed draws other data and students, to compare over several.
Target (issue 16): new answers -> served under 60 s on 2 cores for the default kind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dkt.settings import PipelineSettings, StackSettings, load, load_or_exit  # noqa: E402
from pipeline import deploy  # noqa: E402
from pipeline.store import VersionedStore  # noqa: E402
from tests.support.ports import free_port, free_port_pair  # noqa: E402
from tests.support.students import answering, client_server, irt_students, run_students  # noqa: E402


def sh(argv: list[str], env: dict[str, str], log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t


DAGS = ("update_data_dag", "retrain_and_push_dag", "update_inference_server_dag")
FLOWS = {"update_data_dag": "update_data", "retrain_and_push_dag": "retrain_and_push",
         "update_inference_server_dag": "update_inference_server"}  # fmt: skip
# The steps (their timings.json names) a task of the DAGs runs, where they are not one step of the same name.
STEPS = {"train": ("pull_data", "train"), "pack": ("pull_model", "pack"), "deploy": ("deploy", "verify"),
         "publish": ("export", "prepare", "publish"), "evaluate": ("evaluate", "push_candidate"),
         "evaluate_and_promote": ("evaluate", "push_candidate", "promote_if_better")}  # fmt: skip
ONE_DEPLOY_TASK = ("pull_model", "pack", "deploy", "verify")  # the swap strategy's one task (no "pack" task)


def airflow_db(airflow_home: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        return db.execute(sql).fetchall()


def task_seconds(airflow_home: Path) -> dict[str, dict[str, float]]:
    """Each task's duration (end - start, as Airflow's database has them) per DAG, in the order they started."""
    rows = airflow_db(
        airflow_home,
        "SELECT dag_id, task_id, (julianday(end_date) - julianday(start_date)) * 86400 FROM task_instance"
        " WHERE start_date IS NOT NULL AND end_date IS NOT NULL ORDER BY start_date",
    )
    out: dict[str, dict[str, float]] = {}
    for dag, task, seconds in rows:
        out.setdefault(dag, {})[task] = float(seconds)
    return out


LOGS = dict(zip(DAGS, ("update.log", "retrain.log", "deploy.log"), strict=True))  # the DAG runs' logs, main()
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def task_starts(log: Path) -> dict[str, float]:
    """Per task, the seconds from `airflow dags test` starting it to Airflow's "Task started" (the task runner, and
    before a DAG's first task the test command's in-process execution API: none of it is the task's own work)."""
    out: dict[str, float] = {}
    task, since = None, None
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.fromisoformat(m.group(1)).timestamp()
        if "[DAG TEST] starting task_id=" in line:
            task, since = line.split("starting task_id=", 1)[1].split()[0], t
        elif "Task started" in line and task and since is not None:
            out[task], task, since = t - since, None, None
    return out


def dag_runs(airflow_home: Path) -> dict[str, dict[str, float]]:
    """The latest run of each DAG: queued, start and end as epoch seconds (None while unset)."""
    epoch = "(julianday({}) - 2440587.5) * 86400"
    rows = airflow_db(
        airflow_home,
        f"SELECT dag_id, state, {epoch.format('queued_at')}, {epoch.format('start_date')},"
        f" {epoch.format('end_date')} FROM dag_run ORDER BY id",
    )
    return {dag: {"state": state, "queued": q, "start": s, "end": e} for dag, state, q, s, e in rows}


def airflow_session(url: str, password: str) -> requests.Session:
    """An authorised session on the stack's Airflow REST API (simple auth manager: admin)."""
    token = requests.post(url + "/auth/token", json={"username": "admin", "password": password}, timeout=60)
    token.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return session


def wait_for(what: str, check: Any, deadline_s: float, every: float = 0.5) -> Any:
    """``check()``'s first truthy value; transient errors are retried until the deadline (a loaded machine)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if found := check():
                return found
        except (requests.RequestException, sqlite3.Error, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"error: not within {deadline_s:.0f} s: {what}")
        time.sleep(every)


def warm_stack(tmp: Path) -> requests.Session:
    """The stack's Airflow started and run once, as `make up` leaves it running: update_data_dag's first scheduled run
    (no new answers yet: publish skipped) and promote_shadow_dag's ended, so the api-server, scheduler, executor and
    DAG files are warm. A session on its REST API, to start the timed run with."""
    from pipeline import stack

    url, password = stack.ensure_airflow()
    home = tmp / "airflow"
    ended = ("success", "failed")
    wait_for("the warm-up runs", lambda: (r := dag_runs(home)).get("update_data_dag")
             and all(run["state"] in ended for run in r.values()), 600)  # fmt: skip
    return airflow_session(url, password)


def scheduler_cycle(tmp: Path, served_version: str, airflow: requests.Session | None) -> dict[str, float]:
    """The cycle as `make up` runs it, until /metadata reports a version other than ``served_version``. ``airflow``
    (a session on the warm stack's API, ``warm_stack``): the cycle is an update_data_dag run triggered now, on the
    running stack (as the next @daily run, or an operator's trigger). None (``--cold-stack``): the stack's Airflow
    is started now and its first scheduled update_data_dag run is the cycle (DAGs are unpaused at creation). Both:
    the asset events start the other two DAGs. Seconds from the data run's creation (queued) to served, each DAG
    run's wall and the gaps between them (the asset event to the next run)."""
    from pipeline import stack

    home = tmp / "airflow"
    if airflow is None:
        stack.ensure_airflow()
    else:
        base = f"http://127.0.0.1:{load_or_exit(StackSettings).airflow_port}"
        got = airflow.post(base + "/api/v2/dags/update_data_dag/dagRuns", json={"logical_date": None}, timeout=60)
        got.raise_for_status()
    first = wait_for("update_data_dag's run", lambda: (r := dag_runs(home).get("update_data_dag")) and
                     (airflow is None or r["state"] not in ("success", "failed")) and r, 600)  # fmt: skip
    t0 = first["queued"] or time.time()

    def served() -> float | None:
        meta = requests.get(deploy.current_url() + "/metadata", timeout=10).json()
        return time.time() if meta.get("model_version") not in (None, served_version) else None

    served_at = wait_for("the promoted model served", served, 3600)
    runs = wait_for("update_inference_server_dag's run ended", lambda: (r := dag_runs(home)).get(
        "update_inference_server_dag", {}).get("end") and r, 600)  # fmt: skip
    figures = {
        "new answers -> served": served_at - t0,
        "served -> deploy DAG run ended": runs[DAGS[2]]["end"] - served_at,
    }
    previous_end = t0
    for dag in DAGS:
        run = runs[dag]
        figures[f"{dag}: previous step (or the data run's creation) -> run start"] = run["start"] - previous_end
        figures[dag] = run["end"] - run["start"]
        previous_end = run["end"]
    for name in ("airflow-dag-processor", "airflow-scheduler", "airflow-api-server"):
        stack.stop_part(name)
    return figures


def step_parts(laps: dict[str, Any]) -> list[tuple[str, float]]:
    """A step's timed parts (pipeline/timings.py), in order, as (part, seconds). A candidate's train.py lap splits in
    two by the training loop train.py timed for that candidate (pipeline.retrain.train records each one's)."""
    out: list[tuple[str, float]] = []
    for part, value in laps.items():
        if part == "total" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if part.endswith((" training_loop", " epochs")):
            continue  # read with its candidate's lap below
        name = part.removeprefix("train.py ")
        loop = laps.get(f"{name} training_loop")
        if part.startswith("train.py ") and isinstance(loop, int | float) and not isinstance(loop, bool):
            what = f"training loop ({laps.get(f'{name} epochs')} epochs, fine-tune {laps.get(f'{name} fine_tune')})"
            out.append((f"{part}: {what}", float(loop)))
            out.append((f"{part}: process start, imports, data, test evaluation, bundle write", float(value) - loop))
        else:
            out.append((part, float(value)))
    return out


def breakdown(tmp: Path, dag_wall: dict[str, float]) -> list[dict[str, Any]]:
    """Rows of (dag, task, part, seconds): every task, inside it what its step timed, the rest its start."""
    from pipeline import timings

    tasks = task_seconds(tmp / "airflow")
    logs = tmp / "logs"
    rows: list[dict[str, Any]] = []

    def row(dag: str, task: str, part: str, seconds: float | None) -> None:
        rows.append({"dag": dag, "task": task, "part": part, "seconds": None if seconds is None else round(seconds, 1)})

    def parts(dag: str, task: str, laps: dict[str, Any]) -> None:
        for part, seconds in step_parts(laps):
            row(dag, task, part, seconds)

    for dag in DAGS:
        durations = tasks.get(dag, {})
        row(dag, "", "DAG run, wall", dag_wall.get(dag))
        row(dag, "", "outside the tasks (the airflow CLI, DAG parsing, between tasks)",
            dag_wall.get(dag, 0.0) - sum(durations.values()))  # fmt: skip
        steps: dict[str, dict[str, Any]] = {}
        if dag in FLOWS:
            # oldest first: the timed run's figures win over a warm-up run's (warm_stack)
            for work in sorted((tmp / "work" / FLOWS[dag]).glob("*"), key=lambda p: p.stat().st_mtime):
                if work.name != "initial":  # the first model's deploy, before the cycle
                    steps |= timings.read(work)
        starts = task_starts(logs / LOGS[dag])
        for task, seconds in durations.items():
            row(dag, task, "task", seconds)
            if task in starts:
                row(dag, task, "start: dags test to Airflow's 'Task started'", starts[task])
            names = ONE_DEPLOY_TASK if task == "deploy" and "pack" not in durations else STEPS.get(task, (task,))
            timed = [steps[s] for s in names if s in steps]
            for laps in timed:
                parts(dag, task, laps)
            # `dkt steps` (a task of several steps, one process) times each step whole: "task models evaluate, ..."
            together = [
                laps
                for key, laps in steps.items()
                if key.startswith("task ")
                and sorted(w.split()[-1].replace("-", "_") for w in key[5:].split(", ")) == sorted(names)
            ]
            for laps in together:
                for part, value in laps.items():
                    if part != "total":
                        row(dag, task, f"step {part} (dkt steps, whole)", float(value))
                row(dag, task, "task start (Airflow task runner, the dkt steps process and its imports)",
                    seconds - float(laps["total"]))  # fmt: skip
            if timed and not together:
                row(dag, task, "task start (Airflow task runner, app processes, imports) and the CLIs' own work",
                    seconds - sum(float(laps["total"]) for laps in timed))  # fmt: skip
    return rows


def print_breakdown(rows: list[dict[str, Any]]) -> None:
    print(f"{'seconds':>8}  where", file=sys.stderr)
    for r in rows:
        where = " / ".join(x for x in (r["dag"], r["task"], r["part"]) if x)
        print(f"{r['seconds'] if r['seconds'] is not None else '-':>8}  {where}", file=sys.stderr)


def warm_start_lines(log: str) -> dict[str, str]:
    """What each candidate's training said of its warm start, by candidate folder ("1-lstm"): the retrain step logs
    ``train: python train.py ... --output-dir <work>/candidates/<n>-<name>`` before each candidate, and its training
    then logs ``warm start: ...``. A line ends at the dags-test log's " [airflow..." or the task log's JSON ('",')."""
    ends = re.compile(r' \[airflow|",')
    said: dict[str, str] = {}
    candidate = None
    for line in log.splitlines():
        if "train: python train.py " in line and (m := re.search(r"--output-dir (\S+)", line)):
            candidate = Path(ends.split(m.group(1))[0].rstrip('"')).name
        elif "warm start: " in line and candidate is not None and candidate not in said:
            said[candidate] = ends.split(line.split("warm start: ", 1)[1])[0]
    return said


def warm_vs_scratch(
    work_root: Path, env: dict[str, str], cap: list[str], logs: Path, candidates: str
) -> dict[str, Any]:
    """The retrain step's winner (warm-started when production's kind and parameters allowed) against its config
    (as listed in ``candidates``, not the fine-tune's copy in the bundle) trained from scratch on the same files, both
    scored on the gate's time holdout."""
    from dkt.bundle import read_meta
    from dkt.metrics import auc
    from pipeline import retrain

    [work] = [p for p in (work_root / "retrain_and_push").iterdir() if (p / "candidate").is_dir()]
    holdout = retrain.read_holdout(work)
    files = work / retrain.GATE_DIR if holdout["active"] else work / "data"
    warm = work / "candidate"
    scratch = work.parent / "scratch"
    winner = str(json.loads((work / retrain.SELECTION).read_text())["winner"])  # "<n>-<name>", n from 1
    config = retrain.candidate_configs(candidates)[int(winner.split("-", 1)[0]) - 1]
    seconds = sh([sys.executable, str(ROOT / "train.py"), "--config", str(config), "--train-file",
                  str(files / "train.csv"), "--test-file", str(files / "test.csv"), "--output-dir", str(scratch),
                  *cap, "--no-progress"], env, logs / "scratch.log")  # fmt: skip
    doc: dict[str, Any] = {"holdout": holdout["note"], "warm_log": "", "model": read_meta(warm)["model"]}
    # `airflow dags test`'s output, or the scheduler's task logs
    found = [logs / "retrain.log", *(logs.parent / "airflow" / "logs").glob("dag_id=retrain_and_push_dag/**/*.log")]
    said = warm_start_lines("\n".join(f.read_text(errors="replace") for f in found if f.is_file()))
    # With several candidates the winner may be one that production's weights cannot seed (another kind): then both
    # rows below are from-scratch trainings, and the report says so rather than label the first one warm.
    doc["winner"] = winner
    doc["warm_log"] = said.get(winner, "no warm start line")
    doc["warm_started"] = doc["warm_log"].startswith("from ")
    if not doc["warm_started"]:
        print(f"the winner {winner} trained from scratch ({doc['warm_log']}): its 'warm' row is not a warm start",
              file=sys.stderr)  # fmt: skip
    for name, bundle in (("warm", warm), ("scratch", scratch)):
        m = read_meta(bundle)["metrics"]
        row = {"train_seconds": m["train_seconds"], "epochs_run": m["epochs_run"], "test_auc": m["test_auc"]}
        if holdout["active"]:
            context, held = retrain.holdout_context(work, holdout)
            [p] = retrain.probabilities(bundle, [context])
            row["holdout_auc"] = round(auc(context["answerCode"].to_numpy()[held], p[held]), 4)
            row["holdout_n"] = int(held.sum())
        doc[name] = row
    doc["scratch"]["wall_seconds"] = round(seconds, 1)
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=500, help="students in the initial data set (as make up)")
    p.add_argument("--new", type=int, default=200, help="new interactions stored through the client")
    p.add_argument("--epochs", type=int, help="epoch cap of every training (default: none, early stopping)")
    p.add_argument(
        "--first-epochs",
        type=int,
        help="epoch cap of the first model only (the set-up, before the timed cycle; default: --epochs)",
    )
    p.add_argument("--candidates", default="lstm", help="DKT_TRAIN_CANDIDATES of the retrain step (default: lstm)")
    p.add_argument("--config", default=str(ROOT / "config" / "lstm.json"), help="the first model's config")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("--seed", type=int, default=0,
                   help="the simulated data's seed (the students answering through the client use seed + 1): the"
                   " holdout is a few hundred answers, so compare configs over several seeds")  # fmt: skip
    p.add_argument("--driver", choices=["scheduler", "dags-test"], default="scheduler",
                   help="run the DAGs as `make up` does (default) or each with `airflow dags test`")  # fmt: skip
    p.add_argument("--cold-stack", action="store_true",
                   help="scheduler driver: start Airflow after the answers are stored; its first scheduled run is the"
                   " cycle (its first task pays the fresh api-server's and executor's start)")  # fmt: skip
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dkt-cycle-"))
    airflow = str(load_or_exit(StackSettings).airflow_venv / "bin" / "airflow")
    env = {
        **os.environ,
        "DKT_STORE": "local",
        "DKT_STORE_ROOT": str(tmp / "store"),
        "DKT_WORK_ROOT": str(tmp / "work"),
        "DKT_RUN_DIR": str(tmp / "run"),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "DKT_SERVE_PORT": str(free_port_pair()),
        "DKT_INFERENCE_URL_FILE": str(tmp / "run" / "inference_url"),
        "DKT_CLIENT_DB": str(tmp / "client.db"),
        "DKT_QUESTIONS": str(tmp / "sim" / "questions.csv"),
        "DKT_SECRET_KEY": "bench-only",
        "DKT_TRAIN_CONFIG": args.config,
        "DKT_TRAIN_CANDIDATES": args.candidates,
        "DKT_GATE_MIN_ANSWERS": "100",
        "DKT_PROMOTE_TOLERANCE": "1.0",
        # Every question drawn at random (docs/monitoring.md#exploration): one chosen by target difficulty puts every
        # model's probability near 0.7, and the gate's holdout of those answers at an AUC near 0.5 whatever the model.
        "DKT_EXPLORE_RATE": "1.0",
        "DKT_APP_PYTHON": sys.executable,
        "DKT_TASK_RETRIES": "0",
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DKT_AIRFLOW_PORT": str(free_port()),
        # Every new version retrains here (as `airflow dags test` of the retrain DAG does), whatever the drift of 300
        # answers: with the threshold 0 the retrain DAG starts on the data asset, the drift report is written beside.
        "DKT_DRIFT_PSI_THRESHOLD": "0",
        "DKT_DRIFT_MIN_ANSWERS": "1",
    }
    if args.epochs:
        env["DKT_TRAIN_EPOCHS"] = str(args.epochs)
    else:
        env.pop("DKT_TRAIN_EPOCHS", None)
    os.environ.update(env)
    cap = ["--epochs", str(args.epochs)] if args.epochs else []
    first_cap = ["--epochs", str(args.first_epochs)] if args.first_epochs else cap
    logs = tmp / "logs"
    logs.mkdir()
    py = sys.executable
    print(f"setting up in {tmp} ...", file=sys.stderr)
    sh([airflow, "db", "migrate"], env, logs / "migrate.log")
    sh([py, "-m", "dkt", "simulate", "--users", str(args.users), "--out", str(tmp / "sim"), "--seed", str(args.seed)],
       env, logs / "sim.log")  # fmt: skip
    sh([py, "-m", "dkt", "data", "push", str(tmp / "sim")], env, logs / "push.log")
    # Its lineage names the stored data version (as make up's first model): the gate then knows what it trained on
    # and holds out the answers stored after it.
    data_version = str(VersionedStore.from_env().pointed("datasets", "latest"))
    sh([py, "-m", "dkt", "train", "--config", args.config, "--train-file", str(tmp / "sim" / "train.csv"),
        "--test-file", str(tmp / "sim" / "test.csv"), "--output-dir", str(tmp / "m0"), *first_cap,
        "--model-version", "v0", "--data-version", data_version, "--no-progress"],
       env, logs / "train0.log")  # fmt: skip
    sh([py, "-m", "dkt", "models", "push", str(tmp / "m0"), "--promote"], env, logs / "pushm.log")
    for step in ("pull-model", "pack", "deploy", "verify"):
        sh([py, "-m", "dkt", "deploy", step, "--run-id", "initial"], env, logs / f"initial-{step}.log")
    figures: dict[str, float] = {}
    questions = tmp / "sim" / "questions.csv"
    try:
        with client_server(env, free_port(), logs / "client.log") as base:
            airflow = warm_stack(tmp) if args.driver == "scheduler" and not args.cold_stack else None
            # Students who answer as the training data's do (item difficulty against ability), so the holdout that
            # compares the warm-started and the from-scratch models has something to tell them apart by.
            stored = run_students(base, questions, max(1, args.new // 10), 10, seed=args.seed + 1,
                                  chance=irt_students(questions))  # fmt: skip
            print(f"stored {stored.answers} new interactions through the client ({stored.failed} failed)",
                  file=sys.stderr)  # fmt: skip
            t0, t0_clock = time.perf_counter(), time.time()
            if args.driver == "scheduler":
                with answering(base, questions) as during:
                    figures |= scheduler_cycle(tmp, "v0", airflow)
            else:
                figures["update_data_dag"] = sh([airflow, "dags", "test", "update_data_dag"], env, logs / "update.log")
                figures["retrain_and_push_dag"] = sh([airflow, "dags", "test", "retrain_and_push_dag"], env,
                                                     logs / "retrain.log")  # fmt: skip
                with answering(base, questions) as during:
                    figures["update_inference_server_dag"] = sh(
                        [airflow, "dags", "test", "update_inference_server_dag"], env, logs / "deploy.log"
                    )
                figures["total"] = time.perf_counter() - t0
            store = VersionedStore.from_env()
            prod = store.pointed("models", "production")
            meta = requests.get(deploy.current_url() + "/metadata", timeout=10).json()
            if args.driver == "scheduler":
                pass  # scheduler_cycle timed "new answers -> served" itself, from the data run's creation
            elif load(PipelineSettings).deploy_strategy == "swap":  # served once /metadata reported it (swap_local)
                doc = json.loads((tmp / "run" / "serving.json").read_text())
                figures["served_at_swap"] = float(doc.get("served_at") or 0) - t0_clock
            else:  # served from the moment the client's URL file names the new server (the blue/green switch)
                figures["served_at_switch"] = Path(env["DKT_INFERENCE_URL_FILE"]).stat().st_mtime - t0_clock
        result = {
            "new_interactions": stored.answers,
            "warm_vs_scratch": warm_vs_scratch(tmp / "work", env, cap, logs, args.candidates),
            "seconds": {k: round(v, 1) for k, v in figures.items()},
            "breakdown": breakdown(tmp, figures),
            "served_version": meta.get("model_version"),
            "promoted_version": prod,
            "new_model_served": meta.get("model_version") == prod != "v0",
            # each answer is two requests: GET /practice and POST /answer
            "requests_during_switch": during.answers * 2,
            "failed_requests_during_switch": during.failed,
            "target_total_seconds": 60,
        }
        print_breakdown(result["breakdown"])
        print(json.dumps(result, indent=2))
    finally:
        deploy.stop_local()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
