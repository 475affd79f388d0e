"""Every benchmark script runs end to end at a tiny size and prints the figures it promises.

Each script runs as a user runs it, ``python benchmarks/X.py --tiny ...`` from the repository root:
as ``__main__`` with its own directory first on ``sys.path``, in this process (an interpreter's start
costs seconds of imports, and what the scripts start themselves still starts), its environment,
working directory, threads and warning filters put back after it; ``bench_compile.py`` keeps a fresh
interpreter (the compiler's caches and workers are per process). The tests read the figures from its
output and check that they are there and finite (positive where they cannot be otherwise). Nothing
here checks a speed: the figures are noise at this size; what is checked is that the scripts still run
against today's library.

Slow ones are marked and say why.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import runpy
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import optuna
import pytest
import torch

from nas.steptime.table import read
from tests.backends.test_ray import cluster  # noqa: F401  (the suite's private Ray: 127.0.0.1, stopped by pid)
from tests.helpers import REPO, nas_env

BENCHMARKS = REPO / "benchmarks"
NOT_HERE: set[str] = set()
NUMBER = r"(-?[\d,]*\.?\d+(?:e[-+]?\d+)?)"
TESTED: set[str] = set()


def covers(script: str):
    """Marks a test as the one that runs ``script`` (see :func:`test_every_script_is_run_by_a_test`)."""
    TESTED.add(script)
    return lambda fn: fn


FRESH = {"bench_compile.py"}  # run in their own interpreter (see the module docstring)


def run(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> str:
    """``script``'s standard output; its exit status must be 0. ``timeout`` bounds a fresh interpreter."""
    env = env or nas_env(OMP_NUM_THREADS="1")
    argv = [f"benchmarks/{script}", "--tiny", *args]
    if script in FRESH:
        p = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"{script} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout
    out, threads, verbosity = io.StringIO(), torch.get_num_threads(), optuna.logging.get_verbosity()
    try:
        with (
            pytest.MonkeyPatch.context() as mp,
            mock.patch.dict(os.environ, env, clear=True),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
        ):
            mp.chdir(REPO)
            mp.syspath_prepend(str(BENCHMARKS))
            mp.setattr(sys, "argv", argv)
            try:
                runpy.run_path(str(REPO / argv[0]), run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code
    finally:
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)  # some scripts quieten Optuna
    assert code in (0, None), f"{script} exited {code}\n{out.getvalue()[-3000:]}"
    return out.getvalue()


def figures(pattern: str, text: str, count: int | None = None) -> list[tuple[float, ...]]:
    """Every match of ``pattern`` (NUMBER groups) in ``text``, as floats; at least one, or ``count``."""
    matches = [m if isinstance(m, tuple) else (m,) for m in re.findall(pattern, text, flags=re.M)]
    found = [tuple(float(g.replace(",", "")) for g in m) for m in matches]
    assert found and (count is None or len(found) == count), f"{pattern!r}: {len(found)} matches in\n{text[-3000:]}"
    return found


def finite(values, *, positive: bool = True) -> None:
    flat = [v for row in values for v in (row if isinstance(row, tuple) else (row,))]
    bad = [v for v in flat if not math.isfinite(v) or (positive and v <= 0)]
    assert not bad, f"not {'positive and ' * positive}finite: {bad} in {values}"


def test_every_script_is_run_by_a_test():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if p.name.startswith(("bench_", "gpu_"))} - NOT_HERE
    assert scripts == TESTED, f"scripts without a test here: {sorted(scripts - TESTED)}"


@covers("bench_step_time.py")
def test_step_time_prints_both_models_in_both_formats_and_their_ratios():
    out = run("bench_step_time.py", "--device", "cpu")
    finite(figures(rf"^\s*(?:ours|torchvision)\s+(?:contiguous|channels_last)\s+{NUMBER}", out, count=4))
    finite(figures(rf"^\s*(?:contiguous|channels_last)\s+{NUMBER}\s+{NUMBER}", out, count=2))
    assert "(2 rounds: the IQR is rough)" in out


