"""The parts of ``gpu_report.py``: each ``part(args, runtime, deadline) -> dict`` prints its figures,
returns them with ``summary`` rows (figure, value, baseline, ratio) for the Markdown table and
``notes``, and stops starting new work when ``deadline`` (``time.monotonic()``) would be passed."""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import bench_throughput
import numpy as np
import pandas as pd
import torch
import torchvision
from common import samples
from torch.utils.flop_counter import FlopCounterMode

from nas.backends.placement import AUTO_CAP
from nas.core.agreement import agreement as agree
from nas.core.agreement import describe
from nas.core.device import Runtime, cudnn_autotune
from nas.steptime import StepTimeModel, Target, default_target
from nas.steptime.build import calibration_archs
from nas.steptime.measure import make_train_step, time_step
from search_spaces import build, get_space, preset, scale
from search_spaces.base import register
from search_spaces.presets import EFFICIENTNETV2_S
from search_spaces.trainaware import TrainAwareSpace

# ---- step: the bare training step against torchvision's and timm's ----------------------------------

# preset: image size, batch on CUDA, torchvision's and timm's network with the same layers (timm's own
# models, not its tf_ ports, which pad "same" at run time: we and torchvision pad symmetrically).
MODELS = {
    "efficientnet-b0": (224, 256, "efficientnet_b0", "efficientnet_b0"),
    "efficientnetv2-s": (384, 64, "efficientnet_v2_s", "efficientnetv2_s"),
}
TINY_STEP = (16, 2)  # px, batch on the CPU path: the networks stay full size (torchvision's cannot shrink)
FIRST_COMPILE_S = 60.0  # what a first compilation is assumed to take before one was seen


def timm_or_none():
    try:
        import timm  # optional: timm's rows only where it is installed
    except ImportError:
        return None
    return timm


def _network(impl: str, name: str) -> torch.nn.Module:
    _, _, tv, tm = MODELS[name]
    if impl == "nas":
        return build(preset(name))
    if impl == "torchvision":
        return getattr(torchvision.models, tv)(weights=None)  # random weights: nothing is downloaded
    return timm_or_none().create_model(tm, pretrained=False)


def _step_row(impl: str, name: str, variant: str, runtime: Runtime, args, flops: dict) -> dict:
    """Time one network's step; its FLOPs are counted on the eager step (the compiled one does the same)."""
    cuda = runtime.device.type == "cuda"
    size, batch = (MODELS[name][0], MODELS[name][1]) if not args.tiny else TINY_STEP
    torch.manual_seed(0)
    step, _ = make_train_step(
        _network(impl, name), runtime=runtime, batch_size=batch, image_size=size, num_classes=1000,
        compile=variant == "compiled",
    )  # fmt: skip
    with cudnn_autotune(cuda):  # as nas train runs its steps
        t = time.perf_counter()
        step()  # the first step: cuDNN autotuning, or the compilation
        runtime.synchronize()
        first_s = time.perf_counter() - t
        if variant == "eager":
            with FlopCounterMode(display=False) as counter:
                step()
            flops[impl, name] = counter.get_total_flops()
        ms, _, runs, per_run = time_step(step, runtime, warmup=3 if cuda else 0, min_run_time=1.0 if cuda else 0.05)
    row = {"model": name, "impl": impl, "variant": variant, "px": size, "batch": batch, "ms": ms}
    row.update(steps=runs * per_run, images_per_s=batch / ms * 1e3, first_step_s=first_s)
    row["tflops"] = flops[impl, name] / (ms / 1e3) / 1e12 if (impl, name) in flops else float("nan")
    return row


def _plan(args, cuda: bool) -> list[tuple[str, str, str]]:
    variants = (args.variants or ("eager,compiled" if cuda else "eager")).split(",")
    names = ["efficientnet-b0"] if args.quick else list(MODELS)
    impls = ["nas", "torchvision"] + (["timm"] if timm_or_none() else [])
    # Eager first (cheap), then the compilations, ours and torchvision's before timm's.
    return [
        (v, n, i) for v in variants for n in names for i in impls if not (args.quick and v != "eager" and i == "timm")
    ]


def release(compiled: bool = False) -> None:
    """Give back what the last network held (between configurations and parts)."""
    if compiled:
        torch._dynamo.reset()  # compiled graphs hold their networks and workspaces; the next recompiles
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _step_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    base = df[df.impl == "torchvision"].set_index(["model", "variant"])["ms"]
    eager = df[df.variant == "eager"].set_index(["model", "impl"])["ms"]
    df["vs_torchvision"] = [r.ms / base.get((r.model, r.variant), np.nan) for r in df.itertuples()]
    df["vs_eager"] = [r.ms / eager.get((r.model, r.impl), np.nan) for r in df.itertuples()]
    return df


