"""The one driver skeleton every way of running a search shares (``nas search``, ``nas grid-scale``,
``nas worker``'s parent, any backend):

1. check everything before anything is written: settings (checked on construction), the backend's
   options, the data (loaded and probed), the storage, the output path;
2. own the run directory (:class:`nas.rundir.RunDir`: one owner, one experiment, a failed start
   leaves no trace);
3. open the backend's state, close trials left running by dead processes, refuse to replace stored
   results by fewer;
4. let the backend run the missing trials, each finished trial appended to the results as it ends;
5. rewrite the result files from the backend's state, write ``fidelity.json``, print the summary
   and the reason when nothing completed.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nas.errors import NasError
from nas.results import ResultsWriter, common_error, finished_row


@dataclass
class Job:
    """One command's run: what to search (``problem``), how many trials, scheduled how."""

    problem: Any
    n_trials: int
    out: str
    backend: str = "embedded"
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the backend's own (workers, ray)
    plugins: tuple[str, ...] = ()
    restart: bool = False
    progress: bool = True
    echo: Callable[[str], None] = print
    evaluator: Any = None  # this process's evaluator (default: a nas.trial.Evaluator for the settings)

    @property
    def settings(self):
        return self.problem.settings


class Run:
    """What a backend gets while it runs: the run directory, the writer, the driver's evaluator."""

    def __init__(self, job: Job, rundir, evaluator, extra: dict[str, Any]):
        self.job, self.rundir, self.evaluator, self.extra = job, rundir, evaluator, extra
        self.path = rundir.path
        self.writer = ResultsWriter(rundir.path, job.problem, extra, shared=job.backend == "workers")
        self.bar = None
        self.warnings: list[str] = []

    def progress(self, total: int, initial: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="trials", unit="trial", disable=not self.job.progress,
                        dynamic_ncols=True, file=sys.stderr)
        return self.bar

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.job.echo(f"warning: {text}")


def prepare(job: Job):
    """Step 1: the backend's options, the data, the storage URL and the output path, checked before
    anything is written. Returns the backend and the driver's evaluator (it holds the loaded data)."""
    from nas.backends import get_backend
    from nas.rundir import RunDir
    from nas.storage import check_storage_url
    from nas.trial import Evaluator

    backend = get_backend(job.backend, job)
    backend.check()
    RunDir(job.out).check()
    check_storage_url(job.storage)
    evaluator = job.evaluator or Evaluator(job.settings, reference=job.problem.reference_arch())
    evaluator.check_data()
    return backend, evaluator


def run(job: Job) -> dict[str, Any] | None:
    """Run (or resume) ``job`` until ``job.n_trials`` trials have finished; returns the best row."""
    from nas.interrupt import handle_interrupts
    from nas.rundir import RunDir

    backend, evaluator = prepare(job)
    problem, echo = job.problem, job.echo
    rundir = RunDir(job.out, what=f"nas {problem.kind} run")
    config = {**problem.config(), "backend": _family(job.backend), **backend.config()}
    with handle_interrupts(), rundir.own(config, restart=job.restart):
        backend.open(rundir)
        closed = backend.close_dead()
        rows = backend.rows()
        done, remaining = problem.pending(rows, job.n_trials)
        rundir.check_not_less(problem.results_file, sum(1 for r in rows if finished_row(r)))
        rundir.started()
        extra = {**run_extra(job, evaluator), **backend.extra()}
        run_ = Run(job, rundir, evaluator, extra)
        run_.writer.rewrite(rows, plot=False)
        if closed:
            echo(f"closed {len(closed)} trial(s) left running by a stopped process ({', '.join(map(str, closed))}); "
                 "they run again")
        if done:
            echo(f"resuming {rundir.path}: {done} of {done + remaining} {problem.unit} already finished")
        t0 = time.perf_counter()
        interrupted = False
        try:
            if remaining > 0:
                _describe(job, evaluator, echo)
                backend.execute(run_, remaining)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if run_.bar is not None:
                run_.bar.close()
            rows = backend.rows()
            run_.writer.extra = {**extra, **backend.extra()}
            df = run_.writer.rewrite(rows, plot=True)
        best = run_.writer.best
        sections = step_time_fidelity(df)
        if not interrupted and problem.pending(rows, job.n_trials)[1] == 0:
            sections.update(problem.finish(rundir.path, df, echo))
        write_fidelity(rundir.path, sections)
    echo(problem.summary(df))
    for line in fidelity_lines(sections):
        echo(line)
    for w in run_.warnings:
        echo(f"warning: {w}")
    if interrupted:
        echo(f"interrupted; results so far in {rundir.path}/ ({problem.files()}); rerun the same command to resume")
        raise KeyboardInterrupt
    if remaining > 0:
        echo(f"{problem.kind} time {time.perf_counter() - t0:.1f} s; results in {rundir.path}/ ({problem.files()})")
    if best:
        echo(problem.closing_line(best, rundir.path) if hasattr(problem, "closing_line")
             else f"best architecture (reward {best['reward']:.4f}): {best['arch']}")
    else:
        err = common_error(df)
        echo("no trial completed" + (f"; most common error: {err}" if err else ""))
    return best


