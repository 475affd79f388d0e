"""Embedded Optuna driver against Ray Tune on the same small search: trials per hour and overhead.

Every configuration runs the same command a user would (``python -m nas.cli search ...``, fake data,
a tiny proxy, the same seed, so the same sampler draws) in a fresh run directory:

* ``embedded``: one process, trials one after another (``--pruner none``, like Ray without a scheduler);
* ``workers``: ``--workers 2``, two processes sharing the run's SQLite study;
* ``ray x1``: ``--backend ray --max-concurrent 1``, a private local Ray, one trial at a time, i.e.
  the embedded driver's schedule with Ray's machinery around it;
* ``ray x2``: ``--backend ray --max-concurrent 2``.

All run with ``OMP_NUM_THREADS=1`` (what Ray gives a 1-CPU trial), so a trial's own compute is the
same everywhere. Reported per configuration:

* ``wall_s``: the whole command, start-up (imports, Ray start) included;
* ``trials/h``: trials / wall time (what a user gets);
* ``trial_s``: mean time inside a trial (:meth:`nas.trial.evaluator.Evaluator.evaluate`: timing + training);
* ``overhead/trial_s``: ``(wall_s * slots - sum(trial_s)) / trials``, the slot time not spent
  evaluating, per trial (start-up, scheduling, reference measurements, result export). ``slots``
  is the number of trials that can run at once.

Usage: ``python benchmarks/bench_backends.py [--trials 6] [--epochs 1] [--configs embedded,ray-x1,...]``. Timings
on a shared machine are noisy; compare within one run. ``--tiny``: 2 trials of embedded and
workers-2 (no Ray). ``--address HOST:PORT`` runs the Ray configurations on that cluster instead of
a private local Ray each.

S comes from the proxy's own step (``--step-time proxy``) by default: with ``table``, the first
configuration to run would build this machine's step-time table (minutes on a CPU) and the others
reuse it, which says nothing about the backends. ``--step-time table`` is for a machine whose table
is built already (``nas calibrate``).

``--storage-stress N`` measures the storage layer alone instead: N processes each ask/tell K
trivial trials (``--stress-trials K``) with the user attributes a worker writes, against the
SQLite study that ``nas worker`` uses (``nas.study.storage.make_storage``: long lock timeout)
and against Optuna's JournalStorage on a file; it checks that exactly N*K trials with distinct
numbers were recorded and reports trials per second and errors.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import parse_with_tiny, samples

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "fake",
    "--measure-time",
    "0.05",
    "--width-mult",
    "0.1",
    "--depth-mult",
    "0.1",
    "--batch-size",
    "32",
    "--seed",
    "0",
    "--no-progress",
]
# No early stopping anywhere (Ray runs without a scheduler), so every configuration trains every trial.
CONFIGS = {
    "embedded": (["--pruner", "none"], 1),
    "workers-2": (["--workers", "2", "--pruner", "none"], 2),
    "ray-x1": (["--backend", "ray", "--max-concurrent", "1"], 1),
    "ray-x2": (["--backend", "ray", "--max-concurrent", "2"], 2),
}


def run_one(name: str, trials: int, root: Path, args: argparse.Namespace) -> dict:
    extra, slots = CONFIGS[name]
    if args.address and name.startswith("ray"):
        extra = [*extra, "--address", args.address]
    out = root / name
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "nas.cli",
        "search",
        "--trials",
        str(trials),
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--step-time",
        args.step_time,
        *TINY,
        *extra,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    df = pd.read_csv(out / "trials.csv")
    done = df[df["state"] == "COMPLETE"]
    busy = float(done["duration_s"].sum())
    return {
        "config": name,
        "slots": slots,
        "trials": len(done),
        "wall_s": wall,
        "trials/h": len(done) / wall * 3600,
        "trial_s": float(done["duration_s"].mean()),
        "overhead/trial_s": (wall * slots - busy) / len(done),
        "mean_S": float(done["S"].mean()),
    }


def _open_storage(kind: str, root: str):
    import optuna

    if kind == "sqlite":
        from nas.study.storage import make_storage

        return make_storage(None, Path(root))
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(root) / "journal.log")))


def _stress_worker(kind: str, root: str, k: int, seed: int) -> int:
    """One process: K trials as a worker writes them (params, a few user attributes, a value)."""
    import warnings

    import optuna

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name="stress", storage=_open_storage(kind, root), sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    errors = 0
    for _ in range(k):
        try:
            t = study.ask()
            x = t.suggest_categorical("x", list(range(100)))
            for key in ("arch", "duplicate_of", "worker", "hostname"):
                t.set_user_attr(key, f"{key}-{x}")
            study.tell(t, float(x))
        except Exception:  # a storage error is what is being counted
            errors += 1
    return errors


def storage_stress(n_procs: int, k: int) -> pd.DataFrame:
    import multiprocessing

    import optuna

    rows = []
    for kind in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory(prefix="nas-bench-storage-") as root:
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            optuna.create_study(study_name="stress", storage=_open_storage(kind, root))
            ctx = multiprocessing.get_context("spawn")
            t0 = time.perf_counter()
            with ctx.Pool(n_procs) as pool:
                errors = sum(pool.starmap(_stress_worker, [(kind, root, k, i) for i in range(n_procs)]))
            wall = time.perf_counter() - t0
            trials = optuna.load_study(study_name="stress", storage=_open_storage(kind, root)).get_trials()
            numbers = [t.number for t in trials]
            rows.append(
                {
                    "storage": kind,
                    "processes": n_procs,
                    "trials": len(trials),
                    "expected": n_procs * k,
                    "distinct_numbers": len(set(numbers)),
                    "errors": errors,
                    "wall_s": wall,
                    "trials/s": len(trials) / wall,
                }
            )
    return pd.DataFrame(rows).set_index("storage")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--epochs", type=int, default=1, help="proxy epochs: longer trials amortise the overhead")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--step-time", default="proxy", help="nas search --step-time (default proxy: see above)")
    ap.add_argument("--address", default=None, help="Ray configurations: this cluster (default: a private local Ray)")
    ap.add_argument(
        "--storage-stress",
        type=int,
        default=None,
        metavar="N",
        help="instead: N processes hammering one study (SQLite vs JournalStorage)",
    )
    ap.add_argument("--stress-trials", type=int, default=50, metavar="K", help="trials per stress process")
    args = parse_with_tiny(ap, dict(trials=2, configs="embedded,workers-2"), argv)
    if args.storage_stress is not None:
        if args.storage_stress < 1 or args.stress_trials < 1:
            ap.error("--storage-stress and --stress-trials must be positive")
        print(storage_stress(args.storage_stress, args.stress_trials).to_string(float_format=lambda v: f"{v:.2f}"))
        return 0
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or args.trials < 1:
        ap.error(f"unknown config(s) {unknown}" if unknown else "--trials must be positive")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-bench-backends-") as tmp:
        for n in names:
            print(f"running {n} ...", file=sys.stderr, flush=True)
            rows.append(run_one(n, args.trials, Path(tmp), args))
    table = pd.DataFrame(rows).set_index("config")
    print(
        f"{args.trials} trials each, fake data, proxy {args.image_size} px, width/depth 0.1, {args.epochs} epoch(s), "
        f"OMP_NUM_THREADS=1, {os.cpu_count()} CPUs, step time {args.step_time}{samples(args.trials, 'trials')}"
    )
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    if "embedded" in table.index:
        base = table.loc["embedded"]
        for n in table.index.drop("embedded"):
            r = table.loc[n]
            print(
                f"{n} / embedded: trials/h x{r['trials/h'] / base['trials/h']:.2f}, "
                f"overhead per trial x{r['overhead/trial_s'] / base['overhead/trial_s']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
