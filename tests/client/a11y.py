"""An automated accessibility check any browser test can call: axe-core run inside the page by Playwright.

axe-core's JavaScript comes from the axe-playwright-python wheel (requirements-dev.txt, installed by `make
test-setup` with the other test tools), which bundles axe.min.js: nothing is fetched from the network when the
tests run. Only the script is used: it is evaluated in the page and ``axe.run`` is called here, so the rule set
is ours: WCAG 2.0/2.1 A and AA (labels, names, contrast, structure) plus axe's best practices.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

RULE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@cache
def axe_script() -> str:
    import axe_playwright_python  # the wheel's location is all we need from it

    return (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text(encoding="utf-8")


def violations(page: Any) -> list[dict[str, Any]]:
    """What axe-core finds on the page as it is now: each rule broken, with the elements that break it."""
    page.evaluate(axe_script())
    options = {"runOnly": {"type": "tag", "values": RULE_TAGS}, "resultTypes": ["violations"]}
    result = page.evaluate("options => axe.run(document, options)", options)
    return list(result["violations"])


def describe(found: list[dict[str, Any]]) -> str:
    lines = []
    for v in found:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"][:5]:
            why = " ".join(node.get("failureSummary", "").split())
            lines.append(f"    {' '.join(str(t) for t in node['target'])}: {why}")
    return "\n".join(lines)


def check(page: Any, what: str) -> None:
    """Fail the test, listing every rule broken and where, when axe-core finds anything on ``page``."""
    found = violations(page)
    assert not found, f"accessibility problems on {what} ({page.url}):\n{describe(found)}"
