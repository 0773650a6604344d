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

A returning client may send only its new answers: ``since=N`` says the history holds the answers after the first
N, which the cached state must hold exactly (each response's ``known_count`` is the N of the next request). Then
the body, its parsing and the hashing no longer grow with the history. A state that does not hold N answers
(evicted, another model version, another count) or a tail that does not follow it is ``NotCached`` (409): the
client sends the whole history, which always works.

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

from dkt.models.inputs import CandidateColumns
from dkt.predictor import Predictor
from serving.frames import job_frames
from serving.schema import Interaction, Job

# One answer as the cache compares it: what the model reads of it (``HISTORY_COLUMNS`` order).
AnswerKey = tuple[str, str, int, str, int]
ANSWER_FIELDS = ("assessmentItemID", "testId", "answerCode", "Timestamp", "KnowledgeTag")
# A state is measured when stored cold and again every this many answers: one more answer changes its size by
# a few bytes (a window state grows by a row until max_seq_len), and walking it costs as much as a model step.
RESIZE_EVERY = 32
# At most this many new answers for a request to count as cheap (``StateCache.cheap``): a returning student sends
# one or a few; each is a model step.
CHEAP_STEPS = 4


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
    digest: int  # ``chain`` of those answers, in time order
    state: Any
    nbytes: int
    last: str | None = None  # the last answer's Timestamp (normalised ISO: sorts as the times do)


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

    def lookup(self, version: str, student_id: str, answers: list[AnswerKey]) -> tuple[Any, int, int] | None:
        """(state, answers it holds, their digest) when the cached state's answers are the first of ``answers``,
        else None."""
        with self.lock:
            self._bind(version)
            entry = self.entries.get(student_id)
            if entry is None:
                self.counters.misses += 1
                return None
        # Outside the lock: walking a long history's hashes must not hold up other students' lookups.
        if entry.version != version or entry.n > len(answers) or chain(0, answers[: entry.n]) != entry.digest:
            with self.lock:
                self.counters.stale += 1
            return None
        return self._hit(student_id, entry, len(answers) - entry.n)

    def lookup_since(self, version: str, student_id: str, since: int) -> Entry:
        """The student's entry when its state holds exactly ``since`` answers (the request carries only the answers
        after them); NotCached otherwise."""
        with self.lock:
            self._bind(version)
            entry = self.entries.get(student_id)
            if entry is None or entry.n != since:
                self.counters.misses += entry is None
                self.counters.stale += entry is not None
                held = "no answers" if entry is None else f"{entry.n} answers"
                raise NotCached(f"since={since}: the service holds {held} for this student_id; send the whole history")
        self._hit(student_id, entry, None)
        return entry

    def _hit(self, student_id: str, entry: Entry, new: int | None) -> tuple[Any, int, int]:
        with self.lock:
            if self.entries.get(student_id) is entry:
                self.entries.move_to_end(student_id)
            self.counters.hits += 1
            self.counters.steps += new or 0
        return entry.state, entry.n, entry.digest

    def store(
        self,
        version: str,
        student_id: str,
        n: int,
        digest: int,
        state: Any,
        resize: bool = True,
        last: str | None = None,
    ) -> None:
        """Keep ``state`` (after ``n`` answers whose ``chain`` is ``digest``, the last at ``last``) as the student's;
        ``resize=False``: it is about the size of the entry it replaces."""
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
            self.entries[student_id] = Entry(version, n, digest, state, nbytes, last)
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

    def scores(self, predictor: Predictor, student_id: str, job: Job, since: int | None = None) -> Scored:
        """P(correct) of ``job``'s candidates after its history, from the student's cached state when it fits.

        ``since``: ``job.history`` holds only the answers after the first ``since`` of the student's history, which
        the cached state must hold exactly (NotCached otherwise: the client sends the whole history instead)."""
        (out,) = self.scores_batch(predictor, [CachedJob(student_id, job, since)])
        if isinstance(out, Exception):
            raise out
        return out

    def scores_batch(self, predictor: Predictor, jobs: list[CachedJob]) -> list[Scored | Exception]:
        """``scores`` of several students at once: their new answers stepped and their candidates scored in one
        model call each (``Predictor.step_batch`` / ``score_items_batch``). A job that cannot be answered gets its
        exception in its place; the others are answered."""
        version = predictor.model_version
        plans: list[_Plan | Exception] = []
        for job in jobs:
            try:
                plans.append(self._plan(predictor, version, job))
            except (NotCached, ValueError) as exc:
                plans.append(exc)
        live = [p for p in plans if isinstance(p, _Plan)]
        try:
            self._run(predictor, live)
        except Exception:  # one job's fault must not fail the others: each alone, so only its caller sees it
            for plan in live:
                try:
                    self._run(predictor, [plan])
                except ValueError as exc:
                    plan.error = NotCached(f"since={plan.since}: {exc}; send the whole history") if plan.since else exc
                except Exception as exc:
                    plan.error = exc
        out: list[Scored | Exception] = []
        for plan in plans:
            if isinstance(plan, Exception) or plan.error is not None:
                out.append(plan if isinstance(plan, Exception) else plan.error)  # type: ignore[arg-type]
                continue
            total = plan.n + len(plan.new)
            resize = plan.cold or total // RESIZE_EVERY > plan.n // RESIZE_EVERY
            last = plan.new[-1][3] if plan.new else plan.last
            self.store(version, plan.student_id, total, chain(plan.digest, plan.new), plan.state, resize, last)
            out.append(Scored([float(p) for p in plan.probs], total))
        return out

    def cheap(self, predictor: Predictor, job: CachedJob) -> bool:
        """Would ``job`` be answered from its cached state with at most ``CHEAP_STEPS`` model steps, on a kind whose
        step and score are cheap (``Predictor.cheap_step``)? What serving may run on its event loop
        (serving/batcher.py); a cold student's full recompute or an attention model's windows may not. Exact (the
        cached answers' digest is checked as ``scores`` checks it) and touches no counter: ``scores`` counts."""
        if not predictor.cheap_step:
            return False
        with self.lock:
            entry = self.entries.get(job.student_id)
        if entry is None or entry.version != predictor.model_version:
            return False
        if job.since is not None:  # the history is the new answers alone
            return entry.n == job.since and len(job.job.history) <= CHEAP_STEPS
        if not entry.n <= len(job.job.history) <= entry.n + CHEAP_STEPS:  # before sorting: most misfits end here
            return False
        _, answers = _answers(job.job)
        return entry.n <= len(answers) <= entry.n + CHEAP_STEPS and chain(0, answers[: entry.n]) == entry.digest

    def _plan(self, predictor: Predictor, version: str, job: CachedJob) -> _Plan:
        """Where ``job`` starts: its cached state and the answers to step in, or a cold state from its history."""
        at_key = job.job.at
        rows, answers = _answers(job.job)
        cands = job.job.candidates
        columns = (
            [c.assessmentItemID for c in cands],
            [c.testId for c in cands],
            [c.KnowledgeTag for c in cands],
            pd.Timestamp(at_key) if at_key else None,
        )
        plan = _Plan(job.student_id, job.since, columns, state=None, n=0, digest=0, new=answers)
        if job.since is not None:
            entry = self.lookup_since(version, job.student_id, job.since)
            # The cached answers cannot be re-read here: a tail that does not follow them is the client's to fix.
            first = answers[0][3] if answers else at_key
            if entry.last is not None and first is not None and first < entry.last:
                what = f"an answer at {answers[0][3]}" if answers else f"at {at_key}"
                raise NotCached(f"since={job.since}: {what} is before the student's last answer ({entry.last})")
            plan.state, plan.n, plan.digest, plan.last = entry.state, entry.n, entry.digest, entry.last
            return plan
        found = self.lookup(version, job.student_id, answers)
        if found is None:
            history, _, _ = job_frames([Job(history=rows, candidates=[], at=at_key)])[0]
            plan.state, plan.cold, plan.new = predictor.state_of(history), True, []
            plan.digest, plan.n = chain(0, answers), len(answers)
            plan.last = answers[-1][3] if answers else None
        else:
            plan.state, plan.n, plan.digest = found
            plan.new = answers[plan.n :]
            plan.last = answers[plan.n - 1][3] if plan.n else None
        return plan

    @staticmethod
    def _run(predictor: Predictor, plans: list[_Plan]) -> None:
        """Step every plan's new answers (round r: the r-th new answer of each plan that has one) and score."""
        states = [p.state for p in plans]
        for r in range(max((len(p.new) for p in plans), default=0)):
            todo = [i for i, p in enumerate(plans) if len(p.new) > r]
            answers = [dict(zip(ANSWER_FIELDS, plans[i].new[r], strict=True)) for i in todo]
            for i, state in zip(todo, predictor.step_batch([states[i] for i in todo], answers), strict=True):
                states[i] = state
        probs = predictor.score_items_batch(states, [p.columns for p in plans]) if plans else []
        for plan, state, prob in zip(plans, states, probs, strict=True):
            plan.state, plan.probs = state, prob


@dataclass(frozen=True)
class CachedJob:
    """One request of a returning (or new) student: what ``StateCache.scores_batch`` answers."""

    student_id: str
    job: Job
    since: int | None = None


@dataclass
class _Plan:
    student_id: str
    since: int | None
    columns: CandidateColumns
    state: Any
    n: int  # answers in ``state`` before ``new``
    digest: int
    new: list[AnswerKey]  # answers still to step in
    cold: bool = False
    last: str | None = None  # Timestamp of the last answer in ``state``
    probs: Any = None
    error: Exception | None = None


@dataclass(frozen=True)
class Scored:
    probabilities: list[float]
    known_count: int  # answers the student's cached state now holds: the ``since`` of their next request


class NotCached(Exception):
    """A request with ``since`` whose answers the cached state cannot take: answered 409 (send the whole history)."""


def _answers(job: Job) -> tuple[list[Interaction], list[AnswerKey]]:
    """The request's answers in time order (ties in request order), as ``job_frames`` orders them (the normalised
    ISO timestamps of serving/schema.py sort as the times do), without those after ``at`` (its future)."""
    rows = sorted(job.history, key=lambda r: r.Timestamp)
    if job.at is not None:
        rows = [r for r in rows if r.Timestamp <= job.at]
    return rows, [(r.assessmentItemID, r.testId, r.answerCode, r.Timestamp, r.KnowledgeTag) for r in rows]


def chain(digest: int, answers: list[AnswerKey]) -> int:
    """``digest`` extended by ``answers``: one hash per answer, so a digest grows with each request's new answers
    whether the request carried the whole history or only its tail."""
    for answer in answers:
        digest = hash((digest, answer))
    return digest
