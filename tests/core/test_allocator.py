"""nas.core.allocator: a CPU runtime keeps freed memory for the next step, in a fresh interpreter
each (the setting is per process): the second of two same-size allocations page-faults nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, nas_env

# Allocate, touch and free eight 32 MiB tensors six times (a training step's gradients, step after
# step), counting the minor page faults of each round: with glibc as it comes every block is mmapped
# afresh and faults in again, every round; kept, the heap settles within a few rounds and the later
# ones reuse its pages (under load a later round may still place one block fresh: 8,192 pages).
CHILD = """
import json, resource, torch
from nas.core.device import Runtime
fp = Runtime.resolve("cpu").fingerprint()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.empty(8 * 2**20, dtype=torch.float32).fill_(1.0) for _ in range(8)]
    del xs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"allocator": fp["allocator"], "faults": faults}))
"""
PAGES = 256 * 2**20 // 4096


def _child(**env) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, env=nas_env(**env), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_cpu_runtime_keeps_freed_memory_and_the_fingerprint_says_so():
    kept = _child(NAS_MALLOC="")
    assert kept["allocator"] == "glibc-reuse"
    assert kept["faults"][0] > PAGES // 2, kept  # the first touch faults the blocks in
    assert sum(kept["faults"][3:]) < PAGES // 2, kept  # the last three rounds together: under half of one
    assert min(kept["faults"][3:]) < PAGES // 20, kept  # and at least one reuses every block
    system = _child(NAS_MALLOC="system")
    assert system["allocator"] == "system"
    assert min(system["faults"][3:]) > PAGES // 2, system  # as it comes: unmapped on free, faulted again
