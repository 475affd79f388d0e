"""The calibrated step-time model: a table of piece costs and a fitted correction.

Prediction (the formula :meth:`StepTimeModel.breakdown` computes and the tests check)::

    raw(arch)  = sum over the pieces p of arch:  count_p * ms_p                   (pieces.py, costs.py)
    predicted  = a * raw(arch) + b * blocks(arch) + d * params(arch)
                 + e * act(arch) + c                                            (correction.py)
                 bounded to [0.9 * min r, 1.1 * max r] * raw(arch), r: measured / raw of the
                 calibration networks (correction.correct: no extrapolation past what was measured)

``ms_p`` is piece p's share of the cost at the target setting (for the training step: its forward,
backward and RMSprop step over its parameters; for latency: its forward pass in evaluation mode),
``blocks`` the network's number of blocks, ``params`` its parameter count and ``act`` the megabytes
of activations its pieces hold (saved for the backward pass; produced, for latency). The correction
stands for what timing pieces one at a time misses (per-step costs paid once, per-call overheads
each separately timed piece pays, activations that a piece alone finds in cache and the whole
network reads back from memory); which terms are used, if any, is decided by leave-one-out error on
the calibration networks (:mod:`nas.steptime.correction`).

A model predicts from its table alone, in any process on any machine. A piece the table lacks (a
space too large to pre-fill such as ``mnasnet``, another resolution in ``nas grid-scale``) is timed
only in a process that matches the table's device (:mod:`nas.steptime.ontarget`) and added to the
table under its lock; anywhere else the prediction fails with :class:`~nas.steptime.ontarget.OffTarget`
naming the ``nas calibrate`` command that covers it. Building a table: :mod:`nas.steptime.build`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nas.core.device import Runtime
from nas.errors import NasError, check_int, check_positive
from nas.steptime import build as builder
from nas.steptime import table as tables
from nas.steptime.correction import correct
from nas.steptime.costs import Cost, get_cost
from nas.steptime.measure import check_clock
from nas.steptime.ontarget import on_target
from nas.steptime.pieces import PieceRef, decompose
from nas.steptime.target import Target, default_target
from search_spaces import Architecture, get_space, space_names

PIECE_RUN_TIME = builder.PIECE_RUN_TIME
MEASURE_RUN_TIME = builder.MEASURE_RUN_TIME
CALIBRATION_SAMPLES = builder.CALIBRATION_SAMPLES


class StepTimeModel:
    """Predicts a full-size candidate's cost (ms) on a table's target device and setting.

    Make one with :meth:`from_file` (a table file, e.g. ``--target FILE``), :meth:`load_or_build`
    (this machine's table for a setting, built when there is none) or :meth:`load` (an existing
    table only)."""

    def __init__(self, table: tables.Table, space=None, *, piece_run_time: float = PIECE_RUN_TIME):
        self.table = table
        self.space = space if space is not None else get_space(table.setting["space"])
        self.piece_run_time = check_positive("piece timing run time", piece_run_time)
        self.timed = 0  # pieces this object timed on first use (not while building)
        self.built = False  # whether this object built (or finished building) its table
        self._cache: dict[tuple[Architecture, int], float] = {}
        self.cover_flags = ""  # calibrate flags that cover what the owner's run needs beyond the space

    # -- what it is ----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.table.path

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.table.fingerprint)

    @property
    def setting(self) -> dict[str, Any]:
        return dict(self.table.setting)

    @property
    def target(self) -> Target:
        st = self.table.setting
        return Target(st["image_size"], st["batch_size"], st["cost"])

    @property
    def num_classes(self) -> int:
        return int(self.table.setting["num_classes"])

    @property
    def cost(self) -> Cost:
        return get_cost(self.table.setting["cost"])

    @property
    def clock(self) -> str:
        return self.table.fingerprint["clock"]

    @property
    def identity(self) -> str:
        return self.table.identity

    def cover_command(self, **changes: Any) -> str:
        """The ``nas calibrate`` command that builds this table on its device with every piece a run
        of its space needs (``cover_flags``: what else the run needs, e.g. a grid's resolutions), with
        ``changes`` to its setting (``num_classes=10``)."""
        st, fp = {**self.table.setting, **changes}, self.table.fingerprint
        threads = f" --threads {fp['threads']}" if fp.get("threads") else ""
        return (
            f"run `nas calibrate --space {st['space']} --cost {st['cost']} --device {fp['device']}{threads} "
            f"--target-image-size {st['image_size']} --target-batch-size {st['batch_size']} "
            f"--num-classes {st['num_classes']}{self.cover_flags} --out FILE` on a {fp['device_name']} and "
            "pass --target FILE"
        )

    # -- making one ----------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, space=None) -> StepTimeModel:
        """The model of a complete table file (``--target FILE``), whatever device this process has."""
        t = tables.read(Path(path))
        if t is None:
            raise NasError(f"step-time table {str(path)!r} does not exist")
        if not t.complete:
            raise NasError(
                f"step-time table {str(path)!r} is unfinished (its build was stopped); finish it with "
                "the same `nas calibrate` command"
            )
        return cls(t, space)

    @staticmethod
    def _local(space, runtime, target, num_classes, clock) -> tuple[Any, dict, dict]:
        space = get_space(space) if isinstance(space, str) else space
        runtime = runtime if isinstance(runtime, Runtime) else Runtime.resolve(runtime or "auto")
        check_clock(clock, runtime)
        target = target or default_target(runtime, space)
        if not isinstance(target, Target):
            raise NasError(f"target must be a nas.steptime.Target, got {type(target).__name__}")
        check_int("number of classes", num_classes, 1, 1 << 20)
        return space, tables.fingerprint(runtime, clock), tables.setting(space.name, target, num_classes)

    @classmethod
    def load(
        cls, space, runtime=None, target=None, *, table_dir=None, num_classes: int = 1000, clock: str = "wall"
    ) -> StepTimeModel:
        """The model of this machine's existing, complete table for a setting: cheap (one JSON read)."""
        space, fp, st = cls._local(space, runtime, target, num_classes, clock)
        path = tables.table_path(table_dir, fp, st)
        t = tables.load(path, fp, st)
        if t is None or not t.complete:
            raise NasError(
                f"no step-time table for space {space.name!r} at {target} on {fp['device_name']} "
                f"({'unfinished' if t else 'none'} at {str(path)!r}); build it with `nas calibrate`"
            )
        return cls(t, space)

    @classmethod
    def find(
        cls,
        runtime: Runtime,
        target: Target,
        *,
        table_dir=None,
        spaces: list[str] | None = None,
        num_classes: int = 1000,
        clock: str = "wall",
    ) -> StepTimeModel | None:
        """The model of the first complete table on this machine for ``runtime`` and ``target`` among
        ``spaces`` (default: every registered space), or None. A corrupt or foreign file still raises."""

        for name in spaces or space_names():
            space, fp, st = cls._local(name, runtime, target, num_classes, clock)
            t = tables.load(tables.table_path(table_dir, fp, st), fp, st)
            if t is not None and t.complete:
                return cls(t, space)
        return None

    @classmethod
    def load_or_build(
        cls,
        space,
        runtime=None,
        target=None,
        *,
        table_dir=None,
        path=None,
        rebuild: bool = False,
        progress=False,
        num_classes: int = 1000,
        piece_run_time: float = PIECE_RUN_TIME,
        measure_run_time: float = MEASURE_RUN_TIME,
        calibration_samples: int = CALIBRATION_SAMPLES,
        clock: str = "wall",
        log=None,
    ) -> StepTimeModel:
        """The model of this space, this machine's device and a setting: the table at ``path`` (default:
        in the table directory) when it is complete and ``rebuild`` is false, else built now on this
        device (an unfinished one resumed unless ``rebuild``). ``clock="cpu"`` times by process CPU
        time (one-thread CPU runtimes). ``log`` (a callable taking a line) hears when a build starts
        and ends; ``progress`` is a tqdm bar (True) or a callable ``(done, total, what)``."""
        space, fp, st = cls._local(space, runtime, target, num_classes, clock)
        check_positive("full-step timing run time", measure_run_time)
        check_int("calibration samples", calibration_samples, 2, 1000)
        path = Path(path) if path is not None else tables.table_path(table_dir, fp, st)
        t = None if rebuild else tables.load(path, fp, st)
        if t is not None and t.complete:
            return cls(t, space, piece_run_time=piece_run_time)
        try:
            with tables.locked(path):
                t = None if rebuild else tables.load(path, fp, st)  # whoever held the lock may have built it
                model = cls(
                    t or tables.Table(path=path, fingerprint=fp, setting=st), space, piece_run_time=piece_run_time
                )
                if not model.table.complete:
                    builder.build(
                        model,
                        progress=progress,
                        measure_run_time=measure_run_time,
                        samples=calibration_samples,
                        log=log,
                    )
                return model
        except OSError as e:
            raise NasError(f"cannot write the step-time table {str(path)!r}: {e.strerror or e}") from None

    # -- predicting ----------------------------------------------------------------------------
    def _pieces(self, arch: Architecture, image_size: int) -> list[tuple[PieceRef, int]]:
        refs = decompose(arch, image_size, self.target.batch_size, self.num_classes)
        if any(r.key not in self.table.pieces for r, _ in refs):
            self.timed += builder.extend(self, arch, image_size)
            self._cache.clear()
        return refs

    def raw(self, arch: Architecture, image_size: int | None = None) -> float:
        """The uncorrected sum of the pieces (ms)."""
        return self.breakdown(arch, image_size, corrected=False)["raw_ms"]

    def breakdown(self, arch: Architecture, image_size: int | None = None, *, corrected: bool = True) -> dict:
        """Every term of the prediction (see the module docstring), timing missing pieces first."""
        if not isinstance(arch, Architecture):
            raise NasError(f"predict() takes an Architecture, got {type(arch).__name__}")
        size = self.target.image_size if image_size is None else check_int("image size", image_size, 8, 2048)
        rows = [(r.key, n, self.table.pieces[r.key]) for r, n in self._pieces(arch, size)]
        out = {
            "pieces": [(k, n, p["ms"]) for k, n, p in rows],
            "raw_ms": sum(n * p["ms"] for _, n, p in rows),
            "params": sum(n * p["params"] for _, n, p in rows),
            "tensors": sum(n * p["tensors"] for _, n, p in rows),
            "act_mb": sum(n * p["act_mb"] for _, n, p in rows),
            "blocks": arch.num_blocks,
        }
        if corrected:
            c = self.table.correction
            out["predicted_ms"] = correct(c, out["raw_ms"], out["blocks"], out["params"], out["act_mb"])
        return out

    def predict(self, arch: Architecture, image_size: int | None = None) -> float:
        """Predicted full-size cost (ms) of ``arch`` at the target setting (or at ``image_size``).
        Cached per architecture; pieces the table lacks are timed first, on the target only."""
        key = (arch, image_size or self.target.image_size)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.breakdown(arch, image_size)["predicted_ms"]
        return hit

    def measure(
        self,
        arch: Architecture,
        image_size: int | None = None,
        min_run_time: float = MEASURE_RUN_TIME,
        repeats: int | None = None,
    ) -> float:
        """The full-size cost of ``arch`` timed directly at the target setting on the target device:
        what a prediction is checked against. The fastest of ``repeats`` timings, by default as many
        as the calibration networks had passes (:attr:`Cost.calibration_passes`): the fastest of
        more samples is lower, and a check that took fewer than the correction was fitted on would
        find every prediction low (latency, 4 passes against 2 repeats: all 12 candidates of a check
        2-14% under their timings, Spearman 1.00). :class:`~nas.steptime.ontarget.OffTarget` off the
        target."""
        repeats = self.cost.calibration_passes if repeats is None else repeats
        with (
            on_target(
                self.fingerprint,
                needed_for="a direct check of the step-time table",
                cover="run the check on the target device",
            ) as runtime,
            torch.random.fork_rng(devices=runtime.cuda_indices),
        ):
            return builder.measure_network(self, runtime, arch, image_size, min_run_time, repeats)
