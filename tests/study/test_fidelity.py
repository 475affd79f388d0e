"""A's seed noise against its spread (``fidelity.json``'s ``accuracy_noise``): the figures by hand, the
three verdicts and the sentence a user reads."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from nas.study.fidelity import MIN_PAIRS, SEPARATION, accuracy_noise, fidelity_lines


def _df(acc, repeat, states=None):
    n = len(acc)
    return pd.DataFrame(
        {
            "number": range(n),
            "state": states or ["COMPLETE"] * n,
            "accuracy": acc,
            "accuracy_repeat": repeat,
        }
    )


def test_noise_and_spread_are_the_hand_computed_figures():
    acc = [0.30, 0.40, 0.50, 0.60]
    df = _df(acc, [0.32, None, 0.47, None])
    n = accuracy_noise(df)["accuracy_noise"]
    # two differences, -0.02 and +0.03: sqrt((0.0004 + 0.0009) / 2 / 2)
    assert n["seed_noise"] == pytest.approx(math.sqrt(0.0013 / 4))
    mean = 0.45
    assert n["spread"] == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in acc) / 3))
    assert n["pairs"] == 2 and n["trials"] == [0, 2] and n["complete"] == 4
    assert n["separates"] is True and n["ratio"] == pytest.approx(n["spread"] / n["seed_noise"])
    # chi-squared with 2 degrees of freedom: its 10% quantile is -2 ln 0.9 = 0.2107
    assert n["seed_noise_upper"] == pytest.approx(n["seed_noise"] * math.sqrt(2 / (-2 * math.log(0.9))))


def test_noise_as_large_as_the_spread_is_said_plainly():
    df = _df([0.30, 0.31, 0.32, 0.30], [0.34, None, 0.28, None])
    n = accuracy_noise(df)["accuracy_noise"]
    assert n["spread"] < SEPARATION * n["seed_noise"] and n["separates"] is False
    [line] = fidelity_lines({"accuracy_noise": n})
    assert line.startswith("accuracy separates these candidates: no (spread 1.0 points")
    # sqrt((0.04**2 + 0.04**2) / 2 / 2) = 2.8 points, at most 3.08 times that at 90% confidence
    assert "seed noise 2.8 (up to 8.7 at 90% confidence) from 2 trial(s) trained twice" in line
    assert "ranks by training speed and size" in line


def test_a_single_pair_is_not_judged_and_pruned_trials_are_left_out():
    df = _df([0.30, 0.90, 0.50], [0.31, 0.10, None], states=["COMPLETE", "PRUNED", "COMPLETE"])
    n = accuracy_noise(df)["accuracy_noise"]
    assert MIN_PAIRS == 2 and n["pairs"] == 1 and n["complete"] == 2 and n["separates"] is None
    assert "not judged yet" in fidelity_lines({"accuracy_noise": n})[0]


def test_no_repeats_no_section():
    assert accuracy_noise(_df([0.3, 0.4], [None, None])) == {}
    assert accuracy_noise(pd.DataFrame({"number": [0], "state": ["COMPLETE"], "accuracy": [0.3]})) == {}


def test_few_pairs_need_a_wider_margin_than_many():
    # spread 0.9 points, seed noise 0.3: three times the noise, but two pairs cannot rule out a noise of 0.9
    d = 0.003 * math.sqrt(2)  # a difference of two trainings whose seed noise is 0.003
    acc = [0.96, 0.97, 0.98, 0.97, 0.96, 0.98]
    few = _df(acc, [acc[0] + d, None, acc[2] - d, None, None, None])
    many = _df(acc * 4, [a + d * (-1) ** i for i, a in enumerate(acc * 4)])
    f, m = accuracy_noise(few)["accuracy_noise"], accuracy_noise(many)["accuracy_noise"]
    assert f["seed_noise"] == pytest.approx(0.003) and m["seed_noise"] == pytest.approx(0.003)
    assert f["spread"] > 2.9 * f["seed_noise"] and f["separates"] is False
    assert m["pairs"] == 24 and m["seed_noise_upper"] < f["seed_noise_upper"] and m["separates"] is True
