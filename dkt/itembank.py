"""The item bank: real arithmetic questions with their correct answers, grouped into tests.

Skills are (operation, level) pairs: addition, subtraction, multiplication and
division at four levels each. Tests hold at most 13 items of one skill; the item
id encodes grade head / test / position as in ``A060001001``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dkt.data.schema import DataValidationError

OPERATIONS: tuple[str, ...] = ("add", "sub", "mul", "div")
LEVELS: tuple[int, ...] = (1, 2, 3, 4)
SYMBOL = {"add": "+", "sub": "-", "mul": "×", "div": "÷"}
MAX_ITEMS_PER_TEST = 13
QUESTION_COLUMNS: tuple[str, ...] = ("assessmentItemID", "testId", "KnowledgeTag", "question", "answer", "difficulty")


@dataclass(frozen=True)
class Skill:
    op: str
    level: int

    @property
    def tag(self) -> int:
        # 1101 = addition level 1, 4404 = division level 4: readable in logs and charts.
        return (OPERATIONS.index(self.op) + 1) * 1100 + self.level

    @property
    def name(self) -> str:
        return f"{self.op} level {self.level}"

    @property
    def head(self) -> int:
        """Grade head: skills of the same level share a grade."""
        return self.level * 10

    @property
    def base_difficulty(self) -> float:
        return -1.5 + 0.9 * (self.level - 1) + 0.35 * OPERATIONS.index(self.op)


SKILLS: tuple[Skill, ...] = tuple(Skill(op, lv) for lv in LEVELS for op in OPERATIONS)


def skill_name(tag: int) -> str:
    for s in SKILLS:
        if s.tag == tag:
            return s.name
    return f"skill {tag}"


def _digits(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(10 ** (n - 1) if n > 1 else 1, 10**n))


def make_question(skill: Skill, rng: np.random.Generator) -> tuple[str, int]:
    """One question of ``skill`` as text, with its integer answer."""
    lv = skill.level
    if skill.op == "add":
        a, b = _digits(rng, lv), _digits(rng, lv)
        return f"{a} + {b}", a + b
    if skill.op == "sub":
        a, b = sorted((_digits(rng, lv), _digits(rng, lv)), reverse=True)
        return f"{a} - {b}", a - b
    if skill.op == "mul":
        a, b = _digits(rng, (lv + 1) // 2 + (lv == 4)), _digits(rng, (lv + 2) // 2)
        return f"{a} × {b}", a * b
    divisor = _digits(rng, 1 if lv < 3 else 2)
    quotient = _digits(rng, 1 if lv == 1 else 2 if lv < 4 else 3)
    return f"{divisor * quotient} ÷ {divisor}", quotient


def build_item_bank(tests_per_skill: int = 4, seed: int = 0) -> pd.DataFrame:
    """Questions of every skill, ``tests_per_skill`` tests each, 8..13 items per test."""
    rng = np.random.default_rng(seed)
    rows = []
    test_no: dict[int, int] = {}
    for skill in SKILLS:
        for _ in range(tests_per_skill):
            test_no[skill.head] = test_no.get(skill.head, 0) + 1
            mid = test_no[skill.head]
            n_items = int(rng.integers(8, MAX_ITEMS_PER_TEST + 1))
            seen: set[str] = set()
            for tail in range(1, n_items + 1):
                text, answer = make_question(skill, rng)
                while text in seen:
                    text, answer = make_question(skill, rng)
                seen.add(text)
                rows.append(
                    {
                        "assessmentItemID": f"A{skill.head:03d}{mid:03d}{tail:03d}",
                        "testId": f"A{skill.head:03d}000{mid:03d}",
                        "KnowledgeTag": skill.tag,
                        "question": f"{text} = ?",
                        "answer": str(answer),
                        "difficulty": round(skill.base_difficulty + float(rng.normal(0, 0.45)), 3),
                    }
                )
    return pd.DataFrame(rows, columns=list(QUESTION_COLUMNS))


def load_questions(path: str | Path) -> pd.DataFrame:
    """Read ``questions.csv``, checking the columns the client and simulator rely on."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(str(path), "item bank not found")
    df = pd.read_csv(path, dtype={"assessmentItemID": str, "testId": str, "answer": str})
    missing = [c for c in QUESTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(str(path), f"missing column(s) {missing}")
    if df["assessmentItemID"].duplicated().any():
        i = int(df["assessmentItemID"].duplicated().to_numpy().nonzero()[0][0])
        raise DataValidationError(str(path), "duplicated assessmentItemID", row=i + 2, column="assessmentItemID")
    return df


def parse_number(given: str) -> int | None:
    """A typed whole number, or None: surrounding spaces, thousands separators and '+' are forgiven."""
    cleaned = given.strip().replace(",", "").replace(" ", "").lstrip("+")
    try:
        return int(cleaned)
    except ValueError:
        return None


def grade(given: str, correct: str) -> bool:
    """Whether a typed answer is right (``parse_number``'s forgiveness)."""
    number = parse_number(given)
    return number is not None and number == int(correct)
