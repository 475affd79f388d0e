"""The calibrated step-time model: a table of piece costs and a fitted correction.

Prediction (the formula :meth:`StepTimeModel.breakdown` computes and the tests check)::

    raw(arch)  = sum over the pieces p of arch:  count_p * ms_p                   (pieces.py, timing.py)
    predicted  = a * raw(arch) + b * blocks(arch) + d * params(arch) + c          (fit_correction)
                 bounded to [0.9 * min r, 1.1 * max r] * raw(arch), r: measured / raw of the
                 calibration networks (correction.correct: no extrapolation past what was measured)

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
the pieces and after every calibration network, so a killed build resumes from there.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from nas.core.device import Runtime
from nas.errors import NasError, check_int, check_positive
from nas.steptime import table as tables
from nas.steptime.correction import correct, fit_correction
from nas.steptime.cover import covering_architectures
from nas.steptime.pieces import PieceRef, decompose, extract, piece_params, time_piece
from nas.steptime.target import Target, default_target
from search_spaces import Architecture, build

CALIBRATION_SAMPLES = 5
CALIBRATION_SEED = 1_000_003  # the sample stream of the calibration networks (a check draws from its own)
PIECE_RUN_TIME = 0.05  # seconds of timed repetitions per piece and pass, at least
PIECE_RUNS = 4  # ... and at least this many runs (timing.time_piece)
PIECE_PASSES = 2  # passes over all pieces; each piece's fastest is kept (_time_missing)
MEASURE_RUN_TIME = 0.5  # seconds of timed full steps per network and repeat (at least one step)
MEASURE_WARMUP = 2  # untimed steps first (the first allocates; kernels are warm from the pieces)
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

    def __init__(
        self,
        table: tables.Table,
        space,
        runtime: Runtime,
        target: Target,
        num_classes: int,
        piece_run_time: float = PIECE_RUN_TIME,
    ):
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
        from nas.steptime.measure import check_clock

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
    def load(
        cls,
        space,
        runtime: Runtime | str | None = None,
        target: Target | None = None,
        *,
        table_dir=None,
        num_classes: int = 1000,
        piece_run_time: float = PIECE_RUN_TIME,
        clock: str = "wall",
    ) -> StepTimeModel:
        """The model of an existing, complete table: cheap (one JSON read), no timing, safe in many
        processes at once. NasError when there is none (run ``nas calibrate``) or it is unusable."""
        space, runtime, target = cls._args(space, runtime, target, num_classes, piece_run_time, clock)
        fp = tables.fingerprint(runtime, target, space.name, clock)
        path = tables.table_path(table_dir, fp)
        t = tables.load(path, fp)
        if t is None or not t.complete:
            raise NasError(
                f"no step-time table for space {space.name!r} at {target} on {fp['device_name']} "
                f"({'unfinished' if t else 'none'} at {str(path)!r}); build it with `nas calibrate`"
            )
        return cls(t, space, runtime, target, num_classes, piece_run_time)

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
    def load_or_build(
        cls,
        space,
        runtime: Runtime | str | None = None,
        target: Target | None = None,
        *,
        table_dir=None,
        rebuild: bool = False,
        progress: bool | Progress = False,
        num_classes: int = 1000,
        piece_run_time: float = PIECE_RUN_TIME,
        measure_run_time: float = MEASURE_RUN_TIME,
        calibration_samples: int = CALIBRATION_SAMPLES,
        clock: str = "wall",
        log=None,
    ) -> StepTimeModel:
        """The model of this space, runtime and target: the table on disk when there is a complete
        one (``rebuild=False``), else built now (resuming an unfinished one unless ``rebuild``).
        ``clock="cpu"`` times by process CPU time (one-thread CPU runtimes: :mod:`nas.steptime.measure`).
        ``log`` (a callable taking a line) hears when a build starts and ends."""
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
                if log:
                    log(
                        f"building the step-time table of {space.name} at {target} on this device, once for this "
                        f"device and setting ({'resuming, ' if t.pieces else ''}a few minutes): {path}"
                    )
                model._build(progress, measure_run_time, calibration_samples)
                if log:
                    log(f"step-time table built in {model.table.build_s:.0f} s")
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
        bar = _Bar(progress, len(todo - set(self.table.pieces)) * PIECE_PASSES + len(calib))
        try:
            with torch.random.fork_rng(devices=self.runtime.cuda_indices):
                self._time_missing(covers, self.target.image_size, bar, counted=True)
                self.table.prefilled = bool(covers)
                self.table.build_s = time.perf_counter() - t0
                self.table.save()
                rows = []
                for a in calib:
                    if self._time_missing([a], self.target.image_size, bar):
                        self.table.save()
                    measured = self._measure(a, None, measure_run_time)
                    b = self.breakdown(a, corrected=False)
                    rows.append(
                        {
                            "arch": a.to_string(),
                            "raw_ms": b["raw_ms"],
                            "blocks": b["blocks"],
                            "params": b["params"],
                            "measured_ms": measured,
                        }
                    )
                    bar.step("calibration network")
                self.table.correction = {**fit_correction(rows), "points": rows}
        finally:
            bar.close()
        self.table.build_s = time.perf_counter() - t0
        self.table.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.table.save()
        self.built = True
        self._cache.clear()

    def _time_missing(
        self, archs: list[Architecture], image_size: int, bar: _Bar | None = None, counted: bool = False
    ) -> int:
        """Time the pieces of ``archs`` the table lacks; returns how many. Caller holds the lock.

        Every piece is timed in :data:`PIECE_PASSES` passes over all of them and its fastest pass
        kept: on a shared machine a pass at a busy moment is outvoted by one at a quiet moment.
        A stage's first and second block are all its distinct pieces (later blocks repeat the
        second), so each network is built with at most two blocks a stage: it holds every piece and
        builds and runs faster. ``counted``: the progress bar's total already counts the pieces."""
        plan, seen = [], set(self.table.pieces)
        for arch in archs:
            short = arch.replace(stages=tuple(dataclasses.replace(s, repeats=min(s.repeats, 2)) for s in arch.stages))
            refs = [r for r, _ in decompose(short, image_size, self.target.batch_size, self.num_classes)]
            full = {r.key for r, _ in decompose(arch, image_size, self.target.batch_size, self.num_classes)}
            if full != {r.key for r in refs}:
                raise RuntimeError(f"the pieces of {arch} change when its stages are shortened")
            missing = list({r.key: r for r in refs if r.key not in seen}.values())
            seen |= full
            if missing:
                plan.append((short, missing))
        n = sum(len(m) for _, m in plan)
        if bar is not None and not counted:
            bar.grow(n * PIECE_PASSES)
        best: dict[str, dict[str, Any]] = {}
        for _ in range(PIECE_PASSES):
            for short, missing in plan:
                torch.manual_seed(0)
                net = self.runtime.prepare(build(short, self.num_classes)).train()
                images = self.runtime.images(torch.randn(self.target.batch_size, 3, image_size, image_size))
                found = extract(net, missing, images, self.runtime)
                for r in missing:
                    module, x = found[r.key]
                    ms, iqr = time_piece(
                        module,
                        x,
                        self.runtime,
                        kind=r.kind,
                        num_classes=self.num_classes,
                        min_run_time=self.piece_run_time,
                        runs=PIECE_RUNS,
                        clock=self.clock,
                    )
                    if r.key not in best or ms < best[r.key]["ms"]:
                        params, tensors = piece_params(module)
                        best[r.key] = {"ms": ms, "iqr_ms": iqr, "params": params, "tensors": tensors}
                    if bar is not None:
                        bar.step(r.kind)
                del net, found, images
        self.table.pieces.update(best)
        return n

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
                    n = self._time_missing([arch], image_size)
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
        out = {
            "pieces": [(k, n, p["ms"]) for k, n, p in rows],
            "raw_ms": sum(n * p["ms"] for _, n, p in rows),
            "params": sum(n * p["params"] for _, n, p in rows),
            "tensors": sum(n * p["tensors"] for _, n, p in rows),
            "blocks": arch.num_blocks,
        }
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

    def measure(
        self,
        arch: Architecture,
        image_size: int | None = None,
        min_run_time: float = MEASURE_RUN_TIME,
        repeats: int = MEASURE_REPEATS,
    ) -> float:
        """The full-size step of ``arch`` timed directly at the target setting, on the table's clock
        (ms; the fastest block of ``repeats`` timings, as the calibration networks and the pieces are
        timed): what a prediction is checked against."""
        with torch.random.fork_rng(devices=self.runtime.cuda_indices):
            return self._measure(arch, image_size, min_run_time, repeats)

    def _measure(
        self, arch: Architecture, image_size: int | None, min_run_time: float, repeats: int = MEASURE_REPEATS
    ) -> float:
        from nas.steptime.measure import measure_step_time

        r = measure_step_time(
            arch,
            runtime=self.runtime,
            batch_size=self.target.batch_size,
            image_size=image_size or self.target.image_size,
            num_classes=self.num_classes,
            min_run_time=min_run_time,
            clock=self.clock,
            repeats=repeats,
            statistic="min",
            warmup=MEASURE_WARMUP,
        )
        return r.step_time_ms


def calibration_archs(model: StepTimeModel, samples: int | None = None) -> list[Architecture]:
    """The networks the correction is fitted on: the space's reference, then ``samples`` candidates
    from a seeded stream of their own (the table records how many it used)."""
    if samples is None:
        points = (model.table.correction or {}).get("points")
        samples = len(points) - 1 if points else CALIBRATION_SAMPLES
    rng = np.random.default_rng(CALIBRATION_SEED)
    return [model.space.reference()] + [model.space.sample(rng) for _ in range(samples)]
