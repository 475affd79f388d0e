"""Building a step-time table on its own device, and extending it later with pieces it lacks.

A build (:func:`build`) times every piece the space can produce at the setting when it can be
enumerated (:mod:`nas.steptime.cover`), then the pieces of a few calibration networks and their
whole cost, and fits the correction (:mod:`nas.steptime.correction`). Every piece is timed in
:data:`PIECE_PASSES` passes over all of them and its fastest pass kept: on a shared machine a pass
at a busy moment is outvoted by one at a quiet moment. The table is saved after every timed piece
(each piece records how many passes it has had) and after every calibration network, so a build
killed at any moment resumes where it stopped and loses at most the piece in flight.

:func:`extend` times pieces a prediction needs that the table lacks, on the target device only
(:func:`nas.steptime.ontarget.on_target`), under the table's lock, merging with what other
processes added meanwhile.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nas.errors import NasError
from nas.steptime import table as tables
from nas.steptime.correction import fit_correction
from nas.steptime.cover import covering_architectures
from nas.steptime.measure import MIN_STEPS
from nas.steptime.ontarget import on_target
from nas.steptime.pieces import PieceRef, decompose, extract, piece_params
from search_spaces import Architecture
from search_spaces import build as build_network

CALIBRATION_SAMPLES = 5
SPREAD_POOL = 200  # candidates ranked by piece sum, the calibration networks picked at their quantiles
CALIBRATION_SEED = 1_000_003  # the sample stream of the calibration networks (a check draws from its own)
PIECE_RUN_TIME = 0.02  # seconds of timed samples per piece and pass, at least
PIECE_RUNS = 4  # ... and at least this many samples (Cost.time_piece: the fastest is kept)
PIECE_PASSES = 2  # passes over all pieces; each piece's fastest is kept
MEASURE_RUN_TIME = 0.5  # seconds of timed full steps per network and repeat (at least 3 steps)
MEASURE_WARMUP = 2  # untimed steps first (the first allocates; kernels are warm from the pieces)
MEASURE_REPEATS = 2  # a whole network is timed this often and the fastest kept (a check's timing)
CALIBRATION_STEPS = 2  # steps at least per calibration network and pass (the cost says how many passes)
CALIBRATION_WARMUP = 1  # untimed steps per calibration network and pass: its fastest pass is kept anyway

Progress = Callable[[int, int, str], None]  # (done, total, what)


class _Bar:
    """``progress``: False (silent), True (a tqdm bar on stderr) or a callable ``(done, total, what)``."""

    def __init__(self, progress: bool | Progress, total: int):
        self.done, self.total = 0, total
        self.fn = progress if callable(progress) else None
        self.tqdm = tqdm(total=total, desc="step-time table", unit="part", leave=False) if progress is True else None

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


def calibration_archs(model, samples: int | None = None) -> list[Architecture]:
    """The networks the correction is fitted on: the space's reference, then ``samples`` candidates.
    A built table's are the ones its correction was fitted on (``samples`` None).

    When the table holds every piece the space can produce (pre-filled), they are spread over the
    space's range of costs: :data:`SPREAD_POOL` candidates are drawn from a seeded stream of their
    own and ranked by their piece sums (microseconds each), and the network in the middle of each of
    ``samples`` equal slices of that ranking taken. A correction fitted on a handful of random draws
    saw a third of the range (2 CPU cores, step: piece sums 185-558 ms, where the space's reach
    119-1,233 ms) and extrapolated to the rest, by up to 2x. Otherwise (a space too large to
    pre-fill, where each draw's pieces would be timed first) they are random draws of the same
    stream."""
    points = (model.table.correction or {}).get("points")
    if samples is None and points:
        return [Architecture.from_string(p["arch"]) for p in points]
    samples = CALIBRATION_SAMPLES if samples is None else samples
    rng = np.random.default_rng(CALIBRATION_SEED)
    reference = model.space.reference()
    if not model.table.prefilled:
        return [reference] + [model.space.sample(rng) for _ in range(samples)]
    pool = list(dict.fromkeys(a for a in (model.space.sample(rng) for _ in range(SPREAD_POOL)) if a != reference))
    ranked = sorted(pool, key=lambda a: model.breakdown(a, corrected=False)["raw_ms"])
    picks = sorted({min(len(ranked) - 1, int((i + 0.5) / samples * len(ranked))) for i in range(samples)})
    return [reference] + [ranked[i] for i in picks]


def _plan(model, archs: list[Architecture], image_size: int) -> list[tuple[Architecture, list[PieceRef]]]:
    """(network to build, pieces of it to time) for the pieces of ``archs`` that lack passes. A
    stage's first and second block are all its distinct pieces (later blocks repeat the second), so
    each network is built with at most two blocks a stage: it holds every piece and runs faster."""
    plan, seen = [], set()
    batch, classes = model.target.batch_size, model.num_classes
    for arch in archs:
        short = arch.replace(stages=tuple(dataclasses.replace(s, repeats=min(s.repeats, 2)) for s in arch.stages))
        refs = [r for r, _ in decompose(short, image_size, batch, classes)]
        if {r.key for r, _ in decompose(arch, image_size, batch, classes)} != {r.key for r in refs}:
            raise RuntimeError(f"the pieces of {arch} change when its stages are shortened")
        todo = [
            r for r in refs if r.key not in seen and model.table.pieces.get(r.key, {}).get("passes", 0) < PIECE_PASSES
        ]
        seen |= {r.key for r in refs}
        if todo:
            plan.append((short, list({r.key: r for r in todo}.values())))
    return plan


def _time_pass(model, runtime, short: Architecture, refs: list[PieceRef], image_size: int, bar, passes: int) -> None:
    """One pass over ``refs`` of one network: each piece timed, kept if fastest, saved at once."""
    torch.manual_seed(0)
    net = runtime.prepare(build_network(short, model.num_classes)).train(model.cost.training)
    images = runtime.images(torch.randn(model.target.batch_size, 3, image_size, image_size))
    found = extract(net, refs, images, runtime)
    for r in refs:
        old = model.table.pieces.get(r.key)
        if old is not None and old["passes"] >= passes:
            continue
        module, x = found[r.key]
        ms, iqr = model.cost.time_piece(
            module,
            x,
            runtime,
            kind=r.kind,
            num_classes=model.num_classes,
            min_run_time=model.piece_run_time,
            runs=PIECE_RUNS,
            clock=model.clock,
        )
        params, tensors = piece_params(module)
        act = old["act_mb"] if old is not None else model.cost.piece_act_mb(module, x, runtime, kind=r.kind)
        if old is not None and old["ms"] <= ms:
            ms, iqr = old["ms"], old["iqr_ms"]
        model.table.pieces[r.key] = {
            "ms": ms,
            "iqr_ms": iqr,
            "params": params,
            "tensors": tensors,
            "act_mb": act,
            "passes": passes,
        }
        model.table.save(durable=False)  # after every piece: a kill loses at most the one in flight
        if bar is not None:
            bar.step(r.kind)


def time_missing(model, runtime, archs: list[Architecture], image_size: int, bar: _Bar | None = None) -> int:
    """Time the pieces of ``archs`` that lack passes (caller holds the lock, on the target); returns
    how many distinct pieces that was."""
    plan = _plan(model, archs, image_size)
    with torch.random.fork_rng(devices=runtime.cuda_indices):
        for k in range(1, PIECE_PASSES + 1):
            for short, refs in plan:
                _time_pass(model, runtime, short, refs, image_size, bar, k)
    return sum(len(refs) for _, refs in plan)


def measure_network(
    model,
    runtime,
    arch: Architecture,
    image_size: int | None,
    min_run_time: float,
    repeats: int = MEASURE_REPEATS,
    min_steps: int = MIN_STEPS,
    warmup: int = MEASURE_WARMUP,
) -> float:
    """A whole network's cost at the table's setting, timed directly on ``runtime``."""
    return model.cost.measure(
        arch,
        runtime,
        batch_size=model.target.batch_size,
        image_size=image_size or model.target.image_size,
        num_classes=model.num_classes,
        min_run_time=min_run_time,
        clock=model.clock,
        repeats=repeats,
        statistic="min",
        warmup=warmup,
        min_steps=min_steps,
    )


def _pending_pieces(model, covers: list[Architecture]) -> int:
    tgt = model.target
    keys = {r.key for a in covers for r, _ in decompose(a, tgt.image_size, tgt.batch_size, model.num_classes)}
    return sum(PIECE_PASSES - model.table.pieces.get(k, {}).get("passes", 0) for k in keys)


def _calibrate(model, runtime, calib: list[Architecture], bar: _Bar, measure_run_time: float) -> list[dict]:
    """Each calibration network's missing pieces, then its whole cost: timed in
    :attr:`Cost.calibration_passes` passes over all of them, the fastest kept. On a shared machine a slow
    spell lasts seconds, longer than one network's timing: back-to-back repeats fall in the same
    spell, passes a network apart seldom do (2 CPU cores, the reference timed 4 times back to back:
    388-573 ms)."""
    for a in calib:
        time_missing(model, runtime, [a], model.target.image_size)
    measured = [math.inf] * len(calib)
    for _ in range(model.cost.calibration_passes):
        for i, a in enumerate(calib):
            with torch.random.fork_rng(devices=runtime.cuda_indices):
                ms = measure_network(
                    model, runtime, a, None, measure_run_time, 1, CALIBRATION_STEPS, warmup=CALIBRATION_WARMUP
                )
            measured[i] = min(measured[i], ms)
            bar.step("calibration network")
    rows = []
    for a, ms in zip(calib, measured):
        b = model.breakdown(a, corrected=False)
        rows.append(
            {
                "arch": a.to_string(),
                "raw_ms": b["raw_ms"],
                "blocks": b["blocks"],
                "params": b["params"],
                "act_mb": b["act_mb"],
                "measured_ms": ms,
            }
        )
    return rows


def build(model, *, progress: bool | Progress, measure_run_time: float, samples: int, log=None) -> None:
    """Build (or finish building) ``model``'s table on this machine's device (caller holds the lock)."""
    t0 = time.perf_counter() - model.table.build_s  # a resumed build counts the time already spent
    tgt = model.target
    if log:
        log(
            f"building the step-time table of {model.space.name} ({tgt}) on this device, once for this device and "
            f"setting ({'resuming, ' if model.table.pieces else ''}a few minutes): {model.path}"
        )
    covers = covering_architectures(model.space, tgt.image_size, tgt.batch_size, model.num_classes) or []
    bar = _Bar(progress, _pending_pieces(model, covers) + model.cost.calibration_passes * (samples + 1))
    try:
        with on_target(
            model.fingerprint, needed_for="building a step-time table", cover="build it on its device"
        ) as runtime:
            time_missing(model, runtime, covers, tgt.image_size, bar)
            model.table.prefilled = bool(covers)
            rows = _calibrate(model, runtime, calibration_archs(model, samples), bar, measure_run_time)
    finally:
        bar.close()
        model.table.build_s = time.perf_counter() - t0
        model.table.save()
    model.table.correction = {**fit_correction(rows), "points": rows}
    model.table.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model.table.save()
    model.built = True
    model._cache.clear()
    if log:
        log(f"step-time table built in {model.table.build_s:.0f} s")


def _merge_from_disk(model) -> None:
    """Pieces other processes added to the table file since this process read it."""
    disk = tables.read(model.path)
    if disk is not None and disk.identity == model.table.identity:
        for k, v in disk.pieces.items():
            model.table.pieces.setdefault(k, v)


def extend(model, arch: Architecture, image_size: int) -> int:
    """Time the pieces of ``arch`` at ``image_size`` that the table lacks, on the target only, under
    the table's lock, and save; returns how many were timed."""
    with on_target(
        model.fingerprint,
        needed_for=f"a piece of {arch.to_string()} at {image_size} px that the step-time table lacks",
        cover=model.cover_command(),
    ) as runtime:
        try:
            with tables.locked(model.path):
                _merge_from_disk(model)
                return time_missing(model, runtime, [arch], image_size)
        except OSError as e:
            raise NasError(f"cannot write the step-time table {str(model.path)!r}: {e.strerror or e}") from None


def check_fields(model) -> dict[str, Any]:
    """What a table says about itself (``nas calibrate``'s summary)."""
    t = model.table
    return {
        "table": str(t.path),
        "identity": t.identity,
        "pieces": len(t.pieces),
        "prefilled": t.prefilled,
        "build_s": t.build_s,
        "built_now": model.built,
        "correction": {k: t.correction[k] for k in ("form", "a", "b", "d", "e", "c", "loo_mape")},
    }
