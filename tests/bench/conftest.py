"""What the bench tests share: a pair of 3-line KT files of their own (as DKVMN's data: per student the length, the
skill ids and the answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dkt.simulate import simulate


def write_kt3(df: pd.DataFrame, path: Path) -> None:
    """The 3-line format: per student, the length, the skill ids and the answers (in time order)."""
    lines = []
    for _, g in df.sort_values(["userID", "Timestamp"], kind="stable").groupby("userID", sort=True):
        lines += [str(len(g)), ",".join(map(str, g["KnowledgeTag"])), ",".join(map(str, g["answerCode"]))]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    sim = simulate(50, seed=11).interactions
    sim["KnowledgeTag"] = sim["KnowledgeTag"].astype("category").cat.codes  # skill ids 0..k, as DKVMN's files
    users = np.sort(sim["userID"].unique())
    folder = tmp_path_factory.mktemp("pair")
    write_kt3(sim[sim["userID"].isin(users[:40])], folder / "train.csv")
    write_kt3(sim[sim["userID"].isin(users[40:])], folder / "test.csv")
    return folder / "train.csv", folder / "test.csv"
