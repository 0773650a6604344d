"""The model interface: what every model kind provides, and the registry that finds it by name.

A model kind (``lstm``, ``lgbm``, ``ensemble``, ...) is one file, ``dkt/models/<kind>.py``, holding one
class decorated with ``@register`` that subclasses ``ModelKind``. Nothing outside that file touches the
model's internals: training (``dkt.experiment``), loading (``dkt.predictor.load_predictor``), the
ensemble and serving all go through the two classes below.

``ModelKind`` (class methods; the kind is never instantiated)
    ``name``           the ``model`` of ``config/<name>.json``, and the module's name
    ``bundle_kind``    the ``kind`` written to bundle.json ("sequence", "lgbm", "ensemble")
    ``check_params``   check ``model_params`` when the config is read (a bad key names the config file)
    ``train(job)``     fit on ``job.data``, save the model into ``job.out_dir``; returns the fit summary
    ``load(...)``      a ``Predictor`` over a saved bundle folder

``Predictor`` (one loaded model; every method returns P(correct))
    batch form:
      ``predict_rows(df)``             every row of a canonical table, from the rows before it
      ``predict_candidates_batch(jobs)`` each (history, candidates, at) job: candidates shown at ``at``
                                       (``predict_candidates``: one job; ``reference_candidates``: the
                                       slow reference every faster path equals)
    incremental form (the per-student state a serving cache keeps):
      ``initial_state()``              the state of a student with no answers
      ``step(state, answer)``          the state after one more answer (a mapping with
                                       ``dkt.models.inputs.HISTORY_COLUMNS``); answers come in time order
      ``score(state, candidates, at)`` the candidates shown at ``at`` (default now, never before the last
                                       answer) after the answers stepped into ``state``
      ``score_items(state, items, tests, tags, at)``  the same from the candidates' columns (serving's form)
      ``step_batch`` / ``score_items_batch``  the same for several students at once (one model call where the
                                       kind allows: serving merges concurrent returning students)
      ``state_of(history)``            a history table's answers stepped in time order
    The contract: stepping a history's answers one by one from ``initial_state()`` and then scoring gives
    ``predict_candidates(history, candidates, at)`` (within 1e-6); ``tests/dkt/models/test_interface.py``
    checks it for every kind. States are values: ``step`` returns a new state and never changes the one
    it was given, so a cache may hand the same state to concurrent requests. Each kind chooses what a
    state holds: the LSTM its recurrent state (one O(1) step per answer); attention models the encoded
    rows of the window the next answer is scored in (bounded by ``max_seq_len``, the window rule of
    ``dkt.data.sequences.window_start``); LightGBM the running counts its features read
    (``dkt.models.lgbm_features.RunningCounts``); the ensemble one state per member. Each kind's
    ``state_of`` reaches the same state in one pass over the history (a cold student's cost), and
    ``serving/state_cache.py`` keeps states per student between requests.

The registry: ``model_names()`` lists the modules of dkt/models that are not ``SUPPORT_MODULES`` (shared
pieces kinds are built from), without importing them; ``kind_class(name)`` imports ``dkt.models.<name>``
on first use, whose ``@register`` files the class. Lazily, because ``bert`` pulls in transformers, which
would add seconds to every serving replica's start whatever model it serves. Adding a kind:
docs/sequence-models.md, "Adding a model kind".
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from dkt.models.inputs import (
    EMPTY_ANSWER,
    HISTORY_COLUMNS,
    CandidateColumns,
    Job,
    answer_frame,
    candidate_rows,
    check_order,
    known_before,
    resolve_at,
)

if TYPE_CHECKING:
    from dkt.config import ExperimentConfig
    from dkt.data.features import FeatureEncoder


@dataclass
class RunData:
    """The data of one training run: users split into train / valid, and the test file."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    fingerprints: dict[str, str]


@dataclass
class TrainJob:
    """Everything ``ModelKind.train`` needs; ``train_member(config, folder, seed)`` trains another config into a
    folder on this run's data (ensemble)."""

    config: ExperimentConfig
    encoder: FeatureEncoder
    data: RunData
    out_dir: Path
    epochs: int | None
    device: str
    seed: int
    config_dir: Path
    progress: bool
    train_member: Callable[[Path, Path, int], dict[str, Any]]
    # A bundle whose weights seed this training (warm start) where the kind can use them; None: from scratch.
    init_from: Path | None = None


