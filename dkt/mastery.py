"""Mastery levels per skill that a student can trust: the model's P(correct) *and* the evidence behind it.

The contract (stable; the student pages and the teacher views import these names):

``LEVELS``
    ``("not started", "practising", "familiar", "proficient", "mastered")``, lowest first. A level's index
    in ``LEVELS`` orders levels (``LEVELS.index(a) > LEVELS.index(b)``: ``a`` is the higher one).

``level(mastery, evidence, recent=()) -> str``
    A pure function. ``mastery`` is the model's P(correct) on that skill's typical items asked now
    (``Predictor.knowledge_state``, the service's ``/knowledge_state``), ``None`` when the model gave none;
    ``evidence`` is how many answers the student gave in that skill; ``recent`` the last few of those
    answers' ``answerCode`` (1 right, 0 wrong), oldest first. The rules, highest level first, the first that
    holds wins (``RULES``):

    ============  =============  =================  ===================================
    level         mastery >=     answers in skill    of the last ``RECENT`` answers
    ============  =============  =================  ===================================
    mastered      0.85           6                   all right (at least 3 of them)
    proficient    0.70           4                   at most one wrong
    familiar      0.55           2                   at least one right
    practising    any            1                   any
    not started   no answers (whatever the model says: never the population average)
    ============  =============  =================  ===================================

    Why evidence gates every level: the model's P(correct) for a skill never answered is what students
    like this one score on it (ability transfers between skills), not knowledge of that skill; and one
    lucky answer must not read "mastered". Why the recent answers gate the top two: a level is a promise
    about the next questions, and a run of recent mistakes breaks it whatever the longer history says.

``skill_evidence(history) -> dict[int, tuple[int, list[int]]]``
    Per ``KnowledgeTag`` in ``history`` (a DataFrame or an iterable of mappings with ``KnowledgeTag``,
    ``answerCode`` and ``Timestamp``): how many answers (``answerCode`` 0 or 1; -1, "not answered", is no
    evidence) and the last ``RECENT`` answer codes, oldest first, in time order (a stable sort on
    ``Timestamp``, as the models read a history).

``skill_levels(mastery, history, skill_mastery=None) -> list[dict]``
    What ``/knowledge_state`` returns per skill: ``KnowledgeTag``, ``mastery``, ``skill_mastery``, ``level``,
    ``evidence``.

Two masteries, both the model's P(correct) on the skill's typical items asked now:

- ``mastery``: after the whole history. Every answer moves every skill's figure (the model reads ability off
  all answers, and features such as the running accuracy are the student's, not the skill's): after one
  answer in skill s, s moves *less* than the average other skill (docs/mastery.md, bench/mastery_bench.py).
- ``skill_mastery`` (what a page shows, and what ``level`` is decided from): after the student's answers in
  that skill only (``Predictor.skill_mastery``), ``None`` for a skill without answers. An answer in s moves s;
  another skill's figure moves only with time (forgetting), so a bar is that skill's own evidence, read by
  the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

LEVELS: tuple[str, ...] = ("not started", "practising", "familiar", "proficient", "mastered")
RECENT = 5  # how many of a skill's last answers ``recent`` keeps: enough for "the last few", few enough to be recent


@dataclass(frozen=True)
class Rule:
    """A level holds when every bound does."""

    level: str
    min_mastery: float
    min_evidence: int
    max_recent_wrong: int | None  # None: the recent answers do not matter
    min_recent_right: int = 0


RULES: tuple[Rule, ...] = (
    Rule("mastered", 0.85, 6, max_recent_wrong=0, min_recent_right=3),
    Rule("proficient", 0.70, 4, max_recent_wrong=1),
    Rule("familiar", 0.55, 2, max_recent_wrong=None, min_recent_right=1),
    Rule("practising", 0.0, 1, max_recent_wrong=None),
)


def shown_mastery(skill: Mapping[str, Any]) -> float:
    """The figure a page shows for one skill of a /knowledge_state answer: the skill's own mastery (the model
    after that skill's answers only) where the service gives one; else the whole-history ``mastery`` (a skill
    without answers, or a service from before ``skill_mastery``). The whole-history figure moves every skill
    with each answer."""
    own = skill.get("skill_mastery")
    return float(own if own is not None else skill["mastery"])


def level(mastery: float | None, evidence: int, recent: Sequence[int] = ()) -> str:
    """The skill's level from the model's ``mastery`` and the ``evidence`` (count, ``recent`` answer codes)."""
    if evidence <= 0:
        return LEVELS[0]
    last = [int(a) for a in recent][-RECENT:]
    wrong = sum(1 for a in last if a == 0)
    right = sum(1 for a in last if a == 1)
    for rule in RULES:
        if mastery is None and rule.min_mastery > 0:
            continue  # no model figure: evidence alone never claims more than "practising"
        if mastery is not None and mastery < rule.min_mastery:
            continue
        if evidence < rule.min_evidence or right < rule.min_recent_right:
            continue
        if rule.max_recent_wrong is not None and wrong > rule.max_recent_wrong:
            continue
        return rule.level
    return LEVELS[0]  # unreachable: "practising" holds for any evidence >= 1


def _rows(history: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[tuple[pd.Timestamp, int, int]]:
    if isinstance(history, pd.DataFrame):
        cols = history[["Timestamp", "KnowledgeTag", "answerCode"]]
        records = cols.itertuples(index=False, name=None)
    else:
        records = ((r["Timestamp"], r["KnowledgeTag"], r["answerCode"]) for r in history)
    return [(pd.Timestamp(ts), int(tag), int(code)) for ts, tag, code in records]


def skill_evidence(history: pd.DataFrame | Iterable[Mapping[str, Any]]) -> dict[int, tuple[int, list[int]]]:
    """Per KnowledgeTag: (answers given in it, its last ``RECENT`` answer codes oldest first)."""
    rows = sorted(_rows(history), key=lambda r: r[0])  # sorted() is stable: ties keep the history's order
    count: dict[int, int] = {}
    last: dict[int, list[int]] = {}
    for _, tag, code in rows:
        if code not in (0, 1):
            continue
        count[tag] = count.get(tag, 0) + 1
        last.setdefault(tag, []).append(code)
    return {tag: (count[tag], last[tag][-RECENT:]) for tag in count}


def skill_levels(
    mastery: Mapping[int, float],
    history: pd.DataFrame | Iterable[Mapping[str, Any]],
    skill_mastery: Mapping[int, float] | None = None,
) -> list[dict[str, Any]]:
    """Per skill of ``mastery`` (sorted by tag): both masteries, the level and the evidence count.

    The level is decided from ``skill_mastery`` (the skill's own answers) when given, else from ``mastery``.
    """
    evidence = skill_evidence(history)
    out = []
    for tag, p in sorted(mastery.items()):
        n, recent = evidence.get(tag, (0, []))
        own = skill_mastery.get(tag) if skill_mastery is not None and n else None
        shown = own if skill_mastery is not None else p
        out.append(
            {
                "KnowledgeTag": tag,
                "mastery": p,
                "skill_mastery": own,
                "level": level(shown, n, recent),
                "evidence": n,
            }
        )
    return out