def _family(backend: str) -> str:
    # Workers and the embedded driver share one Optuna storage: a run is resumable by either.
    return "embedded" if backend in ("embedded", "workers") else backend


def run_extra(job: Job, evaluator) -> dict[str, Any]:
    s = job.settings
    st = s.step_time
    return {"space": s.space, "reward": evaluator.reward.config(), "sampler": job.sampler, "dataset": s.dataset,
            "num_classes": evaluator.num_classes,
            "target": {"method": st.method, "image_size": st.target_image_size, "batch_size": st.target_batch_size,
                       "device": _device_name(evaluator)}}


def _device_name(evaluator) -> str:
    timer = getattr(evaluator, "timer", None)
    if timer is None or not hasattr(timer, "runtime"):  # a stand-in evaluator (tests, plugins)
        return str(evaluator.settings.device) if hasattr(evaluator, "settings") else "unknown"
    fp = timer.runtime.fingerprint()
    return f"{fp['device']} ({fp['device_name']})"


def _describe(job: Job, evaluator, echo) -> None:
    st = job.settings.step_time
    if st.method == "proxy":
        what = (f"the proxy's step (width {job.settings.proxy.width:g}, depth {job.settings.proxy.depth:g}, "
                f"{job.settings.proxy.image_size} px, batch {job.settings.proxy.train.batch_size})")
    else:
        what = f"the full-size training step at {st.target_image_size} px, batch {st.target_batch_size}"
    how = {"table": "predicted by the step-time table", "measure": "measured", "proxy": "measured"}[st.method]
    echo(f"S = step time of {what}, {how} on {_device_name(evaluator)}, relative to the reference")


# -- fidelity ---------------------------------------------------------------------------------------------

def fidelity(predicted, measured) -> dict[str, Any] | None:
    """How well predicted step times stand for measured ones: Spearman, Kendall tau, mean absolute
    percentage error and the share within +-10% (nn-Meter's measure)."""
    import numpy as np

    pairs = [(float(p), float(m)) for p, m in zip(predicted, measured)
             if p is not None and m is not None and math.isfinite(float(p)) and math.isfinite(float(m)) and float(m) > 0]
    if not pairs:
        return None
    p, m = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    err = np.abs(p - m) / m
    out: dict[str, Any] = {"n": len(pairs), "mape": float(err.mean()), "within_10pct": float((err <= 0.10).mean()),
                           "spearman": None, "kendall_tau": None}
    if len(pairs) >= 3 and np.ptp(p) > 0 and np.ptp(m) > 0:
        from scipy import stats

        out["spearman"] = float(stats.spearmanr(p, m).statistic)
        out["kendall_tau"] = float(stats.kendalltau(p, m).statistic)
    return out


def step_time_fidelity(df) -> dict[str, Any]:
    """The step-time model checked against the direct timings of the run's sampled trials."""
    if "step_time_method" not in df or not len(df):
        return {}
    table = df[(df["step_time_method"] == "table") & df["measured_step_time_ms"].notna()]
    f = fidelity(table["step_time_ms"], table["measured_step_time_ms"]) if len(table) else None
    return {"step_time": {**f, "trials": [int(n) for n in table["number"]]}} if f else {}


def write_fidelity(run_dir: Path, sections: dict[str, Any]) -> None:
    """``fidelity.json``: what the run's figures were checked against (sections kept from earlier runs)."""
    from nas.files import atomic_write_json, read_json

    if not sections:
        return
    path = Path(run_dir) / "fidelity.json"
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = read_json(path, "fidelity file")
        except NasError:
            old = {}
    atomic_write_json(path, {**(old if isinstance(old, dict) else {}), **sections})


def fidelity_lines(data: dict[str, Any]) -> list[str]:
    out = []
    if "step_time" in data:
        f = data["step_time"]
        rank = "" if f["spearman"] is None else f"Spearman {f['spearman']:.2f}, Kendall tau {f['kendall_tau']:.2f}, "
        out.append(f"step-time model vs direct timing on {f['n']} trials: {rank}mean error {100 * f['mape']:.1f}%, "
                   f"{100 * f['within_10pct']:.0f}% within +-10% (fidelity.json)")
    if "accuracy" in data:
        from nas.validate import line

        out.append(line(data["accuracy"]))
    return out
