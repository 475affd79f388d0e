"""The calibrated step-time model: a table of piece costs and a fitted correction.

Prediction (the formula :meth:`StepTimeModel.breakdown` computes and the tests check)::

    raw(arch)  = sum over the pieces p of arch:  count_p * ms_p                   (pieces.py, timing.py)
    predicted  = a * raw(arch) + b * blocks(arch) + d * params(arch) + c          (fit_correction)

``ms_p`` is piece p's share of a training step at the target setting (its forward, backward and
RMSprop step over its parameters), ``blocks`` the network's number of blocks and ``params`` its parameter count
(the pieces' summed with their counts). The correction stands for what timing pieces one at a time
misses: the per-step costs paid once (``c``: the optimiser's and autograd's bookkeeping); the
per-call overhead each separately timed piece pays and the network pays once, and whatever else
grows with the number of layers (``b``); what grows with the parameters' memory (``d``: gradients
and optimiser temporaries allocated in fresh pages, weights no longer in cache when the whole
network runs, not one piece again and again); and cache effects in proportion to the work (``a``).
It is fitted to the measured full step times of a few calibration networks: the space's reference
and ``CALIBRATION_SAMPLES`` candidates drawn with a fixed seed of their own, so the candidates a
check draws (``nas calibrate --check``) are not the ones the correction saw. Which of b, d and c
are used, if any, is decided by leave-one-out error on those networks (:func:`fit_correction`): on a
shared 2-core CPU the raw sum already agrees with measurement about as well as a second measurement
does, and no fit is kept; on a GPU, where each separately timed piece pays overheads that the full
step hides, a fit is expected to be.

Building a table (:meth:`StepTimeModel.load_or_build`): time every piece the space can produce when
it can be enumerated (:mod:`nas.steptime.cover`), then the calibration networks' missing pieces and
their full steps, and fit. Any piece a later prediction needs that the table lacks (a space too
large to pre-fill, another resolution, a scaled network) is timed on first use and added to the
table (under its lock, atomically): :attr:`StepTimeModel.timed` counts them. The build saves after
every network, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from nas.device import Runtime
from nas.errors import NasError, check_int, check_positive
from nas.steptime import table as tables
from nas.steptime.cover import covering_architectures
from nas.steptime.pieces import PieceRef, decompose, extract
from nas.steptime.target import Target, default_target
from nas.steptime.timing import piece_params, time_piece
from search_spaces import Architecture, build

CALIBRATION_SAMPLES = 5
CALIBRATION_SEED = 1_000_003  # the sample stream of the calibration networks (a check draws from its own)
PIECE_RUN_TIME = 0.05  # seconds of timed repetitions per piece, at least (and 8 runs: timing.time_piece)
MEASURE_RUN_TIME = 1.0  # seconds of timed full steps per network and repeat
MEASURE_REPEATS = 2  # a full step is timed this often and the fastest kept (other jobs only slow it down)

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
        self.clock = table.fingerprint["clock"]
        self.num_classes = num_classes
        self.piece_run_time = piece_run_time
        self.timed = 0  # pieces this object timed on first use (not while building)
        self.built = False  # whether this object built (or finished building) its table
        self._cache: dict[tuple[Architecture, int], float] = {}

    # -- making one ----------------------------------------------------------------------------
    @staticmethod
    def _args(space, runtime, target, num_classes, piece_run_time, clock):
        from nas.measure import check_clock

        space = _space(space)
        runtime = runtime if isinstance(runtime, Runtime) else Runtime.resolve(runtime or "auto")
        check_clock(clock, runtime)
        target = target or default_target(runtime, space)
        if not isinstance(target, Target):
            raise NasError(f"target must be a nas.steptime.Target, got {type(target).__name__}")
        check_int("number of classes", num_classes, 1, 1 << 20)
        check_positive("piece timing run time", piece_run_time)
        return space, runtime, target

    @classmethod
    def load(cls, space, runtime: Runtime | str | None = None, target: Target | None = None, *, table_dir=None,
             num_classes: int = 1000, piece_run_time: float = PIECE_RUN_TIME, clock: str = "wall") -> "StepTimeModel":
        """The model of an existing, complete table: cheap (one JSON read), no timing, safe in many
        processes at once. NasError when there is none (run ``nas calibrate``) or it is unusable."""
        space, runtime, target = cls._args(space, runtime, target, num_classes, piece_run_time, clock)
        fp = tables.fingerprint(runtime, target, space.name, clock)
        path = tables.table_path(table_dir, fp)
        t = tables.load(path, fp)
        if t is None or not t.complete:
            raise NasError(f"no step-time table for space {space.name!r} at {target} on {fp['device_name']} "
                           f"({'unfinished' if t else 'none'} at {str(path)!r}); build it with `nas calibrate`")
        return cls(t, space, runtime, target, num_classes, piece_run_time)

    @classmethod
    def find(cls, runtime: Runtime, target: Target, *, table_dir=None, spaces: list[str] | None = None,
             num_classes: int = 1000, clock: str = "wall") -> "StepTimeModel | None":
        """The model of the first complete table for ``runtime`` and ``target`` among ``spaces``
        (default: every registered space), or None. A corrupt or foreign file still raises."""
        from search_spaces import space_names

        for name in spaces or space_names():
            space = _space(name)
            fp = tables.fingerprint(runtime, target, space.name, clock)
            t = tables.load(tables.table_path(table_dir, fp), fp)
            if t is not None and t.complete:
                return cls(t, space, runtime, target, num_classes)
        return None

    @classmethod
    def load_or_build(cls, space, runtime: Runtime | str | None = None, target: Target | None = None, *,
                      table_dir=None, rebuild: bool = False, progress: bool | Progress = False,
                      num_classes: int = 1000, piece_run_time: float = PIECE_RUN_TIME,
                      measure_run_time: float = MEASURE_RUN_TIME,
                      calibration_samples: int = CALIBRATION_SAMPLES, clock: str = "wall") -> "StepTimeModel":
        """The model of this space, runtime and target: the table on disk when there is a complete
        one (``rebuild=False``), else built now (resuming an unfinished one unless ``rebuild``).
        ``clock="cpu"`` times by process CPU time (one-thread CPU runtimes: :mod:`nas.measure`)."""
        space, runtime, target = cls._args(space, runtime, target, num_classes, piece_run_time, clock)
        check_positive("full-step timing run time", measure_run_time)
        check_int("calibration samples", calibration_samples, 2, 1000)
        fp = tables.fingerprint(runtime, target, space.name, clock)
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
        bar = _Bar(progress, len(todo - set(self.table.pieces)) + len(calib))
        try:
            with torch.random.fork_rng(devices=self.runtime.cuda_indices):
                for a in covers:
                    self._time_missing(a, self.target.image_size, bar, counted=True)
                    self.table.build_s = time.perf_counter() - t0
                    self.table.save()
                self.table.prefilled = bool(covers)
                rows = []
                for a in calib:
                    self._time_missing(a, self.target.image_size, bar)
                    measured = self._measure(a, None, measure_run_time)
                    b = self.breakdown(a, corrected=False)
                    rows.append({"arch": a.to_string(), "raw_ms": b["raw_ms"], "blocks": b["blocks"],
                                 "params": b["params"], "measured_ms": measured})
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
        # A stage's first and second block are all its distinct pieces (later blocks repeat the second),
        # so a network with at most two blocks a stage holds them all, and builds and runs faster.
        short = arch.replace(stages=tuple(dataclasses.replace(s, repeats=min(s.repeats, 2)) for s in arch.stages))
        refs = {(r.kind, r.stage, r.block): r for r, _ in decompose(short, image_size, self.target.batch_size,
                                                                    self.num_classes)}
        if {refs[r.kind, r.stage, r.block].key for r in missing} != {r.key for r in missing}:
            raise RuntimeError(f"pieces of {arch} change when its stages are shortened")
        torch.manual_seed(0)
        net = self.runtime.prepare(build(short, self.num_classes)).train()
        images = self.runtime.images(torch.randn(self.target.batch_size, 3, image_size, image_size))
        found = extract(net, missing, images, self.runtime)
        for r in missing:
            module, x = found[r.key]
            params, tensors = piece_params(module)
            ms, iqr = time_piece(module, x, self.runtime, kind=r.kind, num_classes=self.num_classes,
                                 min_run_time=self.piece_run_time, clock=self.clock)
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
        out = {"pieces": [(k, n, p["ms"]) for k, n, p in rows], "raw_ms": sum(n * p["ms"] for _, n, p in rows),
               "params": sum(n * p["params"] for _, n, p in rows),
               "tensors": sum(n * p["tensors"] for _, n, p in rows), "blocks": arch.num_blocks}
        if corrected:
            out["predicted_ms"] = correct(self.table.correction, out["raw_ms"], out["blocks"], out["params"])
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
                min_run_time: float = MEASURE_RUN_TIME, repeats: int = MEASURE_REPEATS) -> float:
        """The full-size step of ``arch`` timed directly at the target setting, on the table's clock
        (ms; the fastest block of ``repeats`` timings, as the calibration networks and the pieces are
        timed): what a prediction is checked against."""
        with torch.random.fork_rng(devices=self.runtime.cuda_indices):
            return self._measure(arch, image_size, min_run_time, repeats)

    def _measure(self, arch: Architecture, image_size: int | None, min_run_time: float,
                 repeats: int = MEASURE_REPEATS) -> float:
        from nas.measure import measure_step_time

        r = measure_step_time(arch, runtime=self.runtime, batch_size=self.target.batch_size,
                              image_size=image_size or self.target.image_size, num_classes=self.num_classes,
                              min_run_time=min_run_time, clock=self.clock, repeats=repeats, statistic="min")
        return r.step_time_ms


def calibration_archs(model: StepTimeModel, samples: int | None = None) -> list[Architecture]:
    """The networks the correction is fitted on: the space's reference, then ``samples`` candidates
    from a seeded stream of their own (the table records how many it used)."""
    if samples is None:
        points = (model.table.correction or {}).get("points")
        samples = len(points) - 1 if points else CALIBRATION_SAMPLES
    rng = np.random.default_rng(CALIBRATION_SEED)
    return [model.space.reference()] + [model.space.sample(rng) for _ in range(samples)]


# The forms the correction may take, simplest first: (name, which of a, b, d, c are free). The first
# has none: the raw sum itself (a = 1), which wins when the calibration networks' timings are too
# noisy for any fit to beat it.
CORRECTION_FORMS = (("raw", (False, False, False, False)),
                    ("a*raw", (True, False, False, False)),
                    ("a*raw + c", (True, False, False, True)),
                    ("a*raw + b*blocks + c", (True, True, False, True)),
                    ("a*raw + d*params + c", (True, False, True, True)),
                    ("a*raw + b*blocks + d*params + c", (True, True, True, True)))
MIN_EXTRA_ROWS = 2  # a form with k coefficients is tried on k + 2 calibration networks or more


def correct(corr: dict[str, float], raw_ms: float, blocks: int, params: int) -> float:
    """The prediction: ``a * raw + b * blocks + d * params + c`` (ms)."""
    return corr["a"] * raw_ms + corr["b"] * blocks + corr["d"] * params + corr["c"]


def _fit_form(x: np.ndarray, y: np.ndarray, free) -> np.ndarray:
    """Coefficients (a, b, d, c) of one form, least squares on the relative error (MAPE is what is
    reported), the form's fixed coefficients 0 (a: 1 when fixed)."""
    if not any(free):
        return np.array([1.0, 0.0, 0.0, 0.0])
    w = 1.0 / y
    cols = x[:, list(free)]
    coef, *_ = np.linalg.lstsq(cols * w[:, None], y * w, rcond=None)
    out = np.zeros(4)
    out[list(free)] = coef
    return out


