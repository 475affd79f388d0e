"""``nas search --backend ray`` against a real local Ray cluster, driven through the CLI.

The cluster is started with ``ray start --head`` in a private temp dir, with its own
authentication token, and stopped by process id (never ``ray stop``, which would stop every Ray
cluster on the machine, other people's included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from nas.errors import NasError
from tests.helpers import FAILING, REPO, STANDIN, TINY, write_plugin


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    env: dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(marker: str) -> list[int]:
    """Our cluster's processes: those whose command line names our temp dir, and their descendants
    (workers and agents are children of the raylet and do not name it)."""
    procs: dict[int, tuple[int, str]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(p)] = (ppid, cmd)
    ours = {pid for pid, (_, cmd) in procs.items() if marker in cmd}
    grown = True
    while grown:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in ours and pid not in ours}
        ours |= kids
        grown = bool(kids)
    ours.discard(os.getpid())
    return sorted(ours)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pids: list[int], grace: float = 5) -> None:
    """SIGTERM, then SIGKILL what is still running after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


def _start(args: list[str], env: dict, temp_dir: Path) -> None:
    ray = Path(sys.executable).with_name("ray")
    p = subprocess.run(
        [str(ray), "start", *args, "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, f"ray start failed:\n{p.stdout}\n{p.stderr}"


@pytest.fixture(scope="module")
def cluster():
    # Short path: Ray's unix socket paths live under it and are limited to ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="nasray-", dir="/tmp"))
    port = _free_port()
    # Token authentication with a token of our own: clients without it cannot use the cluster, and
    # nothing is read from or written to ~/.ray. A dead node is noticed within seconds, not 30.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_health_check_initial_delay_ms": "1000",
    }
    try:
        _start(
            [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--num-gpus",
                "0",
                "--include-dashboard",
                "false",
                "--object-store-memory",
                str(200 * 1024**2),
            ],
            env,
            temp_dir,
        )
        yield Cluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir, env=env)
    finally:
        _kill(_processes_under(str(temp_dir)))
        shutil.rmtree(temp_dir, ignore_errors=True)


def slow_standin(seconds: float, marks: Path | None = None) -> str:
    """The stand-in plugin with ``seconds`` per epoch built in: Ray's workers do not see our environment.
    With ``marks``, each epoch first leaves a file there named after its process id: a test sees which
    process is inside a trial (a trial actor's process exists seconds before its trial starts)."""
    src = STANDIN.replace(
        'os.environ.get("NAS_STANDIN_SLEEP", "0")', f'os.environ.get("NAS_STANDIN_SLEEP", "{seconds}")'
    )
    if marks is not None:
        sleep = "            time.sleep(float("
        assert src.count(sleep) == 1
        mark = f"            open(os.path.join({str(marks)!r}, str(os.getpid())), 'a').close()\n"
        src = src.replace(sleep, mark + sleep)
    return src


def _is_trial_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "ray::ImplicitFunc" in cmd  # a Tune function trainable's actor (not an agent, not an idle worker)


def _nas_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "nas.cli", *map(str, args)]


