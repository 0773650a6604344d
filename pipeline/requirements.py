"""Reading pinned requirements files: which packages a Bento or an image declares, with requirements.txt's pins.

A leaf module (no project imports): packer.py and pipeline/swarm_images.py both need it, and the swarm image code
reaches the local stack, which reaches the packer, so it cannot live in either without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(lines: Iterable[str]) -> list[str]:
    """The package names of a requirements file's lines (comments and options such as ``-c`` skipped)."""
    return [m.group(1) for line in lines if (m := _REQ_NAME.match(line))]


def filter_requirements(lines: Iterable[str], include: list[str] | None, exclude: list[str]) -> list[str]:
    """The pinned lines of requirements.txt an image needs: pins never drift from the app venv's."""
    wanted = {n.lower() for n in include} if include is not None else None
    dropped = {n.lower() for n in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        m = _REQ_NAME.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        name = m.group(1).lower()
        if name in dropped or (wanted is not None and name not in wanted):
            continue
        seen.add(name)
        out.append(line.strip())
    if wanted is not None and (missing := wanted - seen):
        raise ValueError(f"requirements.txt has no pin for {', '.join(sorted(missing))}")
    return out
