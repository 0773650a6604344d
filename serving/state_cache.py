"""Per-student model state, cached per (student, model version): a returning student's request costs one model
step per new answer plus the candidates, not the whole history again.

A request that carries ``student_id`` is scored from the state the model reached after that student's history
(``Predictor.initial_state`` / ``step`` / ``score`` / ``state_of``, dkt/models/interface.py: each kind keeps what
it needs, the LSTM its recurrent state, attention models their last window, ...). The request still carries the
whole history, and the history is the truth: the cached state is used only when the request's answers (in time
order, those known by ``at``) start with exactly the answers the state was built from (their hash matches);
then only the answers after them are stepped in. Otherwise (no entry, another model version, a history that is
not an extension of the cached one: edited, shortened, an answer inserted in the past, ``at`` before the cached
last answer) the state is recomputed from the request's history and replaces the entry. So a cache entry never
changes an answer: the scores are those of the same request without ``student_id`` (within float rounding;
``tests/dkt/models/test_interface.py`` ties the incremental form to the batch form).

Bounded by bytes (``DKT_STATE_CACHE_BYTES``): least recently used students are dropped first. One cache per
worker, in memory; dropped whole when the model version changes. Thread-safe: states are values (``step``
returns a new one), so the lock only guards the table.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from dkt.predictor import Predictor
from serving.frames import candidates_frame, job_frames
from serving.schema import Job

# One answer as the cache compares it: what the model reads of it.
AnswerKey = tuple[str, str, int, str, int]
# A state is measured when stored cold and again every this many answers: one more answer changes its size by
# a few bytes (a window state grows by a row until max_seq_len), and walking it costs as much as a model step.
RESIZE_EVERY = 32


def state_bytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Approximate memory held by a state: tensors, arrays and frames by their buffers, containers and
    dataclasses by their parts (each object counted once)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement() + sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return obj.nbytes + sys.getsizeof(obj)
    if isinstance(obj, pd.DataFrame | pd.Series):
        return int(obj.memory_usage(deep=True).sum()) if isinstance(obj, pd.DataFrame) else obj.memory_usage(deep=True)
    size = sys.getsizeof(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return size + sum(state_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return size + sum(state_bytes(k, seen) + state_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, tuple | list):
        return size + sum(state_bytes(v, seen) for v in obj)
    return size


@dataclass
class Entry:
    version: str  # the model version the state belongs to
    n: int  # answers stepped into the state
    digest: int  # hash of those answers, in time order
    state: Any
    nbytes: int


@dataclass
class Counters:
    hits: int = 0  # the cached state was used (its answers a prefix of the request's)
    misses: int = 0  # no entry for the student
    stale: int = 0  # an entry, but not for this history or this model version: recomputed
    steps: int = 0  # answers stepped into cached states
    evicted: int = 0  # entries dropped to stay under the byte bound


class StateCache:
    """LRU map student_id -> model state after their history, at most ``max_bytes`` of states."""

    def __init__(self, max_bytes: int, sizer: Callable[[Any], int] = state_bytes):
        self.max_bytes = max_bytes
        self.sizer = sizer
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.version: str | None = None
        self.counters = Counters()
        self.lock = threading.Lock()

    def _bind(self, version: str) -> None:
        """Dropped on model switch: states of another version are of no use and only hold memory."""
        if version != self.version:
            self.entries.clear()
            self.bytes = 0
            self.version = version

    def lookup(self, version: str, student_id: str, answers: list[AnswerKey]) -> tuple[Any, int] | None:
        """(state, answers it holds) when the cached state's answers are the first of ``answers``, else None."""
        with self.lock:
            self._bind(version)
            entry = self.entries.get(student_id)
            if entry is None:
                self.counters.misses += 1
                return None
            if entry.version != version or entry.n > len(answers) or hash(tuple(answers[: entry.n])) != entry.digest:
                self.counters.stale += 1
                return None
            self.entries.move_to_end(student_id)
            self.counters.hits += 1
            self.counters.steps += len(answers) - entry.n
            return entry.state, entry.n

    def store(self, version: str, student_id: str, answers: list[AnswerKey], state: Any, resize: bool = True) -> None:
        """Keep ``state`` as the student's; ``resize=False``: it is about the size of the entry it replaces."""
        nbytes = self.sizer(state) + sys.getsizeof(student_id) + 200 if resize else 0  # + the entry, its slot
        with self.lock:
            self._bind(version)
            old = self.entries.pop(student_id, None)
            if old is not None:
                self.bytes -= old.nbytes
                nbytes = nbytes or old.nbytes
            if not nbytes:
                nbytes = self.sizer(state) + sys.getsizeof(student_id) + 200
            if nbytes > self.max_bytes:
                return  # one state larger than the whole cache: not kept
            self.entries[student_id] = Entry(version, len(answers), hash(tuple(answers)), state, nbytes)
            self.bytes += nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= dropped.nbytes
                self.counters.evicted += 1

    def describe(self) -> dict[str, Any]:
        """The cache's part of ``/metadata``."""
        with self.lock:
            return {
                "entries": len(self.entries),
                "bytes": self.bytes,
                "max_bytes": self.max_bytes,
                "model_version": self.version,
                **dataclasses.asdict(self.counters),
            }

    def scores(self, predictor: Predictor, student_id: str, job: Job) -> list[float]:
        """P(correct) of ``job``'s candidates after its history, from the student's cached state when it fits."""
        # The request's answers in time order (ties in request order), as ``job_frames`` orders them: the
        # normalised ISO timestamps (serving/schema.py) sort as the times do. Answers after ``at`` are its future.
        rows = sorted(job.history, key=lambda r: r.Timestamp)
        if job.at is not None:
            at_key = job.at
            rows = [r for r in rows if r.Timestamp <= at_key]
        answers = [(r.assessmentItemID, r.testId, r.answerCode, r.Timestamp, r.KnowledgeTag) for r in rows]
        version = predictor.model_version
        found = self.lookup(version, student_id, answers)
        if found is not None:
            state, n = found
            for item, test, code, ts, tag in answers[n:]:
                answer = {"assessmentItemID": item, "testId": test, "answerCode": code, "Timestamp": ts}
                state = predictor.step(state, answer | {"KnowledgeTag": tag})
            resize = len(answers) // RESIZE_EVERY > n // RESIZE_EVERY
        else:
            history, _, _ = job_frames([Job(history=rows, candidates=job.candidates, at=job.at)])[0]
            state, resize = predictor.state_of(history), True
        self.store(version, student_id, answers, state, resize=resize)
        cands, at = candidates_frame(job)
        return [float(p) for p in predictor.score(state, cands, at)]