def _env(cluster: Cluster, plugin_dir: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(plugin_dir), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**cluster.env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _write_plugin(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / "plugins", "nas_test_plugin", FAILING)


@pytest.mark.slow
def test_search_on_cluster_records_results_failures_and_placement(cluster, tmp_path):
    plugin_dir = _write_plugin(tmp_path)
    out = tmp_path / "run"
    p = subprocess.run(
        _nas_cmd(
            "search",
            "--backend",
            "ray",
            "--address",
            cluster.address,
            "--trials",
            3,
            "--space",
            "test-marked",
            "--reward",
            "test-failing",
            "--plugin",
            "nas_test_plugin",
            "--max-concurrent",
            2,
            "--out",
            out,
            *TINY,
        ),
        env=_env(cluster, plugin_dir),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2]
    by_n = df.set_index("number")
    assert list(by_n["state"]) == ["COMPLETE", "FAIL", "FAIL"]
    assert by_n.loc[1, "error"] == "TrialFailed: reward is nan" and by_n.loc[1, "step_time_ms"] > 0
    assert by_n.loc[2, "error"] == "RuntimeError: deliberate failure of trial 2"
    assert pd.isna(by_n.loc[0, "error"])
    # Where each trial ran, and on what.
    for col in ("node_ip", "hostname", "pid"):
        assert by_n[col].notna().all(), col
    ok = by_n.loc[0]
    assert ok["device"] == "cpu" and isinstance(ok["device_name"], str)
    # S is the step time over the run's one reference, prepared once by the driver: every trial, in
    # every worker process, reports the very same reference and target.
    assert ok["S"] == pytest.approx(ok["step_time_ms"] / ok["reference_ms"])
    assert df["reference_ms"].nunique() == 1 and df["target_id"].nunique() == 1
    assert df["pid"].nunique() < len(df), "Tune did not reuse a worker: every trial built its evaluator again"

    best = json.loads((out / "best.json").read_text())
    assert best["arch"] == ok["arch"]
    assert best["metrics"]["reward"] == pytest.approx(ok["reward"])
    assert best["backend"] == "ray"
    assert best["target"]["device"].startswith("cpu (") and best["target"]["reference_ms"] == ok["reference_ms"]
    assert (out / "pareto.png").stat().st_size > 0
    assert "trials: 1 complete, 2 fail" in p.stdout


@pytest.mark.slow
def test_killed_driver_is_restored_and_keeps_finished_trials(cluster, tmp_path):
    plugin_dir = write_plugin(tmp_path / "plugins", "nas_standin", slow_standin(1.0))
    out = tmp_path / "run"
    # Stand-in trials of 3 epochs x 1 s: slow enough to kill the driver between them (the plugin
    # also exercises the shipping of a plugin on restore).
    cmd = _nas_cmd(
        "search",
        *TINY,
        "--backend",
        "ray",
        "--address",
        cluster.address,
        "--trials",
        4,
        "--epochs",
        3,
        "--plugin",
        "nas_standin",
        "--pruner",
        "hyperband",
        "--max-concurrent",
        2,
        "--out",
        out,
    )
    env = _env(cluster, plugin_dir)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    before = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and first.poll() is None:
            csv = out / "trials.csv"
            if csv.exists():
                df = pd.read_csv(csv)
                done = df[df["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]
                if len(done) >= 1:
                    before = done
                    break
            time.sleep(0.5)
        assert before is not None, "no trial finished before the deadline"
        assert first.poll() is None, "the search ended before it could be killed"
        # No wait: a row reaches trials.csv only once Tune's stored snapshot records the trial finished,
        # so killing the driver now must not lose it (nor leave the results ahead of the experiment).
        first.kill()  # SIGKILL: no cleanup, like a lost head-node shell
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.stdout.close()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode in (0, 1), p.stdout + p.stderr  # 1: every trial pruned by ASHA (unlikely, allowed)
    assert "restoring the Ray Tune experiment" in p.stdout
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2, 3]
    assert set(df["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}, df[["number", "state", "error"]]
    after = df.set_index("number")
    # A trial finished before the kill was not run again: same process, same measurement.
    for _, row in before.iterrows():
        again = after.loc[row["number"]]
        assert again["state"] == row["state"]
        assert again["pid"] == row["pid"]
        if row["state"] == "COMPLETE":
            assert again["step_time_ms"] == row["step_time_ms"]


def test_bad_resources_are_one_line_errors(tmp_path, capsys):
    from nas.backends.ray import RayOptions
    from nas.cli import main

    with pytest.raises(NasError, match=r"fraction of one GPU .* or a whole number"):
        RayOptions(gpus_per_trial=1.5)
    assert RayOptions(gpus_per_trial=0.25).resources == {"cpu": 1.0, "gpu": 0.25}  # four trials per GPU
    with pytest.raises(NasError, match="positive number"):
        RayOptions(cpus_per_trial=0)
    assert main(["search", "--backend", "ray", "--gpus-per-trial", "2.5", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "nas: error: --gpus-per-trial must be a fraction of one GPU (e.g. 0.25: four trials per GPU) or a whole "
        "number of GPUs, got 2.5"
    ]
    assert main(["search", "--max-concurrent", "2", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--max-concurrent is for --backend ray, not embedded" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_address_that_does_not_answer_fails_within_30_s_in_one_line(tmp_path, capsys):
    from nas.cli import main

    t0 = time.monotonic()
    assert (
        main(
            [
                "search",
                "--backend",
                "ray",
                "--address",
                f"127.0.0.1:{_free_port()}",
                "--out",
                str(tmp_path / "r"),
                "--trials",
                "1",
                *TINY,
            ]
        )
        == 2
    )
    assert time.monotonic() - t0 < 30
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("nas: error: cannot reach Ray at 127.0.0.1:") and "nothing answered" in line
    # Nothing of a run that never started is left behind.
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ray_produces_the_same_trials_as_the_embedded_backend(cluster, tmp_path, standin):
    """The backend contract (tests/test_backends.py) on Ray: same seed, same stand-in evaluations,
    one trial at a time: the same trials and results."""
    from tests.backends.test_contract import SEARCH, contract_frame, embedded_reference

    ref = embedded_reference(tmp_path, standin)
    plugins = write_plugin(tmp_path / "plugins", "nas_standin", STANDIN)
    out = tmp_path / "ray"
    p = subprocess.run(
        _nas_cmd(
            *SEARCH,
            "--backend",
            "ray",
            "--address",
            cluster.address,
            "--max-concurrent",
            1,
            "--plugin",
            "nas_standin",
            "--out",
            out,
        ),
        env=_env(cluster, plugins),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    pd.testing.assert_frame_equal(contract_frame(out), contract_frame(ref))
    a, b = (json.loads((d / "best.json").read_text()) for d in (ref, out))
    assert a["arch"] == b["arch"] and a["pareto_front"] == b["pareto_front"]


@pytest.mark.slow
def test_pareto_pruning_on_ray_stops_dominated_trials_of_a_multi_objective_search(cluster, tmp_path):
    """nsga2 with the pareto pruner: Tune's scheduler stops trials by the same rule as the Optuna
    pruner (one trial at a time, so the warm-up and the peers are the embedded run's)."""
    from nas.study.pareto import count_dominators

    plugins = write_plugin(tmp_path / "plugins", "nas_standin", STANDIN)
    out = tmp_path / "run"
    cmd = _nas_cmd(
        "search",
        *TINY,
        "--backend",
        "ray",
        "--address",
        cluster.address,
        "--max-concurrent",
        1,
        "--plugin",
        "nas_standin",
        "--trials",
        8,
        "--epochs",
        3,
        "--sampler",
        "nsga2",
        "--pruner",
        "pareto:dominators=1,warmup=2",
        "--out",
        out,
    )
    p = subprocess.run(cmd, env=_env(cluster, plugins), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "trials.csv").set_index("number")
    assert sorted(df.index) == list(range(8)) and set(df["state"]) <= {"COMPLETE", "PRUNED"}, df["state"]
    pruned = df[df["state"] == "PRUNED"]
    assert len(pruned) and set(pruned["epochs"]) <= {1, 2}, df[["state", "epochs"]]
    # Each pruned trial was dominated, at the epoch it stopped, by a trial run before it (the stand-in
    # scales its accuracy linearly over the epochs; cost and parameters are fixed per candidate).
    for n, r in pruned.iterrows():
        e = int(r["epochs"])
        earlier = [
            (o["accuracy"] * e / o["epochs"], o["cost_ms"], o["params"])
            for m, o in df.iterrows()
            if m < n and o["epochs"] >= e
        ]
        mine = (r["accuracy"], r["cost_ms"], r["params"])  # the objectives so far, in the pruned trial's row
        assert count_dominators(mine, earlier, ["maximize", "minimize", "minimize"]) >= 1, (n, mine, earlier)


@pytest.mark.slow
def test_a_lost_worker_node_costs_its_trial_a_retry_nothing_more(cluster, tmp_path):
    """A second Ray node (its own raylet) joins the loopback head; while it runs a trial it is killed by
    process id. Tune retries that trial elsewhere and the run ends with exactly the requested trials."""
    node_dir = Path(tempfile.mkdtemp(prefix="nasnode-", dir="/tmp"))
    marks = tmp_path / "marks"
    marks.mkdir()
    plugins = write_plugin(tmp_path / "plugins", "nas_standin", slow_standin(1.5, marks))
    out = tmp_path / "run"
    env = _env(cluster, plugins)
    try:
        # Two trials of 2 CPUs at a time: one on the head (2 CPUs), one on the extra node (2 CPUs).
        _start(
            [
                "--address",
                cluster.address,
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "2",
                "--num-gpus",
                "0",
                "--object-store-memory",
                str(100 * 1024**2),
            ],
            cluster.env,
            node_dir,
        )
        search = subprocess.Popen(
            _nas_cmd(
                "search",
                *TINY,
                "--backend",
                "ray",
                "--address",
                cluster.address,
                "--trials",
                4,
                "--sampler",
                "random",
                "--plugin",
                "nas_standin",
                "--epochs",
                3,
                "--cpus-per-trial",
                2,
                "--max-concurrent",
                2,
                "--out",
                out,
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        # Wait until a trial is inside its epochs on the extra node: a process under its temp dir has
        # left its mark (CI, 3 workers on 2 cores: a kill 1 s after the trial actor appeared landed
        # before its trial started, and nothing was retried).
        deadline, inside = time.monotonic() + 180, set()
        while time.monotonic() < deadline and search.poll() is None and not inside:
            time.sleep(0.2)
            inside = {int(m.name) for m in marks.iterdir()} & set(_processes_under(str(node_dir)))
        assert search.poll() is None and inside, search.stdout.read() if search.poll() is not None else "no trial ran"
        assert all(_is_trial_worker(pid) for pid in inside)
        _kill(_processes_under(str(node_dir)), grace=0)  # within its first epoch of 1.5 s
        output, _ = search.communicate(timeout=300)
        assert search.returncode == 0, output
    finally:
        _kill(_processes_under(str(node_dir)), grace=0)
        shutil.rmtree(node_dir, ignore_errors=True)
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2, 3] and set(df["state"]) == {"COMPLETE"}, df[["number", "state", "error"]]
    from ray import tune

    retried = [t.config["number"] for t in tune.ExperimentAnalysis(str(out / "ray")).trials if t.num_failures]
    assert len(retried) == 1, "exactly the trial on the lost node was retried"


@pytest.mark.slow
def test_grid_scale_on_cluster(cluster, tmp_path):
    out = tmp_path / "grid"
    p = subprocess.run(
        _nas_cmd(
            "grid-scale",
            "--backend",
            "ray",
            "--address",
            cluster.address,
            "--base",
            "efficientnet-b0",
            "--max-candidates",
            1,
            "--out",
            out,
            *TINY,
        ),
        env=_env(cluster, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "grid.csv")
    assert next(iter(df["candidate"])) == "base" and len(df) == 2
    assert (df["state"] == "COMPLETE").all(), df[["candidate", "state", "error"]]
    assert df["node_ip"].notna().all() and df["device"].eq("cpu").all()
    coeffs = json.loads((out / "coefficients.json").read_text())
    assert coeffs["backend"] == "ray"
    chosen = df[df["candidate"] != "base"].iloc[0]
    assert (coeffs["alpha"], coeffs["beta"], coeffs["gamma"]) == (chosen["alpha"], chosen["beta"], chosen["gamma"])
