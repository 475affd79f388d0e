"""GPU utilisation while a block runs: NVML's SM busy share (``torch.cuda.utilization``: the share of
time a kernel was running, ``nvidia-smi dmon``'s ``sm`` column), sampled in a thread. Used by
``--trials-per-device auto`` (:mod:`nas.backends.placement`) and the throughput benchmarks."""

from __future__ import annotations

import importlib.util
import statistics
import threading

import torch


class GpuUtilisation:
    """Samples the device's utilisation (percent) every ``interval`` seconds while the block runs;
    ``samples`` stays empty off CUDA or without ``nvidia-ml-py``, and ``why`` says why."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.device, self.interval = device, interval
        self.samples: list[int] = []
        self.why: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuUtilisation:
        if self.device.type != "cuda":
            self.why = "not on CUDA"
            return self
        if importlib.util.find_spec("pynvml") is None:  # nvidia-ml-py, which torch.cuda.utilization reads
            self.why = 'nvidia-ml-py is not installed (pip install -e ".[gpu]")'
            return self

        def sample() -> None:
            # torch maps the CUDA index to NVML's (CUDA_VISIBLE_DEVICES, PCI order) for us.
            while not self._stop.wait(self.interval):
                self.samples.append(int(torch.cuda.utilization(self.device)))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None
