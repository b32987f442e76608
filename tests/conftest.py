"""Shared fixtures: where the real MovieLens data lives, and small composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.fail(f"ml-100k is expected at {ML100K} (../shared/data beside the project)")
    return ML100K
