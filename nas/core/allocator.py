"""The CPU's memory allocator: freed memory is kept for the next step instead of given back.

glibc's malloc serves a request above its mmap threshold (dynamic, at most 32 MiB) with a fresh
``mmap`` and unmaps it when freed, and gives the top of its heap back to the kernel once more than
its trim threshold is free. A training step frees its gradients (``zero_grad(set_to_none=True)``)
and activations and allocates the same sizes again on the next step, so every large tensor of every
step page-faults its memory in afresh and the kernel zeroes it: time that grows with the network's
parameters and activations, and that depends on what the process allocated before (the dynamic
threshold rises after each large free). On 2 CPU cores, 64 px, batch 16, a 168M-parameter candidate
of the trainaware space (Fused-MBConv k5 e6 at 256 channels, 15 blocks) stepped in 1,700-1,930 ms
fresh, and in 950-1,100 ms in a process that had run other networks first; with freed memory kept,
1,000 ms either way, and the system time of a 12-candidate fidelity run fell from 29 s to 4 s
(``benchmarks/bench_allocator.py``). A step time that depends on the process's history cannot be
predicted from a table, and a slower step than the hardware allows is not what a user wants either.

Memory: the peak resident size of a step is glibc's default's within a few percent (estimate
against peak, :func:`nas.core.memory.estimate_step_memory`, over the six networks of
``tests/core/test_memory.py`` in one process: 0.57-0.96 with glibc as it comes, 0.52-0.96 kept);
either heap holds holes between live blocks, which the estimate does not count.

This is what PyTorch's CPU performance guide gets by preloading jemalloc or TCMalloc, which reuse
memory "as much as possible"; with glibc the same is two ``mallopt`` settings: no ``mmap`` for large
blocks (``M_MMAP_MAX`` 0) and a trim threshold of 2 GiB (``M_TRIM_THRESHOLD``). They are set once
per process, when a CPU runtime is resolved (:func:`reuse_freed_memory`); the step-time tables'
fingerprint records which allocator timed them. ``NAS_MALLOC=system`` leaves the
allocator as it is (a preloaded jemalloc or TCMalloc is left alone and named).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept before any is given back (a C int: 2 GiB)
ENV = "NAS_MALLOC"

_state: str | None = None


def _preloaded() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in ("jemalloc", "tcmalloc") if name in preload), None)


def _setup() -> str:
    other = _preloaded()
    if other:
        return other
    if os.environ.get(ENV, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return "system"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return "system"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "system"
    return "glibc-reuse"


def reuse_freed_memory() -> str:
    """Keep freed memory for reuse in this process (once; later calls only answer) and return
    which allocator serves it: ``glibc-reuse``, ``system``, ``jemalloc`` or ``tcmalloc``."""
    global _state
    if _state is None:
        _state = _setup()
    return _state
