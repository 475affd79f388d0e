"""The calibrated step-time model: a table of piece costs, an optimiser fit and a correction.

Prediction (the formula :meth:`StepTimeModel.breakdown` computes and the tests check)::

    raw(arch)  = sum over pieces p of arch:  count_p * ms_p                      (pieces.py, timing.py)
               + c0 + c1 * params(arch) + c2 * tensors(arch)                     (the RMSprop step)
    predicted  = a * raw(arch) + b * blocks(arch) + c

``ms_p`` is piece p's forward and backward at the target setting, ``params`` and ``tensors`` the
parameter values and tensors summed over the pieces (the network's own), ``blocks`` the number of
blocks. The correction ``(a, b, c)`` stands for what timing pieces one at a time misses: the loss
and the optimiser's bookkeeping that are paid once per step (``c``); the per-call overhead that
each separately timed piece pays and the full network pays once, and allocator effects, which grow
with the number of pieces (``b``); cache effects between layers (activations and weights that stay
in cache when one piece repeats, not when the network runs), which scale with the work (``a``). It
is fitted by least squares on the relative error (each row divided by its measured time, since
MAPE is the figure reported) to the measured full step times of a few calibration networks: the
space's reference and ``CALIBRATION_SAMPLES`` candidates drawn with a fixed seed of their own, so the
candidates a check draws (``nas calibrate --check``) are not the ones the correction saw.

Building a table (:meth:`StepTimeModel.load_or_build`): time every piece the space can produce when
it can be enumerated (:mod:`nas.steptime.cover`), the optimiser at a few parameter counts, then the
calibration networks' missing pieces and their full steps, and fit. Any piece a later prediction
needs that the table lacks (a space too large to pre-fill, another resolution, a scaled network) is
timed on first use and added to the table (under its lock, atomically): :attr:`StepTimeModel.timed`
counts them. The build saves after every network, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from nas.device import Runtime
from nas.errors import NasError, NasRuntimeError, check_int, check_positive
from nas.steptime import table as tables
from nas.steptime.cover import covering_architectures
from nas.steptime.pieces import PieceRef, decompose, extract
from nas.steptime.target import Target, default_target
from nas.steptime.timing import (fit_optimizer, network_params, optimizer_ms, optimizer_points, piece_params,
                                 time_optimizer, time_piece)
from search_spaces import Architecture, build

CALIBRATION_SAMPLES = 5
CALIBRATION_SEED = 1_000_003  # the sample stream of the calibration networks (a check draws from its own)
PIECE_RUN_TIME = 0.2  # seconds of timed repetitions per piece
MEASURE_RUN_TIME = 1.0  # seconds of timed full steps per network

Progress = Callable[[int, int, str], None]  # (done, total, what)


class _Bar:
    """``progress``: False (silent), True (a tqdm bar on stderr) or a callable ``(done, total, what)``."""

    def __init__(self, progress: bool | Progress, total: int):
        self.done, self.total = 0, total
        self.fn = progress if callable(progress) else None
        self.tqdm = None
        if progress is True:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, desc="step-time table", unit="part", leave=False)

    def grow(self, n: int) -> None:
        self.total += n
        if self.tqdm is not None:
            self.tqdm.total = self.total
            self.tqdm.refresh()

    def step(self, what: str) -> None:
        self.done += 1
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(what[:40], refresh=False)
            self.tqdm.update(1)
        if self.fn is not None:
            self.fn(self.done, self.total, what)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _space(space) -> Any:
    from search_spaces import get_space

    return get_space(space) if isinstance(space, str) else space


class StepTimeModel:
    """Predicts a full-size candidate's training step time (ms) on one runtime at one target setting.

    Make one with :meth:`load_or_build` (builds the table when there is none) or :meth:`load` (an
    existing table only: what a search worker calls)."""

    def __init__(self, table: tables.Table, space, runtime: Runtime, target: Target, num_classes: int,
                 piece_run_time: float = PIECE_RUN_TIME):
        self.table, self.space, self.runtime, self.target = table, space, runtime, target
        self.num_classes = num_classes
        self.piece_run_time = piece_run_time
        self.timed = 0  # pieces this object timed on first use (not while building)
        self.built = False  # whether this object built (or finished building) its table
        self._cache: dict[tuple[Architecture, int], float] = {}

    # -- making one ----------------------------------------------------------------------------
    @staticmethod
    def _args(space, runtime, target, num_classes, piece_run_time):
        space = _space(space)
        runtime = runtime if isinstance(runtime, Runtime) else Runtime.resolve(runtime or "auto")
        target = target or default_target(runtime, space)
        if not isinstance(target, Target):
            raise NasError(f"target must be a nas.steptime.Target, got {type(target).__name__}")
        check_int("number of classes", num_classes, 1, 1 << 20)
        check_positive("piece timing run time", piece_run_time)
        return space, runtime, target

    @classmethod
    def load(cls, space, runtime: Runtime | str | None = None, target: Target | None = None, *, table_dir=None,
             num_classes: int = 1000, piece_run_time: float = PIECE_RUN_TIME) -> "StepTimeModel":
        """The model of an existing, complete table: cheap (one JSON read), no timing, safe in many
        processes at once. NasError when there is none (run ``nas calibrate``) or it is unusable."""
        space, runtime, target = cls._args(space, runtime, target, num_classes, piece_run_time)
        fp = tables.fingerprint(runtime, target, space.name)
        path = tables.table_path(table_dir, fp)
        t = tables.load(path, fp)
        if t is None or not t.complete:
            raise NasError(f"no step-time table for space {space.name!r} at {target} on {fp['device_name']} "
                           f"({'unfinished' if t else 'none'} at {str(path)!r}); build it with `nas calibrate`")
        return cls(t, space, runtime, target, num_classes, piece_run_time)

    @classmethod
    def find(cls, runtime: Runtime, target: Target, *, table_dir=None, spaces: list[str] | None = None,
             num_classes: int = 1000) -> "StepTimeModel | None":
        """The model of the first complete table for ``runtime`` and ``target`` among ``spaces``
        (default: every registered space), or None. A corrupt or foreign file still raises."""
        from search_spaces import space_names

        for name in spaces or space_names():
            space = _space(name)
            fp = tables.fingerprint(runtime, target, space.name)
            t = tables.load(tables.table_path(table_dir, fp), fp)
            if t is not None and t.complete:
                return cls(t, space, runtime, target, num_classes)
        return None

    @classmethod
    def load_or_build(cls, space, runtime: Runtime | str | None = None, target: Target | None = None, *,
                      table_dir=None, rebuild: bool = False, progress: bool | Progress = False,
                      num_classes: int = 1000, piece_run_time: float = PIECE_RUN_TIME,
                      measure_run_time: float = MEASURE_RUN_TIME,
                      calibration_samples: int = CALIBRATION_SAMPLES) -> "StepTimeModel":
        """The model of this space, runtime and target: the table on disk when there is a complete
        one (``rebuild=False``), else built now (resuming an unfinished one unless ``rebuild``)."""
        space, runtime, target = cls._args(space, runtime, target, num_classes, piece_run_time)
        check_positive("full-step timing run time", measure_run_time)
        check_int("calibration samples", calibration_samples, 2, 1000)
        fp = tables.fingerprint(runtime, target, space.name)
        path = tables.table_path(table_dir, fp)
        if not rebuild:
            t = tables.load(path, fp)
            if t is not None and t.complete:
                return cls(t, space, runtime, target, num_classes, piece_run_time)
        try:
            with tables.locked(path):
                # Whoever held the lock before us may have built it meanwhile.
                t = None if rebuild else tables.load(path, fp)
                if t is not None and t.complete:
                    return cls(t, space, runtime, target, num_classes, piece_run_time)
                t = t or tables.Table(path=path, fingerprint=fp)
                model = cls(t, space, runtime, target, num_classes, piece_run_time)
                model._build(progress, measure_run_time, calibration_samples)
                return model
        except OSError as e:
            raise NasError(f"cannot write the step-time table {str(path)!r}: {e.strerror or e}") from None

    # -- building ------------------------------------------------------------------------------
    def _build(self, progress: bool | Progress, measure_run_time: float, samples: int) -> None:
        t0 = time.perf_counter() - self.table.build_s  # a resumed build counts the time already spent
        tgt = self.target
        covers = covering_architectures(self.space, tgt.image_size, tgt.batch_size, self.num_classes) or []
        calib = calibration_archs(self, samples)
        todo = {r.key for a in covers for r, _ in decompose(a, tgt.image_size, tgt.batch_size, self.num_classes)}
        sizes = [network_params(a, self.num_classes) for a in calib + covers]
        opt_at = optimizer_points([n for n, _ in sizes], [t for _, t in sizes])
        bar = _Bar(progress, len(todo - set(self.table.pieces)) + len(opt_at) + len(calib))
        try:
            with torch.random.fork_rng(devices=self.runtime.cuda_indices):
                for a in covers:
                    self._time_missing(a, self.target.image_size, bar, counted=True)
                    self.table.build_s = time.perf_counter() - t0
                    self.table.save()
                self.table.prefilled = bool(covers)
                points = []
                for numel, tensors in opt_at:
                    points.append([numel, tensors, time_optimizer(numel, tensors, self.runtime,
                                                                  min_run_time=self.piece_run_time)])
                    bar.step(f"optimizer {numel:,} values")
                self.table.optimizer = {"coef": fit_optimizer(points), "points": points}
                rows = []
                for a in calib:
                    self._time_missing(a, self.target.image_size, bar)
                    measured = self._measure(a, None, measure_run_time)
                    rows.append({"arch": a.to_string(), "raw_ms": self.raw(a), "blocks": a.num_blocks,
                                 "measured_ms": measured})
                    bar.step("calibration network")
                self.table.correction = {**fit_correction(rows), "points": rows}
        finally:
            bar.close()
        self.table.build_s = time.perf_counter() - t0
        self.table.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.table.save()
        self.built = True
        self._cache.clear()

    def _time_missing(self, arch: Architecture, image_size: int, bar: _Bar | None = None, counted: bool = False) -> int:
        """Time the pieces of ``arch`` the table lacks; returns how many. Caller holds the lock.
        ``counted``: the progress bar's total already counts them."""
        refs = [r for r, _ in decompose(arch, image_size, self.target.batch_size, self.num_classes)]
        missing = list({r.key: r for r in refs if r.key not in self.table.pieces}.values())
        if not missing:
            return 0
        if bar is not None and not counted:
            bar.grow(len(missing))
        torch.manual_seed(0)
        net = self.runtime.prepare(build(arch, self.num_classes)).train()
        images = self.runtime.images(torch.randn(self.target.batch_size, 3, image_size, image_size))
        found = extract(net, missing, images, self.runtime)
        for r in missing:
            module, x = found[r.key]
            ms, iqr = time_piece(module, x, self.runtime, kind=r.kind, num_classes=self.num_classes,
                                 min_run_time=self.piece_run_time)
            params, tensors = piece_params(module)
            self.table.pieces[r.key] = {"ms": ms, "iqr_ms": iqr, "params": params, "tensors": tensors}
            if bar is not None:
                bar.step(r.kind)
        del net, found, images
        return len(missing)

    def _extend(self, arch: Architecture, image_size: int) -> None:
        """Time the pieces of ``arch`` this table lacks, under the table's lock, merging with what
        other processes added meanwhile, and save."""
        path = self.table.path
        try:
            with tables.locked(path):
                disk = tables.load(path, self.table.fingerprint)
                if disk is not None:
                    for k, v in self.table.pieces.items():
                        disk.pieces.setdefault(k, v)
                    if disk.complete:
                        self.table = disk
                    else:
                        self.table.pieces = disk.pieces
                with torch.random.fork_rng(devices=self.runtime.cuda_indices):
                    n = self._time_missing(arch, image_size)
                if n:
                    self.table.save()
                self.timed += n
        except OSError as e:
            raise NasError(f"cannot write the step-time table {str(path)!r}: {e.strerror or e}") from None
        self._cache.clear()

    # -- predicting ----------------------------------------------------------------------------
    @property
    def path(self):
        return self.table.path

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.table.fingerprint)

    def _pieces(self, arch: Architecture, image_size: int) -> list[tuple[PieceRef, int]]:
        refs = decompose(arch, image_size, self.target.batch_size, self.num_classes)
        if any(r.key not in self.table.pieces for r, _ in refs):
            self._extend(arch, image_size)
        return refs

    def raw(self, arch: Architecture, image_size: int | None = None) -> float:
        """The uncorrected sum: pieces plus the optimiser fit (ms)."""
        return self.breakdown(arch, image_size, corrected=False)["raw_ms"]

    def breakdown(self, arch: Architecture, image_size: int | None = None, *, corrected: bool = True) -> dict[str, Any]:
        """Every term of the prediction (see the module docstring), timing missing pieces first."""
        if not isinstance(arch, Architecture):
            raise NasError(f"predict() takes an Architecture, got {type(arch).__name__}")
        size = self.target.image_size if image_size is None else check_int("image size", image_size, 8, 2048)
        refs = self._pieces(arch, size)
        rows = [(r.key, n, self.table.pieces[r.key]) for r, n in refs]
        params = sum(n * p["params"] for _, n, p in rows)
        tensors = sum(n * p["tensors"] for _, n, p in rows)
        pieces_ms = sum(n * p["ms"] for _, n, p in rows)
        opt = optimizer_ms(self.table.optimizer["coef"], params, tensors)
        out = {"pieces": [(k, n, p["ms"]) for k, n, p in rows], "pieces_ms": pieces_ms, "optimizer_ms": opt,
               "params": params, "tensors": tensors, "raw_ms": pieces_ms + opt, "blocks": arch.num_blocks}
        if corrected:
            c = self.table.correction
            out["predicted_ms"] = c["a"] * out["raw_ms"] + c["b"] * arch.num_blocks + c["c"]
        return out

    def predict(self, arch: Architecture, image_size: int | None = None) -> float:
        """Predicted full-size training step time (ms) of ``arch`` at the target setting (or at
        ``image_size``). Cached per architecture; pieces the table lacks are timed first."""
        key = (arch, image_size or self.target.image_size)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.breakdown(arch, image_size)["predicted_ms"]
        return hit

    def measure(self, arch: Architecture, image_size: int | None = None,
                min_run_time: float = MEASURE_RUN_TIME) -> float:
        """The full-size step of ``arch`` timed directly at the target setting (median ms): what a
        prediction is checked against."""
        with torch.random.fork_rng(devices=self.runtime.cuda_indices):
            return self._measure(arch, image_size, min_run_time)

    def _measure(self, arch: Architecture, image_size: int | None, min_run_time: float) -> float:
        from nas.measure import measure_step_time

        r = measure_step_time(arch, runtime=self.runtime, batch_size=self.target.batch_size,
                              image_size=image_size or self.target.image_size, num_classes=self.num_classes,
                              min_run_time=min_run_time)
        return r.step_time_ms


