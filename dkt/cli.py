"""``dkt``: the project's one command line (installed by ``make setup``; ``python -m dkt`` is the same).

    dkt train --config config/lstm.json --train-file F --test-file F --output-dir DIR
    dkt infer --model-dir DIR --data-file F --output F
    dkt simulate --users 1000 --out data/sim
    dkt pack --model-dir DIR [--no-bento]
    dkt serve [--model-dir DIR] [--host H] [--port P]
    dkt data list | push DIR | pull [latest|V] --dest DIR | export|prepare|publish|advance-watermark --run-id ID
    dkt data drift [V] [--reference V] [--json]
    dkt models list | push BUNDLE [--promote] | pull | promote V | rollback | <retrain step> --run-id ID
    dkt models quality [--by tag|day] [--model-version V] [--json]
    dkt models shadow V | shadow --clear | promote-shadow [--client-db F] | promotions [--json]
    dkt client run | export-interactions|export-predictions --since W --out F | routes
    dkt file-export --source DIR --since TIMESTAMP --out F
    dkt deploy pull-model|pack|deploy|verify --run-id ID | stop
    dkt steps --run-id ID 'data export' 'data prepare' ...   (DAG steps in one process)
    dkt stack up | down | status | airflow-env
    dkt swarm deploy | scale | status | down
    dkt settings [show | markdown [--write README.md]]

Every command has ``--help``. One style throughout: options are ``--kebab-case``, what a command acts on
is positional. Exit codes: 0 done; 2 bad input, with one line ``error: ...`` on stderr and no traceback;
99 nothing to do (a skip for Airflow: no new data, a candidate not promoted).

A command's code is imported only when it runs, so ``dkt --help`` starts no torch, pandas or BentoML.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

EXIT_BAD_INPUT = 2
EXIT_SKIP = 99  # nothing to do: Airflow marks the task skipped (dags/dkt_tasks.py: skip_on_exit_code)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line ``error: PROG: what is wrong``, exit 2.

    argparse's own (a usage block, then ``PROG: error: ...``) spreads one mistake over several lines;
    every command of ``dkt`` builds its parser from this class, so bad flags read the same everywhere."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def add_dag_steps(sub: argparse._SubParsersAction, dag: str, steps: tuple[str, ...]) -> dict[str, Parser]:
    """A DAG's tasks as subcommands (what each task runs), each with the ``--run-id`` naming its work folder."""
    parsers = {}
    for step in steps:
        parsers[step] = sub.add_parser(step, help=f"{dag} step: {step}")
        parsers[step].add_argument("--run-id", required=True, help="the DAG run id; names the work folder")
    return parsers


def run_actions(
    prog: str, description: str | None, actions: dict[str, tuple[Callable[[], int], str]], argv: list[str] | None
) -> int:
    """A command whose subcommands take no options (``dkt stack up``): ``actions`` maps each name to its function
    and help line; parses ``argv`` and returns the chosen function's exit code."""
    p = Parser(prog=prog, description=description)
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(actions) + "}")
    for name, (_, text) in actions.items():
        sub.add_parser(name, help=text, description=text)
    return actions[p.parse_args(argv).command][0]()


def exit_code(exc: SystemExit) -> int:
    """The exit code of a command run in this process that raised SystemExit (argparse's bad input has printed its
    one line): its own code when it gave one, else bad input."""
    return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT


class Command(NamedTuple):  # a NamedTuple, not a dataclass: dataclasses imports inspect, a third of startup
    target: str  # "module:function"; the function takes the arguments after the command name, returns the exit code
    help: str

    def run(self, argv: list[str]) -> int:
        module, func = self.target.split(":")
        return int(getattr(importlib.import_module(module), func)(argv) or 0)


COMMANDS: dict[str, Command] = {
    "train": Command("dkt.commands.train:main", "train a model and write a model bundle (train.py)"),
    "infer": Command("dkt.commands.infer:main", "batch inference: P(correct) of the answerCode -1 rows (inference.py)"),
    "simulate": Command("dkt.simulate:main", "simulate students: the product's embedded data set"),
    "pack": Command("packer:main", "put a model bundle into the BentoML store and build the Bento (packer.py)"),
    "serve": Command("dkt.commands.serve:main", "run the inference service (bentoml serve of service.py)"),
    "data": Command("data.cli:main", "versioned data sets in the store, and the update_data_dag steps"),
    "models": Command("models.cli:main", "versioned models in the store, promotion, and the retrain DAG steps"),
    "client": Command("client.cli:main", "the student web app: run it, export its answers (Flask's CLI)"),
    "file-export": Command("pipeline.file_export:main", "export answers dropped as CSV files (a DKT_EXPORT_CMD)"),
    "deploy": Command("pipeline.deploy:main", "the update_inference_server_dag steps, and stopping the local service"),
    "steps": Command("pipeline.steps:main", "several DAG steps of one run in one process (what a DAG task runs)"),
    "stack": Command("pipeline.stack:main", "the whole product on this machine (make up / make down)"),
    "swarm": Command("pipeline.swarm:main", "the product as a Docker Swarm stack"),
    "settings": Command("dkt.settings:main", "the environment variables: effective values (secrets masked), docs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    return "usage: dkt COMMAND [ARGS...]   (dkt COMMAND --help for each)\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("error: dkt: a command is required (see dkt --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    name, args = argv[0], argv[1:]
    if name in ("-h", "--help"):
        title, rest_of_doc = __doc__.split("\n\n", 1)
        print(f"{title}\n\n{usage()}\n{rest_of_doc.rstrip()}")
        return 0
    if name == "--version":
        from dkt import __version__

        print(f"dkt {__version__}")
        return 0
    command = COMMANDS.get(name)
    if command is None:
        print(f"error: dkt: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