class Predictor(ABC):
    """A loaded model bundle. Subclasses implement ``predict_rows``; the rest has reference implementations."""

    # True where ``step_batch`` of one answer and ``score_items_batch`` of a request's candidates cost a small,
    # bounded time whatever the history (the LSTM: one recurrent step each). Serving then runs a lone returning
    # student on its event loop (serving/state_cache.py ``StateCache.cheap``); the reference forms re-score the
    # answers and attention models a window per candidate, which would hold up every other request meanwhile.
    cheap_step: ClassVar[bool] = False

    def __init__(self, bundle_dir: Path, meta: dict[str, Any]):
        self.bundle_dir = bundle_dir
        self.meta = meta
        self.max_seq_len = int(meta["max_seq_len"])
        catalog_file = bundle_dir / "catalog.json"
        self.catalog: dict[str, list[list[str]]] = (
            json.loads(catalog_file.read_text()) if catalog_file.is_file() else {}
        )

    @property
    def model_name(self) -> str:
        return str(self.meta["model"])

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    # ------------------------------------------------------------ batch form

    @abstractmethod
    def predict_rows(self, df: pd.DataFrame, last_only: bool = False) -> np.ndarray:
        """P(correct) per row of ``df`` (input order); with ``last_only`` only each user's last row (NaN elsewhere)."""

    def predict_last(self, df: pd.DataFrame) -> pd.Series:
        """P(correct) of each user's last row in time order, indexed by userID."""
        prob = self.predict_rows(df, last_only=True)
        keep = ~np.isnan(prob)
        return pd.Series(prob[keep], index=df["userID"].to_numpy()[keep], name="prediction")

    def predict_candidates(
        self, history: pd.DataFrame, candidates: pd.DataFrame, at: pd.Timestamp | None = None
    ) -> np.ndarray:
        """P(correct) of each candidate item if shown at ``at`` (default now) after ``history`` (one student)."""
        return self.predict_candidates_batch([(history, candidates, at)])[0]

    def predict_candidates_batch(self, jobs: Sequence[Job]) -> list[np.ndarray]:
        """``predict_candidates`` for several (history, candidates, at) jobs at once (serving batches requests).

        By default the reference path per job; a kind with a faster way that gives the same numbers overrides this.
        """
        return [self.reference_candidates(history, candidates, at) for history, candidates, at in jobs]

    def reference_candidates(
        self, history: pd.DataFrame, candidates: pd.DataFrame, at: pd.Timestamp | None = None
    ) -> np.ndarray:
        """The reference path of ``predict_candidates``, what every faster path is tested against: one
        pseudo-user per candidate (the history, then that candidate as an answerCode -1 row), scored by
        ``predict_rows`` exactly as ``inference.py`` scores a file.
        """
        if len(candidates) == 0:
            return np.zeros(0)
        at = resolve_at(history, at)
        history = known_before(history, at).loc[:, list(HISTORY_COLUMNS)]
        n, k = len(history), len(candidates)
        rows = pd.concat([history] * k, ignore_index=True) if n else history.iloc[0:0]
        rows = rows.assign(userID=np.repeat(np.arange(k), n).astype(str))
        cand = candidate_rows(candidates, at).assign(userID=np.arange(k).astype(str))
        last = self.predict_last(pd.concat([rows, cand], ignore_index=True))
        return last.reindex(np.arange(k).astype(str)).to_numpy()

    # ------------------------------------------------------------ incremental form

    def initial_state(self) -> Any:
        """A student with no answers. Reference form: the state is the answers themselves."""
        return ()

    def step(self, state: Any, answer: Mapping[str, Any]) -> Any:
        """The state after ``answer``. Reference form: the answers so far, one more appended."""
        row = answer_frame(answer)
        if state:
            check_order(state[-1]["Timestamp"].iloc[0], row["Timestamp"].iloc[0])
        return (*state, row)

    def score(self, state: Any, candidates: pd.DataFrame, at: pd.Timestamp | None = None) -> np.ndarray:
        """P(correct) of each candidate shown at ``at`` after the answers in ``state``. Reference form."""
        if len(candidates) == 0:
            return np.zeros(0)
        history = pd.concat(state, ignore_index=True) if state else answer_frame(EMPTY_ANSWER).iloc[0:0]
        at = resolve_at(history, at)
        if state:
            check_order(history["Timestamp"].iloc[-1], at, "at")
        return self.predict_candidates_batch([(history, candidates, at)])[0]

    def score_items(
        self, state: Any, items: list[str], tests: list[str], tags: list[int], at: pd.Timestamp | None = None
    ) -> np.ndarray:
        """``score`` with the candidates given as columns (item ids, test ids, KnowledgeTags): what serving holds.
        By default through a candidates frame; a kind whose features are built per row overrides it (no pandas)."""
        cands = pd.DataFrame(
            {"assessmentItemID": items, "testId": tests, "KnowledgeTag": np.asarray(tags, dtype=np.int64)},
            columns=["assessmentItemID", "testId", "KnowledgeTag"],
        )
        return self.score(state, cands, at)

    def step_batch(self, states: Sequence[Any], answers: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``step`` of each state with its answer (several students at once: a kind may do it in one model call)."""
        return [self.step(state, answer) for state, answer in zip(states, answers, strict=True)]

    def score_items_batch(self, states: Sequence[Any], candidates: Sequence[CandidateColumns]) -> list[np.ndarray]:
        """``score_items`` of each state with its (items, tests, tags, at) (several students at once)."""
        return [self.score_items(state, *cands) for state, cands in zip(states, candidates, strict=True)]

    def state_of(self, history: pd.DataFrame) -> Any:
        """``history``'s answers stepped in time order (the stable sort ``predict_rows`` uses) from the start."""
        state = self.initial_state()
        for row in history.sort_values("Timestamp", kind="stable").to_dict("records"):
            state = self.step(state, row)
        return state

    # ------------------------------------------------------------ what serving asks

    def catalog_candidates(self, tags: list[int] | None = None) -> pd.DataFrame:
        """The typical items of each skill (all skills by default) as a candidates frame."""
        wanted = [str(t) for t in tags] if tags is not None else list(self.catalog)
        items = [(tag, item, test) for tag in wanted for item, test in self.catalog.get(tag, [])]
        cands = pd.DataFrame(items, columns=["KnowledgeTag", "assessmentItemID", "testId"])
        cands["KnowledgeTag"] = cands["KnowledgeTag"].astype("int64")
        return cands

    @staticmethod
    def mastery(candidates: pd.DataFrame, prob: np.ndarray) -> dict[int, float]:
        """Mean P(correct) per KnowledgeTag of ``catalog_candidates`` scored by ``predict_candidates``."""
        grouped = candidates.assign(p=prob).groupby("KnowledgeTag")["p"].mean()
        return {int(t): float(p) for t, p in grouped.items()}

    def knowledge_state(self, history: pd.DataFrame, tags: list[int] | None = None) -> dict[int, float]:
        """Mastery per skill: mean P(correct) on that skill's typical items, asked next."""
        cands = self.catalog_candidates(tags)
        if not len(cands):
            return {}
        return self.mastery(cands, self.predict_candidates(history, cands))

    def skill_mastery(
        self, history: pd.DataFrame, tags: list[int] | None = None, at: pd.Timestamp | str | None = None
    ) -> dict[int, float]:
        """Per skill with rows in ``history``: mastery after that skill's own rows only (``dkt/mastery.py``),
        all asked at the time the whole history gives (``resolve_at``), so only the evidence differs."""
        at = resolve_at(history, at)
        cands = self.catalog_candidates(tags)
        jobs, order = [], []
        for tag, own in history.groupby("KnowledgeTag", sort=True):
            mine = cands[cands["KnowledgeTag"] == int(tag)]
            if len(mine):
                jobs.append((own, mine, at))
                order.append(int(tag))
        return {tag: float(np.mean(p)) for tag, p in zip(order, self.predict_candidates_batch(jobs), strict=True)}


class ModelKind(ABC):
    """One model kind. Subclasses set ``name`` and ``bundle_kind`` and implement ``train`` and ``load``."""

    name: ClassVar[str]
    bundle_kind: ClassVar[str]

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Called when a config is read (``dkt.config``): raise ValueError naming a bad ``model_params`` key,
        so a bad config stops before any data is loaded or any file is written. This default checks nothing."""
        return None

    @classmethod
    @abstractmethod
    def train(cls, job: TrainJob) -> dict[str, Any]:
        """Fit and save the model into ``job.out_dir``. Returns the fit summary: ``n_params``,
        ``train_seconds``, ``seconds_per_epoch``, ``best_epoch``, ``epochs_run``, ``valid_auc``, ``history``
        (optionally ``selected_by`` / ``selection_reason``)."""

    @classmethod
    @abstractmethod
    def load(cls, bundle_dir: Path, meta: dict[str, Any], device: str = "cpu") -> Predictor:
        """A predictor over the bundle in ``bundle_dir`` (``meta``: its bundle.json)."""

    @classmethod
    def hashed_config(cls, config_doc: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """What bundle.json's ``config_hash`` is taken over: the config, plus whatever else decided the model."""
        return config_doc


# ---------------------------------------------------------------- the registry

_KINDS: dict[str, type[ModelKind]] = {}
# Modules of dkt/models that are not kinds: shared pieces kinds are built from.
SUPPORT_MODULES = frozenset({"base", "inputs", "interface", "lgbm_features", "sequence"})


def register(cls: type[ModelKind]) -> type[ModelKind]:
    """Class decorator: make ``cls`` the kind named ``cls.name`` (which must be the name of its module)."""
    module = cls.__module__.rpartition(".")[2]
    if cls.name != module:
        raise TypeError(f"{cls.__qualname__}: kind {cls.name!r} must live in dkt/models/{cls.name}.py, not {module}")
    if cls.name in _KINDS and _KINDS[cls.name] is not cls:
        raise TypeError(f"model kind {cls.name!r} registered twice")
    _KINDS[cls.name] = cls
    return cls


def model_names() -> list[str]:
    """Every kind: the modules of dkt/models that are not support modules (nothing is imported)."""
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in SUPPORT_MODULES)


def kind_class(name: str) -> type[ModelKind]:
    """The kind registered as ``name``, importing its module on first use."""
    if name not in _KINDS:
        if name not in model_names():
            raise ValueError(f"unknown model {name!r}; known: {model_names()}")
        importlib.import_module(f"dkt.models.{name}")
        if name not in _KINDS:
            raise TypeError(f"dkt/models/{name}.py registers no model kind named {name!r}")
    return _KINDS[name]
