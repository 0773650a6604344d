"""Feature engineering shared by every model.

The time rule (docs/time-semantics.md): ``Timestamp`` is when the item was SHOWN
to the student. A feature at position t uses only what is known before the
student answers item t: item t itself and when it was shown, and everything
about items before it. The answer and the response time of item t are not known
yet; those of item t-1 are. So ``elapsed`` = Timestamp[t] - Timestamp[t-1] is
allowed: with shown-at times it is the response time of item t-1 plus the gap
before item t was shown. With answered-at times it would contain item t's own
response time, which betrays its answer (a leak: tests/dkt/test_time_semantics.py
shows a model lifted above the simulator's oracle AUC by it).

Rows are ordered per user by time, then each row gets features that use only
that row's item and shown time and the answers *before* it, so any model fed
these features is causal by construction:

- categorical: item, test, skill (KnowledgeTag), item head / paper (head+mid) /
  tail, elapsed time since the previous item was shown (capped at 600 s, bucketed);
- the previous response, as a token of (previous skill or item, previous answer);
- continuous: the user's running accuracy and count, running accuracy on the
  same skill, elapsed time; then the order of the answers before (``dkt.data.order``:
  per skill its last three answers, streak, gap and decayed accuracy; per user the
  streak and decayed accuracy), read by the models configured for them.

Encoders are fitted on training data only. Index 0 is padding and 1 is
"unknown", so unseen ids at serving time still map somewhere meaningful.

Two ways in, one result: a large table goes through pandas' vectorised string and
map operations; a few rows (one served student's history: ``encode_table``,
``encode_columns``) through python lists, since setting up pandas per request cost
two thirds of a cold student's CPU. Both feed ``_encode_sorted``, and
tests/dkt/data/test_features.py holds them equal, dtypes included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dkt.data.order import ORDER_INPUTS, order_features, scale_inputs

PAD, UNK = 0, 1
FIRST = 2  # first real vocabulary index
ELAPSED_CAP_S = 600.0
ELAPSED_BOUNDS_S = np.array([2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450], dtype=np.float64)
# Categorical features fitted from data, and the column each is derived from.
VOCAB_FEATURES: tuple[str, ...] = ("item", "test", "tag", "head", "paper", "tail")
CATEGORICAL: tuple[str, ...] = (*VOCAB_FEATURES, "elapsed")
RESPONSE: tuple[str, ...] = ("prev_answer", "prev_tag_resp", "prev_item_resp")
CONTINUOUS: tuple[str, ...] = ("user_acc", "user_count", "tag_acc", "tag_count", "elapsed_s")
# Every FeatureFrame's ``cont`` columns: CONTINUOUS, then the order of the answers (dkt.data.order), which a model
# reads only where its config asks (``InputConfig.order_inputs``), so bundles trained before them read the first five.
CONT_COLUMNS: tuple[str, ...] = (*CONTINUOUS, *ORDER_INPUTS)


# Rows up to which a table is encoded with python lists: for one student's history (a served request)
# pandas' vectorised string, map and groupby machinery costs more to set up than the rows take.
SMALL_TABLE = 4096


def _raw_columns(df: pd.DataFrame) -> dict[str, pd.Series]:
    item = df["assessmentItemID"].astype(str)
    return {
        "item": item,
        "test": df["testId"].astype(str),
        "tag": df["KnowledgeTag"].astype(str),
        "head": item.str[1:4],
        "paper": item.str[1:7],
        "tail": item.str[7:10],
    }


def _raw_lists(items: list[str], tests: list[str], tags: list[str]) -> dict[str, list[str]]:
    """``_raw_columns`` of a few rows, as lists (the same strings: python's slices are pandas' ``str[a:b]``)."""
    return {
        "item": items,
        "test": tests,
        "tag": tags,
        "head": [i[1:4] for i in items],
        "paper": [i[1:7] for i in items],
        "tail": [i[7:10] for i in items],
    }


@dataclass
class FeatureFrame:
    """Encoded rows, sorted by (user, time); ``row_index`` maps back to input order."""

    users: np.ndarray  # user id per distinct user, in sorted order
    user_starts: np.ndarray  # offsets into the rows, len(users) + 1
    row_index: np.ndarray
    answer: np.ndarray  # -1 / 0 / 1
    cat: dict[str, np.ndarray]
    resp: dict[str, np.ndarray]
    cont: np.ndarray  # (n_rows, len(CONT_COLUMNS)) float32

    def __len__(self) -> int:
        return len(self.answer)

    @property
    def user_lengths(self) -> np.ndarray:
        return np.diff(self.user_starts)


@dataclass
class FeatureEncoder:
    """Fitted vocabularies; serialisable to JSON and saved inside every model bundle."""

    vocab: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame) -> FeatureEncoder:
        labelled = df[df["answerCode"] >= 0]
        raw = _raw_columns(labelled if len(labelled) else df)
        vocab = {}
        for name in VOCAB_FEATURES:
            values = sorted(raw[name].unique())
            vocab[name] = {v: i + FIRST for i, v in enumerate(values)}
        return cls(vocab=vocab)

    def sizes(self) -> dict[str, int]:
        """Embedding table size per categorical / response feature (pad and unknown included)."""
        sizes = {name: len(self.vocab[name]) + FIRST for name in VOCAB_FEATURES}
        sizes["elapsed"] = len(ELAPSED_BOUNDS_S) + 1 + FIRST
        sizes["prev_answer"] = 3 + FIRST  # wrong, correct, unknown answer
        sizes["prev_tag_resp"] = 2 * sizes["tag"] + FIRST
        sizes["prev_item_resp"] = 2 * sizes["item"] + FIRST
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "elapsed_bounds_s": ELAPSED_BOUNDS_S.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureEncoder:
        return cls(vocab={k: {str(v): int(i) for v, i in m.items()} for k, m in d["vocab"].items()})

    def encode_column(self, name: str, values: pd.Series | list[str]) -> np.ndarray:
        vocab = self.vocab[name]
        if not isinstance(values, pd.Series) or len(values) < len(vocab):
            # Few rows (a served student's history): pandas' map would first index the whole vocabulary, per call.
            return np.fromiter((vocab.get(v, UNK) for v in values), dtype=np.int64, count=len(values))
        mapped = values.map(vocab)
        return mapped.fillna(UNK).to_numpy(dtype=np.int64)

    def transform(self, df: pd.DataFrame) -> FeatureFrame:
        """Encode a validated canonical table (see ``dkt.data.schema.validate``)."""
        if len(df) <= SMALL_TABLE:
            return self.encode_table(df, df["userID"].to_numpy())
        user = df["userID"].to_numpy()
        ts = df["Timestamp"].to_numpy().astype("datetime64[ns]")
        # Stable sort keeps file order for answers with equal timestamps.
        order = np.lexsort((np.arange(len(df)), ts, user))
        raw = _raw_columns(df.iloc[order].reset_index(drop=True))
        return self._encode_sorted(user[order], order, raw, df["answerCode"].to_numpy()[order], ts[order])

    def encode_table(self, df: pd.DataFrame, users: np.ndarray | str = "0") -> FeatureFrame:
        """``encode_columns`` of a table's columns (``users``: as there; the default, one student, needs no userID
        column)."""
        return self.encode_columns(
            df["assessmentItemID"].to_numpy().tolist(),
            df["testId"].to_numpy().tolist(),
            df["answerCode"].to_numpy(),
            df["Timestamp"].to_numpy(),
            df["KnowledgeTag"].to_numpy().tolist(),
            users,
        )

    def encode_columns(
        self,
        items: Sequence[Any],
        tests: Sequence[Any],
        answers: Sequence[int] | np.ndarray,
        timestamps: Sequence[Any] | np.ndarray,
        tags: Sequence[Any],
        users: np.ndarray | str = "0",
    ) -> FeatureFrame:
        """``transform`` of rows given as columns (``users``: one id per row, or one for all: one student), without
        building a table: what a served student costs. ``timestamps``: naive UTC, anything numpy reads as
        datetime64 (ISO strings as serving normalises them, datetime64 values)."""
        ts = np.asarray(timestamps, dtype="datetime64[ns]").reshape(-1)
        n = len(ts)
        if not len(items) == len(tests) == len(answers) == len(tags) == n:
            raise ValueError("encode_columns: items, tests, answers, timestamps and tags differ in length")
        if isinstance(users, str):
            user = np.empty(n, dtype=object)
            user[:] = users
            order = np.argsort(ts, kind="stable")  # one user: the time order, ties in input order
        else:
            user = np.asarray(users)
            order = np.lexsort((np.arange(n), ts, user))
        pick = order.tolist()
        # str() as pandas' astype(str) writes them (tags: "7" for 7).
        raw = _raw_lists([str(items[i]) for i in pick], [str(tests[i]) for i in pick], [str(tags[i]) for i in pick])
        return self._encode_sorted(user[order], order, raw, np.asarray(answers, dtype=np.int64)[order], ts[order])

    def _encode_sorted(
        self,
        user: np.ndarray,
        order: np.ndarray,
        raw: dict[str, pd.Series] | dict[str, list[str]],
        answer: np.ndarray,
        ts: np.ndarray,
    ) -> FeatureFrame:
        """The features of rows already in (user, time) order: ``order`` maps them to input rows, ``raw`` holds
        ``_raw_columns`` and ``ts`` the shown-at times (datetime64[ns])."""
        n_rows = len(user)
        new_user = np.ones(n_rows, dtype=bool)
        new_user[1:] = user[1:] != user[:-1]
        starts = np.flatnonzero(new_user)
        user_starts = np.append(starts, n_rows)
        group = np.cumsum(new_user) - 1

        cat = {name: self.encode_column(name, raw[name]) for name in VOCAB_FEATURES}
        seconds = ts.astype(np.int64) / 1e9
        elapsed = np.zeros(n_rows)
        elapsed[1:] = seconds[1:] - seconds[:-1]
        elapsed = np.clip(elapsed, 0.0, ELAPSED_CAP_S)
        elapsed[new_user] = np.nan
        bucket = np.searchsorted(ELAPSED_BOUNDS_S, np.nan_to_num(elapsed), side="right") + FIRST
        bucket[new_user] = UNK
        cat["elapsed"] = bucket.astype(np.int64)

        answer = answer.astype(np.int64)
        known = answer >= 0
        correct = np.where(known, answer, 0)
        # Running sums of *previous* rows: cumulative sum minus the row itself, per user.
        cum_n = _group_cumsum_exclusive(known.astype(np.float64), starts, group)
        cum_c = _group_cumsum_exclusive(correct.astype(np.float64), starts, group)
        # ... and per (user, skill): the same sums over the rows in (user, skill) order, the stable sort keeping
        # time order within each pair. Whole counts, so float64 sums are exact in any order.
        tag_key = group.astype(np.int64) * 1_000_003 + cat["tag"]
        by_tag = np.argsort(tag_key, kind="stable")
        key_sorted = tag_key[by_tag]
        new_key = np.ones(n_rows, dtype=bool)
        new_key[1:] = key_sorted[1:] != key_sorted[:-1]
        key_starts, key_group = np.flatnonzero(new_key), np.cumsum(new_key) - 1
        tag_n, tag_c = np.empty(n_rows), np.empty(n_rows)
        tag_n[by_tag] = _group_cumsum_exclusive(known[by_tag].astype(np.float64), key_starts, key_group)
        tag_c[by_tag] = _group_cumsum_exclusive(correct[by_tag].astype(np.float64), key_starts, key_group)

        prev_ans = np.full(n_rows, UNK, dtype=np.int64)
        prev_ans[1:] = np.where(answer[:-1] >= 0, answer[:-1] + FIRST, FIRST + 2)
        prev_ans[new_user] = UNK
        has_prev = prev_ans >= FIRST
        prev_known = (prev_ans == FIRST) | (prev_ans == FIRST + 1)
        prev_a = np.clip(prev_ans - FIRST, 0, 1)
        prev_tag = np.roll(cat["tag"], 1)
        prev_item = np.roll(cat["item"], 1)
        resp = {
            "prev_answer": prev_ans,
            "prev_tag_resp": np.where(has_prev & prev_known, FIRST + 2 * prev_tag + prev_a, UNK),
            "prev_item_resp": np.where(has_prev & prev_known, FIRST + 2 * prev_item + prev_a, UNK),
        }
        cont = np.stack(
            [*count_features(cum_n, cum_c, tag_n, tag_c), np.nan_to_num(elapsed, nan=0.0) / ELAPSED_CAP_S], axis=1
        ).astype(np.float32)
        # Keyed by the encoded skill, as StudentFeatures keys its running counts.
        in_order = scale_inputs(order_features(group, cat["tag"].tolist(), answer))
        cont = np.concatenate([cont, in_order], axis=1)
        return FeatureFrame(
            users=user[starts],
            user_starts=user_starts,
            row_index=order,
            answer=answer,
            cat=cat,
            resp=resp,
            cont=cont,
        )


def count_features(n: np.ndarray, correct: np.ndarray, tag_n: np.ndarray, tag_correct: np.ndarray) -> list[np.ndarray]:
    """The running-count columns of ``CONTINUOUS`` (all but elapsed_s) from labelled answers before each row.

    One formula for the whole-table encoding here and for a student's state updated one answer at a
    time (``dkt.models.inputs.StudentFeatures``).
    """
    return [
        (correct + 1.0) / (n + 2.0),
        np.log1p(n) / np.log1p(1000.0),
        (tag_correct + 1.0) / (tag_n + 2.0),
        np.log1p(tag_n) / np.log1p(100.0),
    ]


def _group_cumsum_exclusive(x: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    total = np.cumsum(x)
    before_group = np.concatenate([[0.0], total])[starts]
    return total - x - before_group[group]