def _ratio(x: float) -> str:
    return "n/a (baseline not run)" if np.isnan(x) else f"{x:.3f}"


def step_part(args, runtime: Runtime, deadline: float) -> dict:
    """Bare training step of ours, torchvision's and timm's B0 and V2-S, eager and compiled."""
    cuda = runtime.device.type == "cuda"
    rows, notes, flops, took = [], [], {}, {}
    for variant, name, impl in _plan(args, cuda):
        # What this one will take: as this network's last (with a margin), twice the slowest other.
        seen = [s for (v, _), s in took.items() if v == variant]
        need = 1.2 * took[variant, name] if (variant, name) in took else 2 * max(seen, default=0.0)
        need = max(need, FIRST_COMPILE_S if variant == "compiled" and cuda and not seen else 0.0)
        if time.monotonic() + need > deadline:
            notes.append(f"{impl} {name} {variant}: not run, the part's budget ends (would take ~{need:.0f} s)")
            continue
        t = time.monotonic()
        rows.append(_step_row(impl, name, variant, runtime, args, flops))
        took[variant, name] = max(took.get((variant, name), 0.0), time.monotonic() - t)
        r = rows[-1]
        print(
            f"{impl:>11} {name} {variant}: {r['ms']:.2f} ms ({r['steps']} steps), first step {r['first_step_s']:.1f} s"
        )
        release(variant == "compiled")
    if not cuda and "compiled" not in (args.variants or ""):
        notes.append("compiled: not run on a CPU (Inductor's compile takes minutes there; --variants eager,compiled)")
    df = _step_table(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for n in notes:
        print(n)
    summary = [
        {
            "figure": f"{r.model} {r.impl} {r.variant} step, {r.px} px batch {r.batch}",
            "value": f"{r.ms:.2f} ms ({r.steps} steps), {r.images_per_s:,.0f} img/s, {r.tflops:.3g} TFLOP/s",
            "baseline": f"torchvision {r.variant}" + ("" if r.variant == "eager" else "; eager"),
            "ratio": _ratio(r.vs_torchvision) + ("" if r.variant == "eager" else f"; {_ratio(r.vs_eager)}"),
        }
        for r in df.itertuples()
    ]
    return {"rows": df.to_dict(orient="records"), "notes": notes, "summary": summary}


# ---- table: the step-time table's build and its agreement with unseen candidates --------------------


@register("trainaware-tiny")
class TinyTrainAware(TrainAwareSpace):
    """The CPU path's space: trainaware's decisions on V2-S x 0.1 (width and depth), first two stages."""

    def __init__(self):
        small = scale(EFFICIENTNETV2_S, width=0.1, depth=0.1, rounding="v2")
        super().__init__(small.replace(stages=small.stages[:2]))


# The CPU path's table: 16 px, batch 4, short timings, 2 calibration networks.
TINY_TABLE = dict(piece_run_time=0.005, measure_run_time=0.02, calibration_samples=2)
TINY_MEASURE = dict(min_run_time=0.02, repeats=1)


class BuildStopped(Exception):
    """The table part's time for building ran out."""


def build_table(space, runtime: Runtime, target: Target, table_dir: str, deadline: float, **timing):
    """``(model or None, figures)``: the table built afresh as ``nas calibrate`` builds it, stopped at
    ``deadline``, into a table file of its own in ``table_dir`` (what ``nas calibrate --out FILE`` writes)."""
    seen = {"done": 0, "total": 0}

    def tick(done: int, total: int, what: str) -> None:
        seen.update(done=done, total=total)
        if time.monotonic() > deadline:
            raise BuildStopped

    t0 = time.perf_counter()
    try:
        model = StepTimeModel.load_or_build(
            space, runtime, target, path=Path(table_dir) / "table.json", rebuild=True, progress=tick, **timing
        )
    except BuildStopped:
        model = None
    figures = {"build_s": time.perf_counter() - t0, "complete": model is not None, "parts_done": seen["done"]}
    figures.update(parts_total=seen["total"], pieces=len(model.table.pieces) if model else None)
    return model, figures


def agreement(model: StepTimeModel, space, n: int, deadline: float, **measure) -> dict:
    """The table's prediction against candidates it has not seen (not its calibration networks), each
    timed directly twice; stops at ``deadline``. Figures: table vs the mean of the timings, and the
    second timing vs the first."""
    seen, rows, rng, slowest = set(calibration_archs(model)), [], np.random.default_rng(0), 0.0
    while len(rows) < n and time.monotonic() + 1.5 * slowest < deadline:
        arch = space.sample(rng)
        if arch in seen:
            continue
        seen.add(arch)
        t = time.monotonic()
        row = {"arch": arch.to_string(), "predicted_ms": model.predict(arch)}
        row.update(measured_1=model.measure(arch, **measure), measured_2=model.measure(arch, **measure))
        rows.append(row)
        slowest = max(slowest, time.monotonic() - t)
    df = pd.DataFrame(rows, columns=["arch", "predicted_ms", "measured_1", "measured_2"])
    mean = (df.measured_1 + df.measured_2) / 2
    return {
        "table_vs_measured": agree(df.predicted_ms, mean),
        "repeat_vs_repeat": agree(df.measured_1, df.measured_2),
        "rows": rows,
    }


def _fig_line(name: str, f: dict) -> str:
    return f"{name:<30} {describe(f)}"


def table_part(args, runtime: Runtime, deadline: float) -> dict:
    """Step-time table: build time at the trainaware default, agreement with unseen candidates."""
    space = get_space("trainaware-tiny" if args.tiny else "trainaware")
    target = Target(16, 4) if args.tiny else default_target(runtime, space)
    reserve = min(45.0, 0.4 * (deadline - time.monotonic()))  # for the candidates after the build
    print(f"space {space.name}, target {target}; build capped at {deadline - reserve - time.monotonic():.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        model, built = build_table(space, runtime, target, tmp, deadline - reserve, **(TINY_TABLE if args.tiny else {}))
        result = {"space": space.name, "target": target.to_dict(), "build": built, "notes": []}
        if model is None:
            note = (
                f"build stopped by the budget after {built['build_s']:.0f} s: {built['parts_done']} of "
                f"{built['parts_total']} parts timed (pieces, then calibration networks); no agreement figures. "
                "Run `--parts table` alone for its whole budget, or `nas calibrate`"
            )
            print(note)
            result["notes"].append(note)
            result["summary"] = [{"figure": "table build (stopped)", "value": f"{built['build_s']:.0f} s"}]
            return result
        print(f"table built in {built['build_s']:.1f} s ({built['pieces']} pieces)")
        agree = agreement(model, space, args.candidates, deadline, **(TINY_MEASURE if args.tiny else {}))
    result.update(agree)
    t, r = agree["table_vs_measured"], agree["repeat_vs_repeat"]
    print(_fig_line("table vs measured", t))
    print(_fig_line("measured vs measured again", r))
    result["summary"] = [
        {"figure": f"table build, {target}", "value": f"{built['build_s']:.0f} s, {built['pieces']} pieces"},
        {
            "figure": f"table vs measured, {t['n']} unseen candidates",
            "value": f"Spearman {t['spearman']:.3f}, Kendall {t['kendall_tau']:.3f}, MAPE {t['mape']:.1%}, "
            f"{t['within_10pct']:.0%} within +-10%",
            "baseline": f"second timing vs first: Spearman {r['spearman']:.3f}, MAPE {r['mape']:.1%}, "
            f"{r['within_10pct']:.0%} within +-10%",
        },
    ]
    return result


# ---- train: nas train against the bare step (bench_throughput.py's train part) ----------------------

GPU_TRAIN = ["--width-mult", "1", "--depth-mult", "1", "--image-size", "224", "--batch-size", "256", "--epochs", "4"]


MIN_TRAIN_S = 30.0  # a round on CUDA: nas train's 4 epochs with its first-epoch autotuning, and the bare step


def train_part(args, runtime: Runtime, deadline: float) -> dict:
    """``nas train`` images/s, first epoch and steady state, against the bare step's."""
    if runtime.device.type == "cuda" and time.monotonic() + MIN_TRAIN_S > deadline:
        note = f"not run: the part's budget ends (a round takes about {MIN_TRAIN_S:.0f} s)"
        print(note)
        return {"notes": [note], "summary": []}
    argv = ["--tiny"] if args.tiny else [*GPU_TRAIN, "--rounds", "2"]
    targs = bench_throughput.parse_args([*argv, "--device", args.device, "--part", "train"])
    r = bench_throughput.train_part(targs, keep_going=lambda round_s: time.monotonic() + round_s < deadline)
    last = r["rounds"][-1]
    r["summary"] = [
        {
            "figure": f"nas train img/s, {targs.arch} {targs.image_size} px batch {targs.batch_size}, round "
            f"{last['round']}: steady / first epoch",
            "value": f"{last['train_images_per_s']:,.0f} / {last['first_epoch_images_per_s']:,.0f}",
            "baseline": f"bare step {last['step_images_per_s']:,.0f}",
            "ratio": f"{last['ratio']:.1%} / {last['first_epoch_ratio']:.1%}",
        }
    ]
    return r


# ---- search: trials per hour, GPU busy share, driver overhead per --trials-per-device ----------------

MIN_SEARCH_S = 20.0  # a search given less cannot start its workers and finish a trial


def _search_one(args, value: str, runtime: Runtime, out: Path, timeout: float) -> dict:
    argv = ["--tiny"] if args.tiny else ["--search-epochs", str(args.search_epochs)]
    sargs = bench_throughput.parse_args([*argv, "--device", args.device, "--trials-per-device", value])
    # auto may choose up to AUTO_CAP on CUDA; on a CPU it always runs one trial at a time (placement).
    per = int(value) if value.isdigit() else (AUTO_CAP if runtime.device.type == "cuda" else 1)
    sargs.search_trials = max(args.search_trials, 2 * per)  # every worker runs two trials at least
    r = bench_throughput.search_cli(
        bench_throughput.search_flags(sargs), out, runtime.device, timeout=timeout, threads=args.threads
    )
    util = f"{r['sm_util_pct']:.0f}% ({r['sm_util_samples']} samples)" if r["sm_util_pct"] is not None else "n/a"
    overhead, outside = r.get("driver_overhead_share", float("nan")), r.get("outside_trials_share_of_wall", 1.0)
    print(
        f"--trials-per-device {value}: {r['trials']} trials in {r['wall_s']:.0f} s{' (stopped)' * r['stopped']}, "
        f"{r['trials_per_hour']:,.0f} trials/h, SM utilisation {util}, driver overhead {overhead:.1%}, "
        f"outside trials {outside:.0%} of the command",
        flush=True,
    )
    return {"trials_per_device": value, **r}


def _search_summary(rows: list[dict]) -> tuple[list[dict], str]:
    base = next((r for r in rows if r["trials_per_device"] == "1" and r["trials"]), None)
    summary = []
    for r in rows:
        util = f"{r['sm_util_pct']:.0f}%" if r["sm_util_pct"] is not None else f"n/a ({r['util_note']})"
        summary.append(
            {
                "figure": f"nas search --trials-per-device {r['trials_per_device']}: trials/h, SM busy, overhead",
                "value": f"{r['trials_per_hour']:,.0f}, {util}, {r.get('driver_overhead_share', float('nan')):.1%}"
                + samples(r["trials"], "trials"),
                "baseline": f"1 per device: {base['trials_per_hour']:,.0f} trials/h" if base else "",
                "ratio": f"{r['trials_per_hour'] / base['trials_per_hour']:.2f}" if base else "",
            }
        )
    measured = [r for r in rows if r["trials_per_device"].isdigit() and r["trials"]]
    best = max(measured, key=lambda r: r["trials_per_hour"])["trials_per_device"] if measured else "none"
    auto = next((r for r in rows if r["trials_per_device"] == "auto"), None)
    picked = "not run" if auto is None else str(auto.get("auto_choice") or "not reported")
    agrees = "" if auto is None or best == "none" else (" (agrees)" if picked == best else f" (measured best: {best})")
    summary.append({"figure": "trials per device that serves best", "value": best})
    summary.append({"figure": "what --trials-per-device auto chose", "value": picked + agrees})
    return summary, best


def search_part(args, runtime: Runtime, deadline: float) -> dict:
    """``nas search`` for each ``--trials-per-device`` value; which value serves best."""
    values = [v for v in args.trials_per_device.split(",") if v] + ["auto"]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, value in enumerate(values):
            timeout = (deadline - time.monotonic()) / (len(values) - k)
            if timeout < MIN_SEARCH_S:
                notes.append(f"--trials-per-device {value}: not run, the part's budget ends")
                continue
            rows.append(_search_one(args, value, runtime, Path(tmp) / f"tpd-{value}", timeout))
    summary, best = _search_summary(rows)
    for line in summary[-2:]:
        print(line["figure"] + ": " + line["value"])
    if rows and rows[0]["sm_util_pct"] is None:
        notes.append(f"SM utilisation unavailable: {rows[0]['util_note']}")
    auto = next((r for r in rows if r["trials_per_device"] == "auto"), {})
    return {"rows": rows, "best": best, "auto_choice": auto.get("auto_choice"), "summary": summary, "notes": notes}


PARTS = {"step": step_part, "table": table_part, "train": train_part, "search": search_part}
