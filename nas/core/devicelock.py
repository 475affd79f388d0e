"""Exclusive step timing on a device that several trials share (``--trials-per-device N``).

Trials that share a GPU (or a CPU) train side by side, but a step time measured while a neighbour
trains is inflated and noisy. So every process on a shared device takes this device's lock: *shared*
while it trains an epoch, *exclusive* while it times a step. A reader-writer lock built from two
``flock``\\ s, with a turnstile so a waiting timer is not starved by a stream of epochs: a timer
first takes the turnstile, then the device lock exclusively; a trainer passes through the turnstile
(taking and releasing it) before it takes the device lock shared. Locks die with their process.

The lock is named by the ``NAS_DEVICE_LOCK`` environment variable, which the workers backend sets for
each worker (``cuda0``, ``cpu``, ...); without it (one trial per device) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nas.core.files import file_lock

ENV = "NAS_DEVICE_LOCK"


def lock_dir() -> Path:
    d = Path(os.environ.get("NAS_LOCK_DIR") or Path(tempfile.gettempdir()) / f"nas-locks-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def timing() -> Iterator[None]:
    """Hold the device alone while a step is timed."""
    name = os.environ.get(ENV)
    if not name:
        yield
        return
    d = lock_dir()
    what = f"device {name} (to time a step alone on it)"
    with file_lock(d / f"{name}.turnstile", what=what), file_lock(d / f"{name}.lock", what=what):
        yield


@contextlib.contextmanager
def training() -> Iterator[None]:
    """Share the device with other trainers (not with a timer) while an epoch trains."""
    name = os.environ.get(ENV)
    if not name:
        yield
        return
    d = lock_dir()
    what = f"device {name} (a step is being timed on it)"
    with file_lock(d / f"{name}.turnstile", what=what):
        pass  # wait behind a timer that asked first
    with file_lock(d / f"{name}.lock", shared=True, what=what):
        yield
