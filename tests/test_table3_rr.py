"""Table 3's computed R.R. columns (benchmarks/table3.py --rr-presets) against what the codecs must give.

A float32 update quantised to one byte per value is 4x smaller, less the framing; a rank-r SVD of an
[n_items, row_dim] update sends r x (n_items + row_dim) floats instead of n_items x row_dim.
"""

from __future__ import annotations

import pytest

from benchmarks.table3 import computed_reduction_ratio, rr_config


def test_bit8_and_svd_ratios_follow_from_their_payloads():
    bit8 = computed_reduction_ratio("ml_1m", "mf", "bit8")
    assert 3.9 < bit8 < 4.0
    n_items, row_dim, rank = 3883, 65, 10  # synthetic ML-1M, MF d = 64 + bias, Table 10's rank
    svd = computed_reduction_ratio("ml_1m", "mf", "svd")
    assert svd == pytest.approx(n_items * row_dim / (rank * (n_items + row_dim)), rel=0.02)  # framing: array names, dense gradient, metrics


def test_secemb_ratio_grows_with_the_item_count():
    """SecEmb uploads m' rows whatever the catalogue; Secure FedRec uploads every row."""
    assert computed_reduction_ratio("yelp", "mf", "secemb") > 5 * computed_reduction_ratio("ml_1m", "mf", "secemb")


def test_secemb_cells_take_both_the_columns_dim_and_m_prime():
    cfg = rr_config("ml_10m", "ncf", "secemb")
    assert cfg.model.dim == 24 and cfg.strategy.m_prime == 300