@covers("bench_grid.py")
def test_grid_prints_the_grid_and_the_driver_cost_against_its_rerun():
    out = run("bench_grid.py")
    finite(figures(rf"^0\.05\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, count=1)[0][:2])
    ((n, first, per),) = figures(rf"driver: {NUMBER} candidates .* in {NUMBER} s \({NUMBER} s per candidate", out)
    finite([(n, first, per)])
    finite(figures(rf"beyond that baseline: {NUMBER} s \(3 candidates\)", out), positive=False)


@covers("bench_search_quality.py")
def test_search_quality_prints_regret_per_sampler_and_budget_and_writes_its_files(tmp_path):
    out = run("bench_search_quality.py", "--out", str(tmp_path))
    finite(figures(rf"^R\* = {NUMBER}: the best reward of 300 random", out))
    cell = r"(-?[\d.]+)% \[(-?[\d.]+), (-?[\d.]+)\]"
    rows = figures(
        rf"^\| (?:tpe|tpe-independent|random|nsga2) \| {cell} \| {cell} \| >?(\d+) \| {NUMBER} \| {NUMBER} \|$",
        out,
        count=4,
    )
    for r in rows:
        assert r[0] >= r[3] and r[1] <= r[0] <= r[2]  # regret never grows with the budget; median inside its IQR
        assert 0 < r[7] <= r[8]  # hypervolume only grows
    ((per, evaluate, driver),) = figures(
        rf"driver overhead: 20 trials in [\d.]+ s: {NUMBER} ms per trial, of which the evaluation {NUMBER} ms "
        rf"and the driver {NUMBER} ms",
        out,
    )
    finite([(per, evaluate, driver)])
    saved = json.loads((tmp_path / "search_quality.json").read_text())
    assert set(saved["samplers"]) == {"tpe", "tpe-independent", "random", "nsga2"} and saved["budgets"] == [5, 10]
    assert "| sampler |" in (tmp_path / "search_quality.md").read_text()


@pytest.mark.slow  # a real search and 6 real evaluations: ~45 s on 2 cores, mostly the trials' step timings
@covers("bench_search.py")
def test_search_prints_the_overhead_and_tpe_against_random(tmp_path):
    out = run("bench_search.py", "--cache-dir", str(tmp_path))
    finite(figures(rf"framework overhead share {NUMBER}% of wall time; per trial {NUMBER} s \(2 trials\)", out))
    rows = figures(rf"^\s*(?:random|tpe)\s+\d+\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%", out, count=4)
    finite([r[:1] for r in rows])
    finite([r[1:] for r in rows], positive=False)  # regret and share found: zero when the optimum is found
    assert re.search(rf"regret ratio tpe/random at budget 6: {NUMBER}|random search found the optimum", out)


@pytest.mark.slow  # two real nsga2 searches of 6 trials (fake data, tiny proxy): ~40 s on 2 cores
@covers("bench_pareto_pruning.py")
def test_pareto_pruning_prints_both_pruners_their_ratios_and_writes_the_json(tmp_path):
    out = run("bench_pareto_pruning.py", "--json", str(tmp_path / "p.json"))
    runs = figures(
        rf"^seed 0 (?:none|pareto)\s+epochs\s+{NUMBER}\s+trial time\s+{NUMBER} s\s+wall\s+{NUMBER} s\s+"
        rf"pruned\s+{NUMBER}/6\s+hypervolume {NUMBER}",
        out,
        count=2,
    )
    finite([r[:3] for r in runs])
    finite([r[3:] for r in runs], positive=False)  # nothing pruned, or a front beyond the reference: zero
    rows = figures(
        rf"^(?:none|pareto)\s+epochs\s+{NUMBER} \(x{NUMBER}\)\s+trial time\s+{NUMBER} s \(x{NUMBER}\)", out, count=2
    )
    finite(rows)
    assert rows[0][1] == rows[0][3] == 1.0  # the baseline against itself
    data = json.loads((tmp_path / "p.json").read_text())
    assert [r["pruner"] for r in data["runs"]] == ["none", "pareto"] and len(data["summary"]) == 2
    assert data["runs"][0]["epochs_trained"] == 12  # 6 trials x 2 epochs, none pruned


@covers("bench_throughput.py")
def test_throughput_prints_train_against_the_bare_step_and_the_search_figures():
    out = run("bench_throughput.py", "--device", "cpu")
    finite(figures(rf"nas train {NUMBER} img/s steady \(first epoch {NUMBER}\), bare step {NUMBER} img/s", out))
    finite(figures(rf"median ratio nas train / bare step: {NUMBER}% steady .*, {NUMBER}% in the first epoch", out))
    finite(figures(rf"{NUMBER} trials/h, mean trial {NUMBER} s \(2 trials\)", out))
    finite(figures(rf"driver overhead {NUMBER}%", out), positive=False)
    assert "SM utilisation: unavailable (not on CUDA)" in out  # not faked off CUDA


@covers("bench_progressive.py")
def test_progressive_prints_each_schedule_and_its_ratios():
    out = run("bench_progressive.py")
    finite(figures(rf"^(?:progressive|fixed\+reg|fixed)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, count=3))
    ratios = figures(rf"progressive / \S+\s*: wall {NUMBER}x, cpu {NUMBER}x, accuracy {NUMBER} points \(1 seed\)", out)
    finite([r[:2] for r in ratios])
    finite([r[2:] for r in ratios], positive=False)


@pytest.mark.slow  # starts 3 interpreters (embedded, 2 workers), each with its reference: ~30 s on 2 cores
@covers("bench_backends.py")
def test_backends_prints_workers_against_embedded():
    out = run("bench_backends.py")
    finite(figures(rf"^(?:embedded|workers-2)\s+\d\s+2\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, count=2))
    finite(figures(rf"workers-2 / embedded: trials/h x{NUMBER}, overhead per trial x{NUMBER}", out))


@pytest.mark.slow  # needs a Ray cluster (the suite's own, on 127.0.0.1, stopped by process id)
def test_backends_prints_ray_against_embedded(cluster):  # noqa: F811
    env = {**nas_env(OMP_NUM_THREADS="1"), **{k: v for k, v in cluster.env.items() if k.startswith("RAY_")}}
    out = run("bench_backends.py", "--configs", "embedded,ray-x1", "--address", cluster.address, env=env)
    finite(figures(rf"ray-x1 / embedded: trials/h x{NUMBER}, overhead per trial x{NUMBER}", out))


@pytest.mark.slow  # Inductor's first compile of a training step takes 1-3 minutes on 2 cores (cold cache)
@covers("bench_compile.py")
def test_compile_prints_eager_against_compiled():
    out = run("bench_compile.py", "--device", "cpu")
    finite(figures(rf"^\s+eager:\s+{NUMBER} ms/step, first step\s+{NUMBER} s", out, count=1))
    finite(figures(rf"compiled:\s+{NUMBER} ms/step, first step\s+{NUMBER} s, speed-up {NUMBER}x", out, count=1))


def _report(tmp_path: Path, *parts: str) -> tuple[str, dict, str]:
    out = run("gpu_report.py", "--device", "cpu", "--parts", ",".join(parts), "--out-dir", str(tmp_path))
    (json_path,) = tmp_path.glob("*-tiny.json")
    md = json_path.with_suffix(".md").read_text()
    return out, json.loads(json_path.read_text()), md


@covers("gpu_report.py")
def test_gpu_report_cpu_path_step_table_and_train(tmp_path):
    out, report, md = _report(tmp_path, "step", "table", "train")
    assert list(report["parts"]) == ["step", "table", "train"]
    rows = report["parts"]["step"]["rows"]
    assert {(r["model"], r["impl"]) for r in rows} >= {
        (m, i) for m in ("efficientnet-b0", "efficientnetv2-s") for i in ("nas", "torchvision")
    }
    finite([(r["ms"], r["images_per_s"], r["tflops"], r["vs_torchvision"], r["steps"]) for r in rows])
    assert "compiled: not run on a CPU" in out
    table = report["parts"]["table"]
    assert table["build"]["complete"], table["notes"]
    for name in ("table_vs_measured", "repeat_vs_repeat"):
        f = table[name]
        assert f["n"] == 4 and math.isfinite(f["mape"]) and 0 <= f["within_10pct"] <= 1
    finite(
        figures(rf"table vs measured\s+Spearman {NUMBER}, Kendall tau {NUMBER}, mean error {NUMBER}%", out),
        positive=False,
    )
    train = report["parts"]["train"]["rounds"][0]
    finite(
        [(train["train_images_per_s"], train["first_epoch_images_per_s"], train["step_images_per_s"], train["ratio"])]
    )
    assert train["sm_util_pct"] is None and "SM utilisation: unavailable" in out
    assert md.count("| step | efficientnet") == len(rows) and "| table |" in md and "| train |" in md


@pytest.mark.slow  # three real searches in fresh interpreters (1, 2 workers, auto): ~40-90 s on 2 cores
def test_gpu_report_cpu_path_search(tmp_path):
    out, report, md = _report(tmp_path, "search")
    search = report["parts"]["search"]
    assert [r["trials_per_device"] for r in search["rows"]][:2] == ["1", "2"]
    finite([(r["trials"], r["trials_per_hour"], r["wall_s"]) for r in search["rows"]])
    assert all(r["sm_util_pct"] is None for r in search["rows"])  # no NVML off CUDA: unavailable, not faked
    assert search["best"] in {"1", "2"} and "trials per device that serves best" in md
    assert "SM utilisation n/a" in out
    # auto runs last, through the real flag: on a CPU it measures nothing and runs one trial at a time.
    assert search["rows"][-1]["trials_per_device"] == "auto" and search["auto_choice"] == 1
    assert "what --trials-per-device auto chose | 1" in md


@pytest.mark.slow  # builds a step-time table (51 pieces) and times candidates twice: about a minute
@covers("bench_step_fidelity.py")
def test_step_fidelity_checks_the_table_on_candidates_it_has_not_seen(tmp_path):
    out = run("bench_step_fidelity.py", "--json", str(tmp_path / "f.json"))
    finite(figures(rf"table built in {NUMBER} s \({NUMBER} pieces", out))
    for name in ("table vs measured", "measured again vs measured", "proxy vs measured"):
        finite(figures(rf"^{name}: .*mean error {NUMBER}%", out))
    data = json.loads((tmp_path / "f.json").read_text())
    calibration = {p["arch"] for p in data_points(data)}
    assert len(data["rows"]) == 4 and not calibration & {r["arch"] for r in data["rows"]}
    assert set(data["goal"]) == {"spearman", "median_error"}


def data_points(data: dict) -> list[dict]:
    """The calibration networks a benchmark's table was fitted on (kept out of its checked set)."""
    return read(Path(data["table"])).correction["points"]


@covers("bench_allocator.py")
def test_allocator_prints_both_allocators_and_their_ratio():
    out = run("bench_allocator.py")
    row = rf"efficientnet-b0: system\s+{NUMBER} ms, kept\s+{NUMBER} ms, system/kept {NUMBER} \(range {NUMBER}-"
    row += NUMBER + r"\)"
    ((system, kept, ratio, lo, hi),) = figures(row, out)
    finite([(system, kept, ratio, lo, hi)])
    header = r"glibc as it comes \(system\) against (glibc-reuse|jemalloc|tcmalloc) \(kept\), 1 round$"
    assert re.search(header, out, re.M), out
    finite(figures(rf"^\s*(?:system|kept): system CPU time per child {NUMBER} s", out, count=2), positive=False)


@pytest.mark.slow  # trains 15 tiny proxies on real photographs and times one against a bare loop: ~30 s
@covers("bench_proxy_fidelity.py")
def test_proxy_fidelity_ranks_each_setting_against_the_truth_and_resumes(tmp_path):
    archive = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-12k.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is absent (the shared CIFAR-10 images live beside the repository)")
    from scipy import stats

    results = tmp_path / "pf"
    env = nas_env(OMP_NUM_THREADS="1", NAS_CACHE_DIR=str(tmp_path / "cache"))
    out = run("bench_proxy_fidelity.py", "--results", str(results), env=env)
    stored = [json.loads(f.read_text()) for f in results.glob("*/*.json")]
    # 4 candidates x 2 settings at seed 0, the reference at seeds 1 and 2 in each, "tiny" at seed 1 everywhere
    assert len(stored) == 4 + 2 + 4 + 2 + 3 and "0 of 15 trainings already stored" in out
    report = json.loads(results.with_suffix(".json").read_text())
    truth = report["truth"]
    assert truth in ("tiny", "tiny-2x") and {"tiny", "tiny-2x"} <= set(report["settings"])
    # the mean of two seeds is a setting of its own where "tiny" (run at two seeds everywhere) is not the truth
    assert set(report["settings"]) - {"tiny", "tiny-2x"} == ({"tiny x2 seeds"} if truth != "tiny" else set())
    other = ({"tiny", "tiny-2x"} - {truth}).pop()

    def acc(setting, seed=0):
        return [
            r["accuracy"]
            for r in sorted(stored, key=lambda r: r["candidate"])
            if (r["setting"], r["seed"]) == (setting, seed)
        ]

    tau = stats.kendalltau(acc(other), acc(truth)).statistic
    got = report["settings"][other]["vs_truth"]["kendall"]
    assert (got is None and math.isnan(tau)) or got == pytest.approx(tau, abs=1e-6)
    reference = [r["accuracy"] for r in stored if (r["setting"], r["candidate"]) == ("tiny", 0)]
    assert report["settings"]["tiny"]["seed_std"] == pytest.approx(float(np.std(reference, ddof=1)))
    assert report["settings"]["tiny"]["n"] == 4 and report["candidates"] == 4
    tp = report["throughput"]["median"]
    assert tp["trial"] < tp["trial_training_passes"]  # the whole trial also evaluates: fewer images a second
    assert "Throughput (default proxy of the reference" in out
    again = run("bench_proxy_fidelity.py", "--results", str(results), "--throughput-rounds", "0", env=env)
    assert "15 of 15 trainings already stored" in again
    assert json.loads(results.with_suffix(".json").read_text())["settings"] == report["settings"]
