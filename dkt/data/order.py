"""The order of a student's answers, as features: one batch pass and the one-answer step it is made of.

The running counts (``dkt.data.features.count_features``) are order-blind: a skill answered wrong, wrong, right
and one answered right, wrong, wrong have the same accuracy. These features read the order: per skill, its last
three answers, its signed streak, the answers since it was last seen and a decayed accuracy; per student, the
signed streak and a decayed accuracy. LightGBM reads them raw (``dkt.models.lgbm_features``); the sequence models
read them scaled to [-1, 1] as optional continuous inputs (``ORDER_INPUTS``, ``InputConfig.order_inputs``).

Every row's features come from the same student's labelled answers *before* it. The batch pass
(``order_features``) and a served student's state (``OrderState``) step the same functions in the same order, so
the two agree bit for bit (tests/dkt/data/test_order.py).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

ORDER: tuple[str, ...] = (
    "tag_last", "tag_last2", "tag_last3", "tag_streak", "tag_gap", "tag_ewm", "user_streak", "user_ewm"
)  # fmt: skip
TAG_DECAY = 0.5  # tag_ewm: the skill's answers weighted 1, 1/2, 1/4, ... from the latest
USER_DECAY = 0.9  # user_ewm: every answer, weighted 1, 0.9, 0.81, ...
NAN = float("nan")
# A skill's running record: its last three answers, its signed streak, the labelled-answer count at its last answer,
# and tag_ewm's numerator and denominator.
TagRecord = tuple[float, float, float, float, float, float, float]


def streak_after(streak: float, y: float) -> float:
    """A signed run length after answer ``y``: +k after k right answers in a row, -k after k wrong ones."""
    if y:
        return streak + 1.0 if streak > 0 else 1.0
    return streak - 1.0 if streak < 0 else -1.0


def tag_after(record: TagRecord | None, y: float, n: float) -> TagRecord:
    """A skill's record after answer ``y``, the student's labelled answer number ``n`` (0-based)."""
    if record is None:
        return (y, NAN, NAN, streak_after(0.0, y), n, y, 1.0)
    return (
        y, record[0], record[1], streak_after(record[3], y), n, TAG_DECAY * record[5] + y, TAG_DECAY * record[6] + 1.0
    )  # fmt: skip


def user_after(streak: float, num: float, den: float, y: float) -> tuple[float, float, float]:
    """The student's streak and user_ewm's numerator and denominator after answer ``y``."""
    return streak_after(streak, y), USER_DECAY * num + y, USER_DECAY * den + 1.0


def tag_features(record: TagRecord | None, n: float) -> tuple[float, ...]:
    """tag_last .. tag_ewm of a row whose skill has ``record``, after ``n`` labelled answers of the student."""
    if record is None:
        return (NAN,) * 6
    return (record[0], record[1], record[2], record[3], n - record[4], record[5] / record[6])


def order_features(group: np.ndarray, tag: Sequence[Hashable], answer: np.ndarray) -> np.ndarray:
    """``ORDER`` of each row, rows sorted by (user, time): (rows, 8) float64, NaN where there is nothing before
    (``group``: user number per row, ``tag``: the skill key, raw or encoded). About 1 CPU-s per million rows."""
    rows: list[tuple[float, ...]] = []
    _walk(group, tag, answer, rows)
    return np.array(rows, dtype=np.float64).reshape(-1, len(ORDER))


NO_USER = (NAN, NAN)


def _walk(
    group: np.ndarray, tag: Sequence[Hashable], answer: np.ndarray, rows: list[tuple[float, ...]] | None
) -> OrderState:
    """One pass in time order: each row's ``ORDER`` appended to ``rows`` (when given), then its answer; the last user's
    state after all of them. The functions are ``OrderState``'s, so a served student stepped one answer at a time
    gets the same numbers."""
    user = None
    records: dict[Hashable, TagRecord] = {}  # mutated in place here: a copy per answer would cost O(skills)
    n = streak = num = den = 0.0
    for g, t, code in zip(np.asarray(group).tolist(), list(tag), np.asarray(answer).tolist(), strict=True):
        if g != user:
            user, records, n, streak, num, den = g, {}, 0.0, 0.0, 0.0, 0.0
        record = records.get(t)
        if rows is not None:
            rows.append((*tag_features(record, n), *((streak, num / den) if n else NO_USER)))
        if code >= 0:
            y = float(code)
            records[t] = tag_after(record, y, n)
            n, (streak, num, den) = n + 1.0, user_after(streak, num, den, y)
    return OrderState(n=n, tags={t: _pack(*r) for t, r in records.items()}, streak=streak, ewm=(num, den))


# A served student's state keeps each skill's record packed: 89 bytes, where a tuple of seven floats holds 280. The
# state cache keeps one per student (about 45 skills each on ASSISTments 2009), so this is most of its memory.
_RECORD = struct.Struct("7d")
_pack = _RECORD.pack


def _unpack(packed: bytes | None) -> TagRecord | None:
    return None if packed is None else _RECORD.unpack(packed)  # type: ignore[return-value]


@dataclass(frozen=True)
class OrderState:
    """What ``ORDER`` of a student's next row depends on, updated one labelled answer at a time. A value: ``after``
    returns a new one."""

    n: float = 0.0  # labelled answers
    tags: Mapping[Hashable, bytes] = field(default_factory=dict)  # skill key -> its record, packed (``_RECORD``)
    streak: float = 0.0  # user_streak
    ewm: tuple[float, float] = (0.0, 0.0)  # user_ewm's numerator and denominator

    def row(self, tag: Hashable) -> tuple[float, ...]:
        """``ORDER`` of a row on skill ``tag`` after these answers."""
        user = (self.streak, self.ewm[0] / self.ewm[1]) if self.n else NO_USER
        return (*tag_features(_unpack(self.tags.get(tag)), self.n), *user)

    def after(self, tag: Hashable, y: float) -> OrderState:
        """After a labelled answer ``y`` (0.0 or 1.0) on skill ``tag`` (unlabelled answers move nothing)."""
        streak, num, den = user_after(self.streak, *self.ewm, y)
        tags = {**self.tags, tag: _pack(*tag_after(_unpack(self.tags.get(tag)), y, self.n))}
        return replace(self, n=self.n + 1.0, tags=tags, streak=streak, ewm=(num, den))

    @classmethod
    def of(cls, tag: Sequence[Hashable], answer: np.ndarray) -> OrderState:
        """The state after one student's answers in time order, in one pass (``after`` for each, alike)."""
        return _walk(np.zeros(len(answer), dtype=np.int64), tag, answer, None)

    def rows(self, tags: Sequence[Hashable]) -> np.ndarray:
        """``row`` of each skill in ``tags``: (len(tags), 8) float64."""
        return np.array([self.row(t) for t in tags], dtype=np.float64).reshape(-1, len(ORDER))


# ---------------------------------------------------------------- as the sequence models' inputs

ORDER_INPUTS: tuple[str, ...] = tuple(f"order_{name}" for name in ORDER)
STREAK_CAP = 10.0  # streaks scale to [-1, 1] at +-10 answers
GAP_CAP = 1000.0  # answers since the skill was last seen: log-scaled to [0, 1] at 1,000


def scale_inputs(values: np.ndarray) -> np.ndarray:
    """``ORDER`` (rows, 8) as network inputs in [-1, 1], float32: answers and decayed accuracies as 2y - 1, streaks
    over ``STREAK_CAP``, the gap log-scaled; nothing before (NaN) is 0."""
    out = np.empty(values.shape, dtype=np.float64)
    for j in (0, 1, 2, 5, 7):  # tag_last, tag_last2, tag_last3, tag_ewm, user_ewm
        out[:, j] = 2.0 * values[:, j] - 1.0
    for j in (3, 6):  # tag_streak, user_streak
        out[:, j] = np.clip(values[:, j], -STREAK_CAP, STREAK_CAP) / STREAK_CAP
    out[:, 4] = np.minimum(np.log1p(values[:, 4]) / np.log1p(GAP_CAP), 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)
