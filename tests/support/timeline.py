"""Each pytest-xdist worker's share of a run (a plugin of tests/conftest.py): how long it was busy, how much CPU its
tests used, when it finished and what it ran last, so a run shows whether the schedule kept both workers busy to the
end or left one idle while the other worked through a long tail, and which test files cost the most CPU.

CPU, not wall time, is what tells cost on a shared machine: a test's wall time grows with the load around it, its
CPU-seconds (the worker's and those of the subprocesses it waited for: trainings, CLIs, servers it stopped) do not.
``--timeline FILE`` also writes one JSON line per test phase (worker, test, phase, start, stop, cpu)."""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CPU_KEY = "cpu_s"  # a report's user property: the phase's CPU-seconds, measured where the test ran


def cpu_seconds() -> float:
    """This process's CPU time and that of its children that have ended and been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuMeter:
    """Where tests run (a worker, or the only process): each report carries its phase's CPU-seconds."""

    def __init__(self) -> None:
        self.since = cpu_seconds()

    @pytest.hookimpl
    def pytest_runtest_logstart(self) -> None:
        self.since = cpu_seconds()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self):  # type: ignore[no-untyped-def]  # a pluggy hook wrapper
        outcome = yield
        now = cpu_seconds()
        outcome.get_result().user_properties.append((CPU_KEY, now - self.since))
        self.since = now


@dataclass
class Worker:
    tests: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    first: float = float("inf")
    last: float = 0.0
    last_test: str = ""


@dataclass(eq=False)  # a pytest plugin: pluggy keeps plugins in sets, so it must stay hashable
class Timeline:
    """Where reports arrive (xdist's controller, or the only process)."""

    path: Path | None
    t0: float = field(default_factory=time.time)
    workers: dict[str, Worker] = field(default_factory=lambda: defaultdict(Worker))
    cpu_per_file: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    records: list[str] = field(default_factory=list)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)  # xdist's controller sets it to the worker that sent the report
        name = node.gateway.id if node is not None else "main"
        start, stop = report.start - self.t0, report.stop - self.t0
        cpu = dict(report.user_properties).get(CPU_KEY, 0.0)
        worker = self.workers[name]
        worker.busy += stop - start
        worker.cpu += cpu
        self.cpu_per_file[report.nodeid.split("::")[0]] += cpu
        worker.first = min(worker.first, start)
        if stop >= worker.last:
            worker.last, worker.last_test = stop, report.nodeid
        if report.when == "call":
            worker.tests += 1
        if self.path:
            record = {"worker": name, "test": report.nodeid, "phase": report.when, "start": start, "stop": stop}
            self.records.append(json.dumps({**record, "cpu": cpu}) + "\n")

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.path:
            self.path.write_text("".join(self.records))
        if not self.workers:
            return
        end = max(worker.last for worker in self.workers.values())
        terminalreporter.section("time and CPU per worker")
        for name, worker in sorted(self.workers.items()):
            terminalreporter.write_line(
                f"{name}: {worker.tests} tests, busy {worker.busy:.0f} s, {worker.cpu:.0f} CPU-s, first test at "
                f"{worker.first:.0f} s, done at {worker.last:.0f} s (idle {end - worker.last:.0f} s at the end), "
                f"last: {worker.last_test}"
            )
        top = sorted(self.cpu_per_file.items(), key=lambda kv: -kv[1])[:8]
        terminalreporter.write_line("most CPU: " + ", ".join(f"{path} {cpu:.0f} s" for path, cpu in top))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CpuMeter(), "dkt-cpu-meter")
    if not hasattr(config, "workerinput"):  # not an xdist worker: reports arrive here
        path = config.getoption("--timeline")
        config.pluginmanager.register(Timeline(Path(path) if path else None), "dkt-timeline")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--timeline",
        metavar="FILE",
        default=None,
        help="write one JSON line per test phase: worker, test, phase, start and stop (s from the run's start), cpu",
    )
