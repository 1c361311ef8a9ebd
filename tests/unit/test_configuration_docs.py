"""docs/configuration.md stays true: every setting is documented, and nothing stale is."""

from __future__ import annotations

import re
from pathlib import Path

from hammerlock.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented_and_no_stale_rows() -> None:
    documented = set(re.findall(r"^\| `HAMMERLOCK_([A-Z0-9_]+)` \|", DOC.read_text(), re.M))
    declared = {name.upper() for name in Settings.model_fields}
    assert declared - documented == set(), "add these to docs/configuration.md"
    assert documented - declared == set(), "these rows describe settings that do not exist"
