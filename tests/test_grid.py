"""nas.grid: the compound-scaling grid (EfficientNet V1 section 3.3), the scaling math and the
resumable driver (with a stand-in evaluation: the real one is covered in test_scale_cli.py)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from nas.errors import NasError
from nas.grid import (BASE, Candidate, GridOptions, GridSpec, choose, enumerate_candidates, parse_coefficients,
                      plan_grid, proxy_duplicates, run_grid, scale_candidate, scale_family, select_spread)
from nas.trial import ProxyConfig, TrialSettings
from search_spaces import Architecture, compound, count_params, preset, scale_v2

PAPER = Candidate(1.2, 1.1, 1.15)
TINY = Architecture.from_string("stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res32")


# -- the constraint and the enumeration --------------------------------------------------------------

def test_small_grid_matches_the_hand_count():
    # Values 1.0, 1.2, 1.4 (squares 1, 1.44, 1.96); products within [1.9, 2.1] worked out by hand:
    # alpha=1: b**2*g**2 in {1.96 (1, 1.4), 2.0736 (1.2, 1.2), 1.96 (1.4, 1)}; alpha=1.2: none
    # (1.2*1.44 = 1.728, 1.2*1.96 = 2.352); alpha=1.4: 1.4*1.44 = 2.016 twice.
    got = enumerate_candidates(GridSpec(step=0.2, lo=1.0, hi=1.4, tolerance=0.1))
    assert got == [Candidate(1.0, 1.0, 1.4), Candidate(1.0, 1.2, 1.2), Candidate(1.0, 1.4, 1.0),
                   Candidate(1.4, 1.0, 1.2), Candidate(1.4, 1.2, 1.0)]


def test_default_grid_count_agrees_with_exact_decimal_arithmetic():
    spec = GridSpec()
    vals = [Decimal("1") + i * Decimal("0.05") for i in range(21)]
    exact = sum(1 for a in vals for b in vals for g in vals if abs(a * b * b * g * g - 2) <= Decimal("0.1"))
    got = enumerate_candidates(spec)
    assert len(got) == exact == 109
    assert spec.grid_points == 21 ** 3
    assert all(abs(c.product - 2) <= 0.1 + 1e-9 for c in got)
    assert len(set(got)) == len(got)


def test_paper_coefficients_and_the_boundary_are_in_the_default_grid():
    got = set(enumerate_candidates(GridSpec()))
    assert PAPER in got  # product 1.920
    assert Candidate(1.9, 1.0, 1.0) in got  # exactly on the tolerance boundary (|1.9 - 2| = 0.1)
    assert Candidate(1.85, 1.0, 1.0) not in got
    assert BASE not in got  # the base (product 1) is the reference point, not a candidate


@pytest.mark.parametrize("kwargs, word", [
    ({"lo": 0.9}, "--min"), ({"step": 0}, "--step"), ({"hi": 0.99}, "--max"), ({"tolerance": -1}, "--tolerance"),
    ({"phi": -1}, "--phi"), ({"phi": 0}, "--phi"), ({"step": 1e-5}, "--step"), ({"lo": float("nan")}, "--min"),
])
def test_bad_grid_specs_name_the_flag(kwargs, word):
    with pytest.raises(NasError, match=word):
        GridSpec(**kwargs).validate()


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
    settings = TrialSettings(dataset="fake", proxy=ProxyConfig(image_size=16))
    plan = plan_grid(TINY, settings, GridOptions(max_candidates=3))
    assert plan.candidates[0] == BASE and len(plan.candidates) == 4 and plan.n_feasible == 109
    with pytest.raises(NasError, match=r"\[1, 1.05\].*1.276"):
        plan_grid(TINY, settings, GridOptions(spec=GridSpec(hi=1.05)))
    with pytest.raises(NasError, match="candidate 2,1,1 at phi 10: repeats"):  # ceil(1 * 2**10) layers
        plan_grid(TINY, settings, GridOptions(spec=GridSpec(phi=10), max_candidates=2))
    big = TrialSettings(dataset="fake", proxy=ProxyConfig(image_size=512))
    with pytest.raises(NasError, match="candidate 1,1,1.4 at phi 3: proxy image size .* 1405"):  # 512 * 1.4**3
        plan_grid(TINY, big, GridOptions(spec=GridSpec(phi=3), max_candidates=3))


def test_candidates_the_proxy_cannot_tell_apart_are_reported():
    # At proxy depth 0.25, ceil(1 * 2 * 0.25) = ceil(1 * 0.25) = 1 layer: alpha = 2 vanishes, and with
    # gamma = 1 the image size is the base's too. At multipliers 1 every candidate stays distinct.
    small = TrialSettings(dataset="fake", proxy=ProxyConfig(width=0.25, depth=0.25, image_size=16))
    plan = plan_grid(TINY, small, GridOptions(max_candidates=4))
    assert proxy_duplicates(TINY, small, plan) == [[BASE, Candidate(2.0, 1.0, 1.0)]]
    full = TrialSettings(dataset="fake", proxy=ProxyConfig(width=1.0, depth=1.0, image_size=16))
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
    assert a2.resolution == round(224 * 1.15 ** 2) == 296
    assert [s.repeats for s in a2.stages] == [max(1, math.floor(s.repeats * 1.44 + 0.5)) for s in b0.stages]


@pytest.fixture(scope="module")
def b0_family():
    return scale_family(preset("efficientnet-b0"), PAPER, 4)


def test_macs_ratio_stays_within_15_percent_of_the_flops_target(b0_family):
    """EfficientNet section 3.3: FLOPs grow by (alpha * beta**2 * gamma**2)**phi. For B0 and
    (1.2, 1.1, 1.15) the measured MACs ratio stays within 15% of it for phi = 1..4."""
    assert b0_family[0]["macs_ratio"] == 1.0
    for r in b0_family[1:]:
        assert r["target_macs_ratio"] == pytest.approx(PAPER.product ** r["phi"])
        assert r["macs_ratio"] == pytest.approx(r["target_macs_ratio"], rel=0.15), r["phi"]


def test_the_papers_ceil_rule_overshoots_the_target_on_b0():
    """Why the family uses nearest rounding: ceil turns B0's one-layer stages into two at alpha 1.2,
    and MACs land more than 25% above the target at phi = 1 (the figure the README quotes)."""
    fam = scale_family(preset("efficientnet-b0"), PAPER, 1, depth_rounding="ceil")
    assert fam[1]["macs_ratio"] / fam[1]["target_macs_ratio"] > 1.25


def test_macs_grow_by_the_product_per_phi_step(b0_family):
    """Each phi -> phi + 1 step multiplies MACs by alpha*beta**2*gamma**2 = 1.92, within 15%."""
    ratios = [r["macs_ratio"] for r in b0_family]
    for phi in range(2, 5):
        assert ratios[phi] / ratios[phi - 1] == pytest.approx(PAPER.product, rel=0.15), phi


def test_v2_rules_cap_resolution_and_add_layers_late():
    base = Architecture.from_string("stem16,r1_k3_s1_e1_i16_o16_c1,r2_k3_s2_e4_i16_o24_c1,"
                                    "r2_k3_s2_e4_i24_o32,r3_k3_s2_e6_i32_o48,r4_k3_s1_e6_i48_o64,head128,res384")
    rows = scale_family(base, PAPER, 3, v2_rules=True, num_classes=10, late_stages=2)
    for r in rows[1:]:
        a = Architecture.from_string(r["arch"])
        v1 = compound(base, r["phi"], *(PAPER.alpha, PAPER.beta, PAPER.gamma))
        assert a.resolution == min(480, v1.resolution)
        assert [s.repeats for s in a.stages[:3]] == [1, 2, 2]  # early stages keep their layers
        assert a.num_blocks == v1.num_blocks  # the same number of layers is added, only later
        assert a == scale_v2(base, width=1.1 ** r["phi"], depth=1.2 ** r["phi"], resolution_mult=1.15 ** r["phi"],
                             late_stages=2)
    assert rows[3]["resolution"] == 480 < round(384 * 1.15 ** 3)


# -- coefficients input ------------------------------------------------------------------------------------

def test_parse_coefficients_forms(tmp_path):
    assert parse_coefficients("1.2, 1.1,1.15") == (PAPER, None)
    (tmp_path / "c.json").write_text(json.dumps({"alpha": 1.2, "beta": 1.1, "gamma": 1.15,
                                                 "base": {"arch": TINY.to_string()}}))
    assert parse_coefficients(str(tmp_path / "c.json")) == (PAPER, TINY.to_string())
    (tmp_path / "coefficients.json").write_text("[1.2, 1.1, 1.15]")
    assert parse_coefficients(str(tmp_path)) == (PAPER, None)  # a run directory


@pytest.mark.parametrize("text, word", [
    ("1.2,1.1", "three coefficients"), ("1.2,1.1,1.15,1", "got 4"), ("a,1,1", "'a' is not a number"),
    ("0.9,1.1,1.15", "alpha .* >= 1.*0.9"), ("1.2,1.1,nan", "gamma .* finite"), ("", "no coefficients"),
])
def test_bad_coefficients_are_named(text, word):
    with pytest.raises(NasError, match=word):
        parse_coefficients(text)


def test_bad_coefficient_files(tmp_path):
    (tmp_path / "corrupt.json").write_text('{"alpha": 1.2,')
    (tmp_path / "partial.json").write_text('{"alpha": 1.2, "beta": 1.1}')
    (tmp_path / "str.json").write_text('{"alpha": "1.2", "beta": 1.1, "gamma": 1.1}')
    with pytest.raises(NasError, match="corrupt"):
        parse_coefficients(str(tmp_path / "corrupt.json"))
    with pytest.raises(NasError, match="lacks gamma"):
        parse_coefficients(str(tmp_path / "partial.json"))
    with pytest.raises(NasError, match="alpha .* finite number, got '1.2'"):
        parse_coefficients(str(tmp_path / "str.json"))
    with pytest.raises(NasError, match="does not exist"):
        parse_coefficients(str(tmp_path / "missing.json"))
    with pytest.raises(NasError, match="without coefficients.json"):
        parse_coefficients(str(tmp_path))


# -- the driver: resume, kill, failure (stand-in evaluation, so these run in milliseconds) ------------------

class FakeEvaluator:
    """The two things the driver asks of an Evaluator besides evaluate: the reference and the reward."""

    reward = SimpleNamespace(config=lambda: {"name": "fake"})

    def reference(self):
        return {"device": "cpu", "device_name": "fake", "step_time_ms": 1.0, "params": 1}


def fake_evaluate(calls, fail=()):
    def evaluate(settings, base, cand, phi, *, evaluator=None):
        calls.append(cand)
        if cand in fail:
            raise RuntimeError(f"boom {cand.label()}")
        macs = 1000 * cand.product ** phi
        # Accuracy rewards resolution most, so the choice is predictable.
        return {"arch": scale_candidate(base, cand, phi).to_string(), "params": 10, "macs": macs,
                "macs_ratio": macs / 1000, "step_time_ms": 1.0 + cand.alpha, "S": 1.0, "P": 1.0,
                "accuracy": 0.5 + 0.2 * (cand.gamma - 1) - 0.01 * cand.alpha, "reward": 0.5 / cand.beta,
                "duration_s": 0.01}
    return evaluate


def _run(tmp_path, calls, n=2, fail=(), spec=GridSpec(), objective="accuracy"):
    settings = TrialSettings(dataset="fake", proxy=ProxyConfig(image_size=16))
    opts = GridOptions(spec=spec, max_candidates=n, objective=objective, out=str(tmp_path / "run"))
    lines = []
    data = run_grid(settings, TINY, opts, progress=False, echo=lines.append, evaluator=FakeEvaluator(),
                    evaluate=fake_evaluate(calls, fail))
    return data, "\n".join(lines), pd.read_csv(tmp_path / "run" / "grid.csv")


def test_resume_skips_finished_candidates_and_a_larger_count_extends(tmp_path):
    calls = []
    data, out, df = _run(tmp_path, calls, n=2)
    picks = select_spread(enumerate_candidates(GridSpec()), 4)
    assert calls == [BASE, *picks[:2]]
    assert "109 of 9261 grid points" in out
    assert list(df["state"]) == ["COMPLETE"] * 3 and df.loc[0, "candidate"] == "base"
    calls.clear()
    _, out, df2 = _run(tmp_path, calls, n=2)
    assert calls == [] and "3 of 3 candidates already evaluated" in out
    pd.testing.assert_frame_equal(df, df2)
    _, out, df4 = _run(tmp_path, calls, n=4)
    assert calls == picks[2:4] and len(df4) == 5 and set(df4["state"]) == {"COMPLETE"}


def test_a_killed_candidate_is_rerun_and_stale_waiting_trials_are_dropped(tmp_path):
    calls = []
    _run(tmp_path, calls, n=1)
    picks = select_spread(enumerate_candidates(GridSpec()), 3)
    # What a kill leaves behind: a RUNNING trial (killed mid-evaluation) and a WAITING one (enqueued,
    # never started), both for candidates not yet evaluated.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    study = optuna.load_study(study_name="nas-grid", storage=storage)
    study.enqueue_trial({"alpha": picks[2].alpha}, user_attrs={"candidate_key": picks[2].key})
    study.enqueue_trial({"alpha": picks[1].alpha}, user_attrs={"candidate_key": picks[1].key})
    killed = study.ask()  # pops picks[2]'s trial and leaves it RUNNING
    assert killed.user_attrs["candidate_key"] == picks[2].key
    calls.clear()
    _, out, df = _run(tmp_path, calls, n=3)
    assert calls == [picks[1], picks[2]]  # in this run's order, each once, nothing finished redone
    assert list(df["state"]) == ["COMPLETE"] * 4
    states = [t.state for t in optuna.load_study(study_name="nas-grid", storage=storage).get_trials()]
    assert states.count(optuna.trial.TrialState.WAITING) == 0


def test_a_failed_candidate_is_recorded_not_retried_and_never_chosen(tmp_path):
    calls = []
    picks = select_spread(enumerate_candidates(GridSpec()), 3)
    best_by_accuracy = max(picks, key=lambda c: 0.2 * (c.gamma - 1) - 0.01 * c.alpha)
    data, _, df = _run(tmp_path, calls, n=3, fail=(best_by_accuracy,))
    row = df[df["candidate"] == best_by_accuracy.label()].iloc[0]
    assert row["state"] == "FAIL" and "boom" in row["error"]
    assert (data["alpha"], data["beta"], data["gamma"]) != (best_by_accuracy.alpha, best_by_accuracy.beta,
                                                            best_by_accuracy.gamma)
    calls.clear()
    _run(tmp_path, calls, n=3, fail=(best_by_accuracy,))
    assert calls == []


def test_choice_by_objective_with_runner_up_and_the_base_excluded(tmp_path):
    calls = []
    data, _, df = _run(tmp_path, calls, n=4)
    ok = df[df["candidate"] != "base"]
    assert data["objective"] == "accuracy"
    assert data["objective_value"] == ok["accuracy"].max()
    assert data["runner_up"]["accuracy"] == sorted(ok["accuracy"])[-2]
    assert data["base"]["candidate"] == "base" and data["base"]["arch"] == TINY.to_string()
    assert data["n_feasible"] == 109 and data["settings"]["dataset"] == "fake"
    # Re-ranking by reward needs no evaluation: the objective is not part of the run's identity.
    data_r, _, _ = _run(tmp_path, calls, n=4, objective="reward")
    assert calls == [BASE, *select_spread(enumerate_candidates(GridSpec()), 4)]
    assert data_r["objective_value"] == ok["reward"].max() and data_r["beta"] == ok.loc[ok["reward"].idxmax(), "beta"]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["arch"] == data_r["chosen"]["arch"]
    # choose() on a frame where only the base completed chooses nothing.
    assert choose(df[df["candidate"] == "base"], "accuracy") == (None, None)


def test_a_changed_grid_in_the_same_run_directory_is_refused_unchanged(tmp_path):
    calls = []
    _run(tmp_path, calls, n=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(NasError, match="different settings"):
        _run(tmp_path, calls, n=1, spec=GridSpec(tolerance=0.2))
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
