"""``--dist loadgroup`` working with pytest 9.2 (a plugin of tests/conftest.py)."""

from __future__ import annotations

import pytest
from _pytest.nodeid import NodeId


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which tries the same and no longer can
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup`` sends the tests whose node ids end in ``@group`` to one worker. pytest-xdist 3.8 adds the
    suffix by assigning ``item._nodeid``, which pytest 9.2 no longer reads (a node's id is ``item._id``, a NodeId):
    the groups were silently ignored and each worker started its own `bentoml serve`. Same suffix, where 9.2 keeps it;
    a no-op once xdist sets it itself."""
    if not config.getoption("loadgroup", False):  # set by xdist on workers under --dist loadgroup
        return
    for item in items:
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(groups))
        if groups and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


def pytest_configure(config: pytest.Config) -> None:
    # xdist registers the mark; without it (-p no:xdist, a single process) --strict-markers would stop collection.
    config.addinivalue_line("markers", "xdist_group(name): run on the same xdist worker as the group's other tests")
