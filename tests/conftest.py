"""Fixtures shared by the whole suite: a private cache for step-time tables, the CLI as a fixture,
the stand-in evaluation installed in this process, and one torch thread everywhere (constants and helpers:
:mod:`tests.helpers`)."""

from __future__ import annotations

import os
import types

import pytest
import torch

from nas.trial.evaluator import EVALUATORS
from rewards.base import _REGISTRY as reward_registry
from search_spaces.base import _REGISTRY as space_registry
from search_spaces.base import space_names
from tests.helpers import STANDIN, run_nas


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Step-time tables (and anything else nas caches) in this session's own directory; subprocesses
    inherit the variable."""
    old = os.environ.get("NAS_CACHE_DIR")
    os.environ["NAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("nas-cache"))
    yield
    if old is None:
        os.environ.pop("NAS_CACHE_DIR", None)
    else:
        os.environ["NAS_CACHE_DIR"] = old


@pytest.fixture(name="run_nas", scope="session")
def run_nas_fixture():
    """The :func:`run_nas` helper as a fixture: ``rc, out, err = run_nas("show", "efficientnet-b0")``."""
    return run_nas


@pytest.fixture
def standin(monkeypatch):
    """Install the stand-in evaluation in this process for one test."""
    mod = types.ModuleType("standin_in_process")
    exec(compile(STANDIN, "standin", "exec"), mod.__dict__)
    mod.install(monkeypatch.setitem)
    return mod


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread for the whole session, here and in every subprocess (OMP_NUM_THREADS). The
    suite's networks are tiny: a second intra-op thread gains nothing, and on a busy 2-core machine an
    idle OpenMP thread spins against the other worker's jobs (a 4-trial tiny search beside one busy
    core: 9.9 s of CPU with one thread, 19.2 s with two, 23.5 s with the default). A test about
    threads sets its own count and puts one back; the subprocesses it gives two threads wait for work
    without spinning (OMP_WAIT_POLICY=PASSIVE: the same search with two threads, 14.0 s -> 11.0 s)."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("OMP_WAIT_POLICY", "PASSIVE")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _registries_restored():
    """Spaces, rewards and evaluators a test module registers in this process (plugins imported in
    process) are gone after it: every module sees the built-in registries, as a fresh `nas` does."""
    space_names()  # the built-in spaces register on first use: before the snapshot
    saved = [(reg, dict(reg)) for reg in (space_registry, reward_registry, EVALUATORS)]
    yield
    for reg, old in saved:
        reg.clear()
        reg.update(old)


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first, each module kept together (its module fixtures set up once):
    under pytest-xdist the long end-to-end tests start early and the quick ones fill the gaps. The
    suite runs with ``--dist worksteal`` (pyproject.toml): under ``load`` the tests already sent to a
    worker stay there, and one worker ran the last 300 s of slow tests alone while the others idled."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
