"""The GPU utilisation sampler says why it has no figure off CUDA instead of inventing one."""

from __future__ import annotations

import torch

from nas.core.utilisation import GpuUtilisation


def test_off_cuda_there_are_no_samples_and_the_reason_is_named():
    with GpuUtilisation(torch.device("cpu"), interval=0.01) as util:
        torch.ones(64, 64) @ torch.ones(64, 64)
    assert util.samples == [] and util.mean is None and util.median is None
    assert util.why == "not on CUDA"


def test_the_figures_are_the_samples_mean_and_median():
    util = GpuUtilisation(torch.device("cpu"))
    util.samples = [10, 20, 90]
    assert util.mean == 40 and util.median == 20
