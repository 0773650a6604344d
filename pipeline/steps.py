"""``dkt steps``: several DAG steps of one run in one process (what an Airflow task that runs them in order calls).

    dkt steps --run-id ID 'data export' 'data prepare' 'data publish'
    dkt steps --run-id ID 'models pull-data' "models train --candidates 'lstm,saint'"

Each step is the same command a person runs by hand (``dkt data export --run-id ID``), given as one argument and
split like a shell line; ``--run-id`` is added to each. They run in order in this process, so the interpreter, the
store client and the libraries (pandas, torch) are loaded once, not once a step (1-1.5 CPU-s each). Each step keeps
its own output, its own ``error: ...`` line and exit code, and its own figures in the work folder's timings.json; the
first step that does not exit 0 ends the run with its code (2: failed; 99: skip, the task is marked skipped).
The wall seconds of each step go into timings.json under ``task <steps>``, so the bench can set them against the
Airflow task's duration.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from typing import Any

from dkt.cli import COMMANDS, Parser, exit_code


def command_module(command: str) -> Any:
    """The module behind ``dkt COMMAND`` (data.cli, models.cli, pipeline.deploy): its FLOW and DAG_STEPS."""
    return importlib.import_module(COMMANDS[command].target.split(":")[0])


def dag_steps() -> dict[str, tuple[str, ...]]:
    """The DAG steps, per command, as each command module declares them: only these run here (each takes
    --run-id and works in its flow's work folder)."""
    return {c: tuple(command_module(c).DAG_STEPS) for c in ("data", "models", "deploy")}


def parse(argv: list[str] | None) -> tuple[str, list[list[str]]]:
    p = Parser(prog="dkt steps", description=__doc__)
    p.add_argument("--run-id", required=True, help="the DAG run id, given to every step; names the work folder")
    p.add_argument("step", nargs="+", help="one step with its options, one argument each: 'data export'")
    args = p.parse_args(argv)
    known_steps = dag_steps()
    steps = []
    for text in args.step:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            p.error(f"step {text!r}: {exc}")
        if len(words) < 2 or words[1] not in known_steps.get(words[0], ()):
            known = "; ".join(f"{c} {'|'.join(s)}" for c, s in known_steps.items())
            p.error(f"step {text!r} is not a DAG step (known: {known})")
        if "--run-id" in words:
            p.error(f"step {text!r}: --run-id is given once, before the steps")
        steps.append(words)
    return args.run_id, steps


def run_step(words: list[str]) -> int:
    """One step in this process: its command's exit code (argparse's SystemExit included)."""
    try:
        return COMMANDS[words[0]].run(words[1:])
    except SystemExit as exc:  # a step's own bad input: argparse has printed its one line
        return exit_code(exc)


def main(argv: list[str] | None = None) -> int:
    from pipeline import timings
    from pipeline.workdir import work_dir

    run_id, steps = parse(argv)
    laps = timings.Laps()
    code = 0
    for words in steps:
        name = " ".join(words[:2])
        with laps.lap(name):
            code = run_step([*words, "--run-id", run_id])
        if code:
            print(f"steps: {name} exited {code}; the steps after it do not run", file=sys.stderr)
            break
    # The flow's work folder, from the step's own command module (data.cli.FLOW, models.cli.FLOW, ...).
    flow = command_module(steps[0][0]).FLOW
    work = work_dir(flow, run_id)
    work.mkdir(parents=True, exist_ok=True)
    timings.record(work, "task " + ", ".join(" ".join(w[:2]) for w in steps), laps)
    return code


if __name__ == "__main__":
    sys.exit(main())
