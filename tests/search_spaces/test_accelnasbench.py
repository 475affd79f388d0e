"""Accel-NASBench's space: every one of the 5,138 records builds in it, with the record's exact
parameter count, and its MAC figure is ours plus exactly the element-wise terms its counter adds."""

from __future__ import annotations

import numpy as np
import pytest

from nas.trial.anb import load_records
from search_spaces import NasError, count_macs, count_params, get_space
from search_spaces.accelnasbench import choice_from_record, record_macs
from search_spaces.accelnasbench import count_macs as analytic_macs
from search_spaces.accelnasbench import count_params as analytic_params

SPACE = get_space("accel-nasbench")


def test_every_record_builds_with_its_exact_parameter_count_and_mac_figure():
    records = load_records()
    assert len(records) == 5138
    ours, theirs, extra = [], [], []
    for r in records:
        arch = SPACE.make(r.choice)
        assert SPACE.choice_of(arch) == r.choice
        ours.append(analytic_params(arch))
        theirs.append(r.params)
        assert record_macs(arch) == r.macs, (arch, record_macs(arch), r.macs)
        extra.append(r.macs / analytic_macs(arch) - 1)
    assert ours == theirs
    assert len(set(ours)) > 1000  # the records are different networks, not one count repeated
    # The docstring's figures: the records count 3.8% to 16.7% more MACs (median 9.5%).
    assert (round(min(extra), 3), round(float(np.median(extra)), 3), round(max(extra), 3)) == (0.038, 0.095, 0.167)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_analytic_counts_equal_the_built_networks(seed):
    arch = SPACE.sample(seed) if seed else SPACE.reference()
    assert analytic_params(arch) == count_params(arch)
    assert analytic_macs(arch) == count_macs(arch)


def test_the_reference_is_efficientnet_b0_and_in_the_space():
    ref = SPACE.reference()
    assert analytic_params(ref) == 5_288_548  # torchvision's efficientnet_b0
    assert SPACE.make(SPACE.choice_of(ref)) == ref
    assert SPACE.size() == 48**7


def test_architectures_outside_the_space_and_bad_records_are_named():
    other = get_space("trainaware").reference()
    with pytest.raises(NasError, match="not an accel-nasbench architecture"):
        SPACE.choice_of(other)
    b0 = SPACE.reference()
    wider = b0.replace(stages=(b0.stages[0].__class__("mbconv", 3, 1, 1, 24, 1, 0.25), *b0.stages[1:]))
    with pytest.raises(NasError, match="not an accel-nasbench architecture"):
        SPACE.choice_of(wider)
    rec = {f"block{i}_{k}": v for i in range(7) for k, v in (("e", 6), ("k", 3), ("l", 2), ("se", True))}
    assert choice_from_record(rec)["s1_expansion"] == 6
    with pytest.raises(NasError, match=r"block3_k=7"):
        choice_from_record({**rec, "block3_k": 7})
    with pytest.raises(NasError, match=r"block0_se=1"):
        choice_from_record({**rec, "block0_se": 1})
    with pytest.raises(NasError, match="lacks 'block6_l'"):
        choice_from_record({k: v for k, v in rec.items() if k != "block6_l"})
