"""Timing only on the target device: whether this process can stand in for a target fingerprint.

A run has one target (a step-time table, or the device the driver prepared the run on). Any
direct timing that S, a table piece or a fidelity check rests on happens only in a process whose
device matches the target's fingerprint: the same device type and name, torch version, dtype and
memory format, and on a CPU the allocator (:mod:`nas.core.allocator`). The CPU thread count is the
one part a process can match for a moment: a worker running on one thread of a 2-core machine sets
torch to the target's two threads while it holds the device alone
(:func:`nas.core.devicelock.timing`, which keeps every other trial on the device from training
meanwhile), then goes back to its own. Anywhere else :class:`OffTarget` says what differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from nas.core import devicelock
from nas.core.device import Runtime, num_threads
from nas.errors import NasRuntimeError

MATCHED = ("device_name", "torch", "dtype", "memory_format", "allocator")


class OffTarget(NasRuntimeError):
    """This process cannot time anything for the target: the message says what differs and how to
    cover what was needed (``nas calibrate ...``)."""


def mismatch(fp: dict[str, Any]) -> str | None:
    """Why this process cannot time for the target ``fp`` (None: it can, after matching threads)."""
    device = fp.get("device")
    if device == "cuda" and not torch.cuda.is_available():
        return f"the target is a CUDA device ({fp.get('device_name')}) and this process has none"
    if device not in ("cpu", "cuda"):
        return f"the target's device {device!r} is not one this process knows"
    here = Runtime.resolve(device).fingerprint()
    for key in MATCHED:
        if here.get(key) != fp.get(key):
            return f"{key} is {here.get(key)!r} here and {fp.get(key)!r} on the target"
    return None


def runtime_for(fp: dict[str, Any]) -> Runtime:
    """The runtime this process times the target's steps on (after :func:`mismatch` said yes)."""
    return Runtime.resolve(fp["device"])


@contextlib.contextmanager
def on_target(fp: dict[str, Any], *, needed_for: str, cover: str) -> Iterator[Runtime]:
    """Hold the device alone with the target's thread count for the block, yielding the runtime to
    time on; :class:`OffTarget` naming ``needed_for`` and the command that covers it (``cover``)
    when this process does not match the target."""
    reason = mismatch(fp)
    if reason is not None:
        raise OffTarget(f"{needed_for} needs a timing on the target device, and {reason}; {cover}")
    with devicelock.timing(), num_threads(fp.get("threads") if fp["device"] == "cpu" else None):
        yield runtime_for(fp)
