"""What the fuzz tests share: the per-target case tally and its report."""

from __future__ import annotations

from collections import Counter

import pytest


def assert_case_counts(cases: Counter[str], accepted: Counter[str], target: int) -> None:
    """Print each target's case count (``-s`` shows it) and fail if any ran fewer than ``target`` cases."""
    if not cases:
        pytest.skip("no fuzz test ran in this session")
    width = max(len(name) for name in cases) + 1
    print("\n" + "\n".join(f"{name:{width}s} {cases[name]:6d} cases, {accepted[name]:5d} accepted"
                           for name in sorted(cases)))
    low = {name: n for name, n in cases.items() if n < target}
    assert not low, f"fuzz tests ran fewer than {target} cases: {low}"
