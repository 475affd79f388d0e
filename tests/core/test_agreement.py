"""nas.core.agreement: the one definition of how well one list of figures stands for another."""

from __future__ import annotations

import pytest

from nas.core.agreement import agreement, describe, paired
from nas.errors import NasError


def test_figures_of_perfect_and_imperfect_agreement():
    f = agreement([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert f == {"n": 4, "spearman": 1.0, "kendall_tau": 1.0, "mape": 0.0, "median_ape": 0.0, "within_10pct": 1.0}
    f = agreement([1.05, 1.5, 2.0, 4.4], [1.0, 2.0, 2.5, 4.0])
    assert f["spearman"] == 1.0 and f["n"] == 4
    assert f["mape"] == pytest.approx((0.05 + 0.25 + 0.2 + 0.1) / 4)
    assert f["median_ape"] == pytest.approx((0.1 + 0.2) / 2)
    assert f["within_10pct"] == 0.5  # 5% and 10% are within, 25% and 20% are not
    assert agreement([2.0, 1.0, 3.0], [1.0, 2.0, 3.0])["kendall_tau"] == pytest.approx(1 / 3)


def test_what_cannot_be_computed_is_none():
    two = agreement([1.0, 3.0], [1.0, 2.0])  # two pairs always rank alike: no rank figure
    assert two["spearman"] is None and two["kendall_tau"] is None and two["mape"] == pytest.approx(0.25)
    assert agreement([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["spearman"] is None  # a constant side ranks nothing
    assert agreement([], [])["n"] == 0 and agreement([], [])["mape"] is None
    assert describe(agreement([], [])) == "no pairs"


def test_bad_input_is_refused():
    for p, m in (([1.0, 2.0], [1.0]), ([float("nan")], [1.0]), ([1.0], [0.0])):
        with pytest.raises(NasError):
            agreement(p, m)


def test_paired_keeps_rows_where_both_figures_are_numbers():
    rows = [{"a": 1, "b": 2}, {"a": None, "b": 2}, {"a": 1, "b": float("nan")}, {"a": "x", "b": 1}, {"a": 3, "b": 0}]
    assert paired(rows, "a", "b") == ([1.0], [2.0])