def _loo_errors(x: np.ndarray, y: np.ndarray, free) -> np.ndarray:
    """Each network's relative error when the form is fitted on the others."""
    n = len(y)
    return np.array([abs(x[i] @ _fit_form(x[np.arange(n) != i], y[np.arange(n) != i], free) - y[i]) / y[i]
                     for i in range(n)])


def fit_correction(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``(a, b, d, c)`` of ``measured ~ a * raw + b * blocks + d * params + c`` over the calibration
    networks ``rows``, and the form chosen.

    Each form of :data:`CORRECTION_FORMS` is scored by leave-one-out: fitted without each network in
    turn, its relative error on the one left out. A fitted form replaces the raw sum only when it
    beats the raw sum's error on all calibration networks but at most one, and then the one with the
    lowest mean error wins. A correction that stands for something systematic (per-piece overheads
    that the full step does not pay, as on a GPU) improves every network and passes; one that fits
    the noise of a handful of timings on a shared CPU does not, and the raw sum, which measured no
    worse than a repeated measurement there, is kept. Rows are ``{raw_ms, blocks, params,
    measured_ms}``; a form with k coefficients is tried on at least k + 2 rows."""
    x = np.array([[r["raw_ms"], r["blocks"], r["params"], 1.0] for r in rows], dtype=float)
    y = np.array([r["measured_ms"] for r in rows], dtype=float)
    n = len(rows)
    base = _loo_errors(x, y, CORRECTION_FORMS[0][1])
    name, loo, coef = CORRECTION_FORMS[0][0], float(base.mean()), np.array([1.0, 0.0, 0.0, 0.0])
    for form, free in CORRECTION_FORMS[1:]:
        if n < sum(free) + MIN_EXTRA_ROWS or any(f and np.ptp(x[:, j]) == 0 for j, f in enumerate(free[:3])):
            continue
        c = _fit_form(x, y, free)
        if not (math.isfinite(c[0]) and c[0] > 0):
            continue
        errs = _loo_errors(x, y, free)
        if (errs < base).sum() >= n - 1 and errs.mean() < loo - 1e-9:  # a tie (to rounding) keeps the simpler
            name, loo, coef = form, float(errs.mean()), c
    a, b, d, c0 = (float(v) for v in coef)
    return {"a": a, "b": b, "d": d, "c": c0, "form": name, "loo_mape": loo}
