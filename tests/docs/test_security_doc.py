"""docs/security.md names, for every attack, the test that proves its defence: those tests exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_security_doc_names_exists() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    named = set(re.findall(r"\b(test_[a-z0-9_]+)", doc))
    sources = {path.stem: path.read_text() for path in (ROOT / "tests").rglob("test_*.py")}
    defined = {name for text in sources.values() for name in re.findall(r"^def (test_[a-z0-9_]+)", text, re.MULTILINE)}
    missing = sorted(name for name in named if name not in defined and name not in sources)
    assert len(named) > 40, "the threat tables lost their test references"
    assert missing == [], f"docs/security.md names tests that do not exist: {missing}"