def calibration_archs(model: StepTimeModel, samples: int | None = None) -> list[Architecture]:
    """The networks the correction is fitted on: the space's reference, then ``samples`` candidates
    from a seeded stream of their own (the table records how many it used)."""
    if samples is None:
        points = (model.table.correction or {}).get("points")
        samples = len(points) - 1 if points else CALIBRATION_SAMPLES
    rng = np.random.default_rng(CALIBRATION_SEED)
    return [model.space.reference()] + [model.space.sample(rng) for _ in range(samples)]


# The forms the correction may take, simplest first: (name, which of a, b, c are free).
CORRECTION_FORMS = (("a*raw", (True, False, False)), ("a*raw + c", (True, False, True)),
                    ("a*raw + b*blocks + c", (True, True, True)))


def _fit_form(raw, blocks, y, free) -> tuple[float, float, float]:
    cols = [c for c, f in zip((raw, blocks, np.ones_like(raw)), free) if f]
    w = 1.0 / y  # least squares on the relative error: MAPE is what is reported
    coef, *_ = np.linalg.lstsq(np.stack(cols, 1) * w[:, None], y * w, rcond=None)
    it = iter(coef)
    return tuple(float(next(it)) if f else 0.0 for f in free)


def fit_correction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``(a, b, c)`` of ``measured ~ a * raw + b * blocks + c``, least squares on the relative error.

    A few noisy calibration networks cannot always carry three coefficients (raw time and block
    count go together), so the form is chosen among :data:`CORRECTION_FORMS` by leave-one-out
    error: each form is fitted without each network in turn and scored on the one left out; the form
    with the lowest mean absolute relative error wins (the simpler on a tie), among those whose
    scale ``a`` is positive. ``a*raw`` always qualifies."""
    raw = np.array([r["raw_ms"] for r in rows], dtype=float)
    blocks = np.array([r["blocks"] for r in rows], dtype=float)
    y = np.array([r["measured_ms"] for r in rows], dtype=float)
    best = None
    for name, free in CORRECTION_FORMS:
        k = sum(free)
        if len(rows) < k + 2 or (free[1] and np.ptp(blocks) == 0):
            continue
        a, b, c = _fit_form(raw, blocks, y, free)
        if not a > 0:
            continue
        errs = []
        for i in range(len(rows)):
            keep = np.arange(len(rows)) != i
            ai, bi, ci = _fit_form(raw[keep], blocks[keep], y[keep], free)
            errs.append(abs(ai * raw[i] + bi * blocks[i] + ci - y[i]) / y[i])
        loo = float(np.mean(errs))
        if best is None or loo < best["loo_mape"] - 1e-12:
            best = {"a": a, "b": b, "c": c, "form": name, "loo_mape": loo}
    if best is None:  # too few rows to leave one out: the scale alone
        a, b, c = _fit_form(raw, blocks, y, CORRECTION_FORMS[0][1])
        best = {"a": a, "b": b, "c": c, "form": CORRECTION_FORMS[0][0], "loo_mape": None}
    if not (math.isfinite(best["a"]) and best["a"] > 0):
        raise NasRuntimeError(f"the step-time correction did not fit (a = {best['a']}); rebuild the table")
    return best
