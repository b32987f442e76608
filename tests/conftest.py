"""Shared fixtures: where the real MovieLens data lives; the deployment runs started in the background."""

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


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only selected tests start runs
def pytest_collection_modifyitems(session, config, items) -> None:
    """Run tests/test_deployment.py's tests last and start their deployment runs now, in the background
    (``BackgroundRuns`` says why): they wait on Flower's polls while the rest of the suite runs."""
    deployment = [item for item in items if item.path.name == "test_deployment.py"]
    if not deployment or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in deployment] + deployment
    # the module object pytest imported (an import by name here could make a second copy of its state)
    deployment[0].module.start_in_background([item.name for item in deployment])
