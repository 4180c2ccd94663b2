"""Shared test settings: where the real sample files are, and the environment every test needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (CI clones main with shared/ beside it); overridable.
SHARED_DATA = Path(os.environ.get("MEDSHARDS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample files; tests that need them skip cleanly when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample files not found at {SHARED_DATA} (set MEDSHARDS_SHARED_DATA)")
    return SHARED_DATA
