"""The Ray cluster a run uses: its options (:class:`RayOptions`), reaching or starting it
(:func:`ray_session`), how many trials it holds at once, and what travels to its nodes (plugin
modules, absolute data paths).

Security: a Ray cluster executes whatever code its clients send. Bind its ports to a trusted network
only; see the README."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nas.errors import NasError, check_int

CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how trials run on Ray (none of it changes what a trial computes)."""

    address: str | None = None  # None: start a private local Ray; "auto" or HOST:PORT: join a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a trial whose worker died
    plugins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        c = self.cpus_per_trial
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise NasError(f"--cpus-per-trial must be a positive number, got {c!r}")
        g = self.gpus_per_trial
        if (
            isinstance(g, bool)
            or not isinstance(g, (int, float))
            or not math.isfinite(g)
            or g < 0
            or (g > 1 and g != int(g))
        ):
            # Ray places a fraction of one GPU, or whole GPUs: 1.5 GPUs is neither.
            raise NasError(
                f"--gpus-per-trial must be a fraction of one GPU (e.g. 0.25: four trials per GPU) or "
                f"a whole number of GPUs, got {g!r}"
            )
        if self.max_concurrent is not None:
            check_int("--max-concurrent", self.max_concurrent, 1, 100_000)
        check_int("max failures", self.max_failures, 0, 1000)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise NasError(f"--address must be auto or HOST:PORT, got {self.address!r}")

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def plugin_runtime_env(modules: Sequence[ModuleType]) -> dict[str, Any]:
    """Ship plugin modules that are not installed packages to every node (``py_modules``)."""
    ship = []
    for m in modules:
        top = sys.modules[m.__name__.split(".")[0]]
        path = getattr(top, "__file__", None) or ""
        if any(part in ("site-packages", "dist-packages") for part in Path(path).parts):
            continue
        if top not in ship:
            ship.append(top)
    return {"py_modules": ship} if ship else {}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S, refused_for: float = 5.0) -> None:
    """A HOST:PORT that answers within ``timeout`` seconds (Ray itself would retry for minutes). A
    refused connection (nothing listening) is retried for ``refused_for`` seconds only, in case the
    head is still starting."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise NasError(f"--address must be auto or HOST:PORT, got {address!r}")
    t0 = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
                return
        except OSError as e:
            waited = time.monotonic() - t0
            if waited >= timeout or (isinstance(e, ConnectionRefusedError) and waited >= refused_for):
                raise NasError(
                    f"cannot reach Ray at {address} (nothing answered within {waited:.0f} s: {e}); is the "
                    "head node running, and is the address right?"
                ) from None
            time.sleep(1.0)


@contextlib.contextmanager
def ray_session(opts: RayOptions, modules: Sequence[ModuleType] = ()) -> Iterator[None]:
    """Connect to the cluster at ``opts.address``, or start a private local Ray for this run."""
    import ray  # Ray is optional and heavy: imported when the ray backend runs

    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "runtime_env": plugin_runtime_env(modules) or None,
    }
    if opts.address is None:
        # "local" starts a new Ray even when another one runs on this machine: ray.init() without
        # an address would join the newest cluster here, which may be someone else's.
        kwargs.update(address="local", include_dashboard=False)
    else:
        kwargs.update(address=opts.address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise NasError(
            f"cannot start or reach Ray at {opts.address or 'this machine'}: {str(e).splitlines()[0]}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def tune_environment() -> None:
    """Tune settings read from the driver's environment (a user's own values win)."""
    # Tune snapshots the experiment at most every 10 s by default; a driver killed in between would
    # rerun trials that had finished. A snapshot of a few hundred trials costs milliseconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Per-epoch results carry objective_so_far, final ones the objective: the searcher and ASHA skip
    # results that lack theirs.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def default_concurrency(opts: RayOptions) -> int:
    """How many trials the cluster holds at once with the per-trial resources."""
    import ray  # Ray is optional and heavy: imported when the ray backend runs

    res = ray.cluster_resources()
    n = int(res.get("CPU", 0) // opts.cpus_per_trial)
    what = f"{opts.cpus_per_trial:g} CPU"
    if opts.gpus_per_trial:
        n = min(n, int(res.get("GPU", 0) / opts.gpus_per_trial + 1e-9))
        what += f" and {opts.gpus_per_trial:g} GPU"
    if n < 1:
        raise NasError(
            f"the Ray cluster has {res.get('CPU', 0):g} CPU and {res.get('GPU', 0):g} GPU; a trial needs "
            f"{what} (an autoscaling cluster: pass --max-concurrent to start anyway)"
        )
    return n


def portable(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """Settings for the workers: relative data paths made absolute (a worker's current directory is
    not the driver's; on other nodes the data must be at the same absolute path)."""
    d = json.loads(json.dumps(settings_dict))
    if d.get("data_dir"):
        d["data_dir"] = os.path.abspath(d["data_dir"])
    if isinstance(d.get("dataset"), str) and d["dataset"].startswith("imagefolder:"):
        d["dataset"] = "imagefolder:" + os.path.abspath(d["dataset"].split(":", 1)[1])
    return d
