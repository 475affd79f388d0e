"""Is the device kept busy? Throughput of ``nas`` against the bare work it wraps, in one run.

Part ``train``: ``nas train`` images/s against the bare training step's images/s in the same setting.

* ``nas train`` runs in this process as a user runs it (``nas.cli.main``: data on the device,
  augmentation, mixup, loss bookkeeping, schedule, EMA, evaluation, checkpoints), fixed-size
  (``--progressive off``) at ``--image-size``; its images/s is the training pass of each epoch
  (``metrics.csv``'s ``images_per_s``), median over the epochs after the first (the first pays for
  warm-up: cuDNN autotuning, compilation, caches).
* The bare step is :func:`nas.steptime.measure.make_train_step` timed by :func:`nas.steptime.measure.time_step`: the
  same network (``final.json``'s architecture), batch, image size, device, precision, memory format
  and compilation, on one fixed random batch; its images/s is ``batch / median step time``.
* Rounds alternate the two (train, step, train, step, ...) so a busy patch of a shared machine hits
  both; the ratio is taken within each round, for the first epoch and for the steady state (the
  median of the later epochs). Goal on a GPU: ``nas train`` at >= 90% of the step.
* On CUDA the SM utilisation during ``nas train`` is sampled with NVML (``nvidia-ml-py``:
  ``pip install -e ".[gpu]"``; imported on CUDA only).

Part ``search``: ``nas search`` as a user runs it, in a fresh interpreter (``--search-trials``
trials, the proxy of ``--search-width-mult/--search-depth-mult/--search-image-size``,
``--trials-per-device``; :func:`search_cli`, which ``gpu_report.py`` runs too):

* trials per hour over the whole command (start-up, reference, results and plots included);
* the share of wall time spent inside trials between the first trial's start and the last trial's
  end (the union of the trials' ``t_start``..``t_end`` intervals in ``trials.csv``: parallel trials
  overlap); the rest of that span is driver overhead (asking and telling the storage, appending
  results, the next proposal). Goal: overhead <= 2%;
* on CUDA, the SM utilisation sampled during the search (goal with the README's GPU proxy: >= 60%).

Parts are functions of the same shape, ``part(args) -> dict``, registered in :data:`PARTS`.

    python benchmarks/bench_throughput.py --threads 1                           # CPU, digits, B0 x 0.25
    python benchmarks/bench_throughput.py --tiny                                # seconds: fake data, B0 x 0.1
    python benchmarks/bench_throughput.py --device cuda --width-mult 1 --depth-mult 1 \\
        --image-size 224 --batch-size 256 --epochs 6                            # the issue's GPU setting
    python benchmarks/bench_throughput.py --part search --device cuda --search-width-mult 1 \\
        --search-depth-mult 0.5 --search-image-size 128 --trials-per-device 4   # the README's GPU proxy
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from common import parse_with_tiny, samples

from nas.cli import main as nas_main
from nas.core.device import Runtime, cudnn_autotune, device_name
from nas.core.utilisation import GpuUtilisation
from nas.steptime.measure import make_train_step, time_step
from search_spaces import Architecture, build

REPO = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 20.0  # a stopped nas search records its finished trials and ends within this
# Seconds on a CPU: fake data, B0 x 0.1 at 16 px, one round; a 2-trial search of the same size.
TINY = dict(
    dataset="fake",
    width_mult=0.1,
    depth_mult=0.1,
    image_size=16,
    batch_size=32,
    epochs=2,
    rounds=1,
    warmup=1,
    min_run_time=0.1,
    threads=1,
    search_trials=2,
    search_width_mult=0.1,
    search_depth_mult=0.1,
    search_image_size=16,
    search_batch_size=32,
    search_epochs=1,
    measure_time=0.05,
)


def _train_once(args, out: Path) -> tuple[list[float], dict, GpuUtilisation]:
    """One ``nas train`` run in this process; its training pass's images/s per epoch."""
    argv = [
        "train",
        args.arch,
        *("--dataset", args.dataset, "--progressive", "off", "--device", args.device, "--compile", args.compile),
        *("--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)),
        *("--final-bn-recalibration", "0", "--no-progress", "--out", str(out)),
    ]
    for flag, value in (("--width-mult", args.width_mult), ("--depth-mult", args.depth_mult)):
        if value is not None:
            argv += [flag, str(value)]
    runtime = Runtime.resolve(args.device)
    log = io.StringIO()  # nas train's own lines; shown only if it fails
    with GpuUtilisation(runtime.device) as util, contextlib.redirect_stdout(log):
        rc = nas_main(argv)
    if rc != 0:
        raise SystemExit(f"nas train failed (exit {rc}): {' '.join(argv)}\n{log.getvalue()}")
    rows = pd.read_csv(out / "metrics.csv")
    final = json.loads((out / "final.json").read_text())
    return rows["images_per_s"].tolist(), final, util


def _bare_step(args, final: dict) -> float:
    runtime = Runtime.resolve(args.device)
    torch.manual_seed(0)
    model = build(Architecture.from_string(final["arch"]), final["num_classes"])
    step, _ = make_train_step(
        model,
        runtime=runtime,
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=final["num_classes"],
        optimizer=final["config"]["optimizer"],
        compile=bool(final["compiled"]),
    )
    with cudnn_autotune(runtime.device.type == "cuda"):  # as nas train's loop runs its steps
        median_ms, _, _, _ = time_step(step, runtime, warmup=args.warmup, min_run_time=args.min_run_time)
    return args.batch_size / (median_ms / 1e3)


def _train_round(args, r: int, tmp: Path) -> dict:
    t0 = time.perf_counter()
    per_epoch, final, util = _train_once(args, tmp / f"run{r}")
    wall = time.perf_counter() - t0
    step_ips = _bare_step(args, final)
    steady = statistics.median(per_epoch[1:] or per_epoch)  # the first epoch pays for warm-up
    row = {
        "round": r + 1,
        "first_epoch_images_per_s": per_epoch[0],
        "train_images_per_s": steady,
        "steady_epochs": len(per_epoch[1:] or per_epoch),
        "step_images_per_s": step_ips,
        "first_epoch_ratio": per_epoch[0] / step_ips,
        "ratio": steady / step_ips,
        "sm_util_pct": util.mean,
        "sm_util_samples": len(util.samples),
        "train_wall_s": wall,
        "compiled": final["compiled"],
        "arch": final["arch"],
        "util_note": util.why,
    }
    print(
        f"round {r + 1}: nas train {steady:,.0f} img/s steady (first epoch {per_epoch[0]:,.0f}), bare step "
        f"{step_ips:,.0f} img/s, ratio {row['ratio']:.1%} (first epoch {row['first_epoch_ratio']:.1%})"
        + (f", SM utilisation {util.mean:.0f}%" if util.mean is not None else ""),
        flush=True,
    )
    return row


def train_part(args, keep_going: Callable[[float], bool] | None = None) -> dict:
    """``nas train`` images/s against the bare step's, alternating rounds; after the first,
    another only while ``keep_going(seconds a round took)`` (a caller's time budget)."""
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for r in range(args.rounds):
            if rounds and keep_going is not None and not keep_going((time.perf_counter() - t0) / len(rounds)):
                print(f"stopped after {len(rounds)} of {args.rounds} rounds: the time budget ends", flush=True)
                break
            rounds.append(_train_round(args, r, Path(tmp)))
    df = pd.DataFrame(rounds)
    runtime = Runtime.resolve(args.device)
    print(
        f"\n== nas train against the bare training step: {args.dataset}, batch {args.batch_size}, "
        f"{args.image_size} px, {args.epochs} epochs =="
    )
    print(
        f"device {runtime.device} ({device_name(runtime.device)}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {runtime.dtype_name}, "
        f"{'channels_last' if runtime.channels_last else 'contiguous'}, compiled {rounds[0]['compiled']}"
    )
    print(f"network {rounds[0]['arch']}")
    cols = ["round", "first_epoch_images_per_s", "train_images_per_s", "step_images_per_s", "ratio", "sm_util_pct"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    ratio, first = df["ratio"].median(), df["first_epoch_ratio"].median()
    print(
        f"median ratio nas train / bare step: {ratio:.1%} steady (median of epochs 2..{args.epochs}), {first:.1%} "
        f"in the first epoch (goal on a GPU: >= 90%){samples(len(df), 'rounds')}"
    )
    if rounds[0]["util_note"]:
        print(f"SM utilisation: unavailable ({rounds[0]['util_note']})")
    return {"part": "train", "median_ratio": ratio, "median_first_epoch_ratio": first, "rounds": rounds}


def busy_share(t_start: list[float], t_end: list[float]) -> tuple[float, float]:
    """(time covered by at least one trial, span from the first start to the last end), in seconds."""
    spans = sorted(zip(t_start, t_end))
    covered, cur_lo, cur_hi = 0.0, *spans[0]
    for lo, hi in spans[1:]:
        if lo > cur_hi:
            covered += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    covered += cur_hi - cur_lo
    return covered, max(t_end) - min(t_start)


def _stop(proc: subprocess.Popen) -> str:
    """Stop a ``nas search`` and its workers (its own process group) as Ctrl-C does: it records what
    it finished; SIGKILL to the group if it has not ended after :data:`STOP_GRACE_S`."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=STOP_GRACE_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


def search_cli(
    flags: list[str], out: Path, device: torch.device, timeout: float | None = None, threads: int | None = None
) -> dict:
    """``nas search FLAGS`` as a user runs it, in a fresh interpreter (its own process group, so that
    a time budget stops it with its workers), SM utilisation sampled meanwhile; figures from
    ``trials.csv``. ``stopped``: the budget ended it."""
    cmd = [sys.executable, "-m", "nas.cli", "search", "--no-progress", "--out", str(out), *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    with GpuUtilisation(device) as util:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log, stopped = proc.communicate(timeout=timeout)[0], False
        except subprocess.TimeoutExpired:
            log, stopped = _stop(proc), True
        except BaseException:  # Ctrl-C or a timeout of our own: its own process group would run on
            _stop(proc)
            raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0 and not stopped:
        raise SystemExit(f"nas search failed (exit {proc.returncode}): {' '.join(cmd)}\n{log[-3000:]}")
    df = pd.read_csv(out / "trials.csv") if (out / "trials.csv").exists() else pd.DataFrame(columns=["state"])
    done = df[df["state"].isin(["COMPLETE", "PRUNED"])]
    result = {"trials": len(done), "wall_s": wall, "stopped": stopped, "sm_util_pct": util.mean}
    result.update(sm_util_samples=len(util.samples), util_note=util.why, trials_per_hour=len(done) / wall * 3600)
    chosen = re.search(r"--trials-per-device auto: (\d+) on (.*)", log)  # what auto measured and chose
    result.update(auto_choice=int(chosen.group(1)) if chosen else None, auto_line=chosen.group(0) if chosen else None)
    if len(done):
        covered, span = busy_share(done["t_start"].tolist(), done["t_end"].tolist())
        result.update(inside_trials_share=covered / span, driver_overhead_share=1 - covered / span)
        result.update(outside_trials_share_of_wall=1 - covered / wall, mean_trial_s=float(done["duration_s"].mean()))
    return result


def search_flags(args) -> list[str]:
    """The proxy and schedule of the search part, as ``nas search`` flags."""
    flags = [
        *("--trials", str(args.search_trials), "--dataset", args.dataset, "--device", args.device),
        *("--width-mult", str(args.search_width_mult), "--depth-mult", str(args.search_depth_mult)),
        *("--image-size", str(args.search_image_size), "--epochs", str(args.search_epochs)),
        *("--batch-size", str(args.search_batch_size)),
        *("--step-time", args.step_time, "--measure-time", str(args.measure_time), "--pruner", "none"),
    ]
    return flags + (["--trials-per-device", str(args.trials_per_device)] if args.trials_per_device else [])


def search_part(args) -> dict:
    """``nas search`` trials per hour, share of time inside trials, SM utilisation."""
    runtime = Runtime.resolve(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        r = search_cli(search_flags(args), Path(tmp) / "search", runtime.device, threads=args.threads)
    print(
        f"\n== nas search: {r['trials']} trials, {args.dataset}, proxy width {args.search_width_mult:g} depth "
        f"{args.search_depth_mult:g} {args.search_image_size} px, {args.search_epochs} epochs, step time "
        f"{args.step_time}, {args.trials_per_device or 1} trial(s) per device =="
    )
    print(f"device {runtime.device} ({device_name(runtime.device)}), torch {torch.__version__}")
    print(
        f"wall {r['wall_s']:.1f} s (a fresh interpreter: start-up and the reference included), "
        f"{r['trials_per_hour']:,.0f} trials/h, mean trial {r['mean_trial_s']:.2f} s{samples(r['trials'], 'trials')}"
    )
    print(
        f"inside trials {r['inside_trials_share']:.1%} of the time from the first trial's start to the last one's "
        f"end: driver overhead {r['driver_overhead_share']:.1%} (goal <= 2%); outside trials "
        f"{r['outside_trials_share_of_wall']:.1%} of the whole command"
    )
    print(
        f"SM utilisation during the search: {r['sm_util_pct']:.0f}% ({r['sm_util_samples']} samples)"
        if r["sm_util_pct"] is not None
        else f"SM utilisation: unavailable ({r['util_note']})"
    )
    return {"part": "search", **r}


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"train": train_part, "search": search_part}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--arch", default="efficientnet-b0")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--width-mult", type=float, default=None, help="default: nas train's (0.25 on digits)")
    p.add_argument("--depth-mult", type=float, default=None, help="default: nas train's (0.25 on digits)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="per nas train run; the first is warm-up (default 4)")
    p.add_argument("--compile", default="auto", help="nas train's --compile; the bare step follows what it did")
    p.add_argument("--rounds", type=int, default=3, help="alternating train / step rounds (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed bare steps per round (default 3)")
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timed bare steps per round")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g = p.add_argument_group("search part")
    g.add_argument("--search-trials", type=int, default=12)
    g.add_argument("--search-width-mult", type=float, default=0.25)
    g.add_argument("--search-depth-mult", type=float, default=0.25)
    g.add_argument("--search-image-size", type=int, default=32)
    g.add_argument("--search-batch-size", type=int, default=64)
    g.add_argument("--search-epochs", type=int, default=4)
    g.add_argument("--step-time", default="proxy", help="nas search --step-time (default proxy)")
    g.add_argument("--measure-time", type=float, default=0.4, help="nas search --measure-time (default 0.4)")
    g.add_argument("--trials-per-device", default=None, help="nas search --trials-per-device")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    return parse_with_tiny(p, TINY, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [PARTS[name](args) for name in (PARTS if args.part == "all" else [args.part])]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
