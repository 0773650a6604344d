"""Where a pipeline step's seconds go, kept beside its files: ``<work folder>/timings.json``.

Each step of the retrain and deploy DAGs times its parts (``Laps``) and records them under its own name;
bench/cycle_bench.py reads them back and sets them against the Airflow task's duration, so what is left is the
task's start (Airflow's task runner, the app process and its imports). Only figures: nothing decides on them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE = "timings.json"


class Laps:
    """Named wall-clock laps of one step, in the order they ran (a name timed twice adds up)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def record(work: Path, step: str, laps: Laps, **extra: float | int | str | None) -> None:
    """Write ``step``'s laps (and its total) into the work folder's timings, replacing an earlier try's."""
    path = work / FILE
    doc = read(work)
    doc[step] = {"total": laps.total(), **laps.seconds, **extra}
    tmp = path.with_name(f".{FILE}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def read(work: Path) -> dict[str, dict[str, float | int | str | None]]:
    path = work / FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
