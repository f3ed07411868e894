"""Shared fixtures: where the real measured data lives, skipping when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; skip when a fresh clone has no such folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real measured data not found at {SHARED_DATA} (clone the project beside ../shared)")
    return SHARED_DATA
