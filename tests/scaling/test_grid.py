"""nas.scaling.grid: the compound-scaling grid (EfficientNet V1 section 3.3), its constraint, the spread
subset, the scaled networks and the plan."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from nas.errors import NasError
from nas.scaling.grid import (
    BASE,
    Candidate,
    GridOptions,
    GridSpec,
    enumerate_candidates,
    plan_grid,
    proxy_duplicates,
    scale_candidate,
    select_spread,
)
from nas.trial.settings import ProxyConfig, TrialSettings
from search_spaces import Architecture, count_params, preset

PAPER = Candidate(1.2, 1.1, 1.15)
TINY = Architecture.from_string("stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res32")

# -- the constraint and the enumeration --------------------------------------------------------------


def test_small_grid_matches_the_hand_count():
    # Values 1.0, 1.2, 1.4 (squares 1, 1.44, 1.96); products within [1.9, 2.1] worked out by hand:
    # alpha=1: b**2*g**2 in {1.96 (1, 1.4), 2.0736 (1.2, 1.2), 1.96 (1.4, 1)}; alpha=1.2: none
    # (1.2*1.44 = 1.728, 1.2*1.96 = 2.352); alpha=1.4: 1.4*1.44 = 2.016 twice.
    got = enumerate_candidates(GridSpec(step=0.2, lo=1.0, hi=1.4, tolerance=0.1))
    assert got == [
        Candidate(1.0, 1.0, 1.4),
        Candidate(1.0, 1.2, 1.2),
        Candidate(1.0, 1.4, 1.0),
        Candidate(1.4, 1.0, 1.2),
        Candidate(1.4, 1.2, 1.0),
    ]


def test_default_grid_count_agrees_with_exact_decimal_arithmetic():
    spec = GridSpec()
    vals = [Decimal("1") + i * Decimal("0.05") for i in range(21)]
    exact = sum(1 for a in vals for b in vals for g in vals if abs(a * b * b * g * g - 2) <= Decimal("0.1"))
    got = enumerate_candidates(spec)
    assert len(got) == exact == 109
    assert spec.grid_points == 21**3
    assert all(abs(c.product - 2) <= 0.1 + 1e-9 for c in got)
    assert len(set(got)) == len(got)


def test_paper_coefficients_and_the_boundary_are_in_the_default_grid():
    got = set(enumerate_candidates(GridSpec()))
    assert PAPER in got  # product 1.920
    assert Candidate(1.9, 1.0, 1.0) in got  # exactly on the tolerance boundary (|1.9 - 2| = 0.1)
    assert Candidate(1.85, 1.0, 1.0) not in got
    assert BASE not in got  # the base (product 1) is the reference point, not a candidate


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"lo": 0.9}, "--min"),
        ({"step": 0}, "--step"),
        ({"hi": 0.99}, "--max"),
        ({"tolerance": -1}, "--tolerance"),
        ({"phi": -1}, "--phi"),
        ({"phi": 0}, "--phi"),
        ({"step": 1e-5}, "--step"),
        ({"lo": float("nan")}, "--min"),
    ],
)
def test_bad_grid_specs_name_the_flag(kwargs, word):
    with pytest.raises(NasError, match=word):
        GridSpec(**kwargs)


# -- the spread subset -----------------------------------------------------------------------------------


def test_selection_is_deterministic_spread_and_prefix_stable():
    cands = enumerate_candidates(GridSpec())
    eight = select_spread(cands, 8)
    assert eight == select_spread(list(reversed(cands)), 8)  # independent of input order
    assert len(set(eight)) == 8 and set(eight) <= set(cands)
    assert select_spread(cands, 3) == eight[:3]  # a larger --max-candidates extends a smaller one
    # Farthest-point picks the single-dimension corners (all depth / all width / all resolution) early.
    assert {Candidate(2.0, 1.0, 1.0), Candidate(1.0, 1.4, 1.0), Candidate(1.0, 1.0, 1.4)} <= set(eight[:4])

    # Better spread than the first eight in lexicographic order (which all have alpha = 1).
    def min_gap(sub):
        p = np.array([(c.alpha, c.beta, c.gamma) for c in sub])
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return d[np.triu_indices(len(sub), 1)].min()

    assert min_gap(eight) > 2 * min_gap(sorted(cands)[:8])
    assert select_spread(cands, 500) == sorted(cands)
    with pytest.raises(NasError, match="max-candidates"):
        select_spread(cands, 0)


def test_plan_puts_the_base_first_and_refuses_an_empty_grid():
    settings = TrialSettings(dataset="fake", proxy=ProxyConfig.of(image_size=16))
    plan = plan_grid(TINY, settings, GridOptions(max_candidates=3))
    assert plan.candidates[0] == BASE and len(plan.candidates) == 4 and plan.n_feasible == 109
    with pytest.raises(NasError, match=r"\[1, 1.05\].*1.276"):
        plan_grid(TINY, settings, GridOptions(spec=GridSpec(hi=1.05)))
    with pytest.raises(NasError, match="candidate 2,1,1 at phi 10: repeats"):  # ceil(1 * 2**10) layers
        plan_grid(TINY, settings, GridOptions(spec=GridSpec(phi=10), max_candidates=2))
    big = TrialSettings(dataset="fake", proxy=ProxyConfig.of(image_size=512))
    with pytest.raises(NasError, match=r"candidate 1,1,1.4 at phi 3: proxy image size .* 1405"):  # 512 * 1.4**3
        plan_grid(TINY, big, GridOptions(spec=GridSpec(phi=3), max_candidates=3))


def test_candidates_the_proxy_cannot_tell_apart_are_reported():
    # At proxy depth 0.25, ceil(1 * 2 * 0.25) = ceil(1 * 0.25) = 1 layer: alpha = 2 vanishes, and with
    # gamma = 1 the image size is the base's too. At multipliers 1 every candidate stays distinct.
    small = TrialSettings(dataset="fake", proxy=ProxyConfig.of(width=0.25, depth=0.25, image_size=16))
    plan = plan_grid(TINY, small, GridOptions(max_candidates=4))
    assert proxy_duplicates(TINY, small, plan) == [[BASE, Candidate(2.0, 1.0, 1.0)]]
    full = TrialSettings(dataset="fake", proxy=ProxyConfig.of(width=1.0, depth=1.0, image_size=16))
    assert proxy_duplicates(TINY, full, plan_grid(TINY, full, GridOptions(max_candidates=4))) == []


# -- the scaling math ------------------------------------------------------------------------------------


def test_scaled_width_depth_resolution_of_b0_follow_the_rounding_rules():
    b0 = preset("efficientnet-b0")
    a = scale_candidate(b0, PAPER, 1)
    # Nearest rounding of 1, 2, 2, 3, 3, 4, 1 x 1.2 = 1.2, 2.4, 2.4, 3.6, 3.6, 4.8, 1.2.
    assert [s.repeats for s in a.stages] == [1, 2, 2, 4, 4, 5, 1]
    # round_filters: nearest multiple of 8, +8 when below 90% (16*1.1 = 17.6 -> 16, 40*1.1 = 44 -> 48).
    assert [s.out for s in a.stages] == [16, 24, 48, 88, 120, 208, 352]
    assert (a.stem, a.head, a.resolution) == (32, 1408, 258)  # round(224 * 1.15) = round(257.6)
    # With the papers' ceil rule, width 1.1 and depth 1.2 are exactly EfficientNet-B2's network.
    c = scale_candidate(b0, PAPER, 1, depth_rounding="ceil")
    assert [s.repeats for s in c.stages] == [math.ceil(s.repeats * 1.2) for s in b0.stages] == [2, 3, 3, 4, 4, 5, 2]
    assert count_params(c) == count_params(preset("efficientnet-b2")) == 9_109_994
    a2 = scale_candidate(b0, PAPER, 2)
    assert a2.resolution == round(224 * 1.15**2) == 296
    assert [s.repeats for s in a2.stages] == [max(1, math.floor(s.repeats * 1.44 + 0.5)) for s in b0.stages]
