"""axe-core, the accessibility checker, run in a browser test's page: vendored from npm
(``node_modules/axe-core``, a dev dependency in package.json) into the tests only, never
served to users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(browser: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not AXE.exists():
        pytest.skip(f"axe-core not installed ({AXE}): run scripts/setup")
    browser.execute_script(AXE.read_text())
    result = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact,"
        " nodes: v.nodes.map((n) => n.target.join(' '))}))))"
        ".catch((e) => done([{id: 'axe-error', impact: 'critical', nodes: [String(e)]}]));"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]
