"""Ctrl-C (and SIGTERM) that stops a search within seconds and never cuts anything in half.

Python's default handler raises ``KeyboardInterrupt`` wherever the main thread happens to be. Inside
a storage commit that can leave a journal and a session that never ends; inside a Python callback
that torch's C++ code runs (the dispatch modes that count MACs, autograd hooks) it becomes a C++
exception and aborts the process. So :func:`handle_interrupts` installs handlers that only record the
request; the code stops at the next safe point, :func:`check`, which the training loop calls every
step, step timing every repetition, and the trial loop between trials. A second signal, when no
safe point came within :data:`GRACE_S` seconds, raises at once outside :func:`critical` blocks (a
third exits).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

GRACE_S = 5.0
_state = {"installed": False, "requested": 0.0, "count": 0, "depth": 0}


def _handler(signum, frame) -> None:
    _state["count"] += 1
    if _state["count"] == 1:
        _state["requested"] = time.monotonic()
        return
    if _state["count"] >= 3:
        os._exit(130)
    if _state["depth"] == 0 and time.monotonic() - _state["requested"] > GRACE_S:
        _reset()
        raise KeyboardInterrupt


def _reset() -> None:
    _state["requested"], _state["count"] = 0.0, 0


def check() -> None:
    """A safe point: stop here (``KeyboardInterrupt``) when an interrupt was requested."""
    if _state["count"] and _state["depth"] == 0:
        _reset()
        raise KeyboardInterrupt


def requested() -> bool:
    return bool(_state["count"])


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Install the handlers for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _handler)
    _state["installed"] = True
    _reset()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["installed"] = False
        _reset()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block that is never interrupted (storage writes): a request waits for its end."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
