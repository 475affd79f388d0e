"""``nas search --backend ray`` against a real local Ray cluster, driven through the CLI.

The cluster is started with ``ray start --head`` in a private temp dir, with its own
authentication token, and stopped by process id (never ``ray stop``, which would stop every Ray
cluster on the machine, other people's included).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from nas.errors import NasError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "fake", "--epochs", "1", "--image-size", "16", "--measure-time", "0.05", "--width-mult", "0.1",
        "--depth-mult", "0.1", "--batch-size", "32"]

# A plugin the way a user writes one: a module that registers a space and a reward. It is written
# to a directory that is on the driver's PYTHONPATH only, so the Ray workers can import it only if
# nas ships it to them (runtime_env py_modules). Trial 1's architecture is marked so the reward
# returns NaN for it; trial 2's so the reward raises: two failures, by trial number, deterministic.
PLUGIN = '''
"""Test plugin: trainaware, with trials 1 and 2 failing on purpose."""
import math

from rewards import register as register_reward
from rewards.trainaware import TrainAwareReward
from search_spaces.base import register as register_space
from search_spaces.trainaware import TrainAwareSpace

MARKS = {1: 0.111, 2: 0.222}  # dropout values no built-in architecture uses


@register_space("test-marked")
class MarkedSpace(TrainAwareSpace):
    def sample(self, chooser):
        arch = super().sample(chooser)
        n = getattr(chooser, "number", None)  # the Optuna trial's number
        return arch.replace(dropout=MARKS[n]) if n in MARKS else arch


@register_reward("test-failing")
class FailingReward(TrainAwareReward):
    def __call__(self, metrics):
        if "drop0.111" in metrics["arch"]:
            return math.nan
        if "drop0.222" in metrics["arch"]:
            raise RuntimeError("deliberate failure of trial 2")
        return super().__call__(metrics)
'''


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
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    # Short path: Ray's unix socket paths live under it and are limited to ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="nasray-", dir="/tmp"))
    port = _free_port()
    # Token authentication with a token of our own: clients without it cannot use the cluster,
    # and nothing is read from or written to ~/.ray.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
           "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", str(temp_dir), "--disable-usage-stats",
           "--object-store-memory", str(200 * 1024 ** 2)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, f"ray start failed:\n{p.stdout}\n{p.stderr}"
        yield Cluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir, env=env)
    finally:
        _kill(_processes_under(str(temp_dir)))
        shutil.rmtree(temp_dir, ignore_errors=True)


def _nas_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "nas.cli", *map(str, args)]


def _env(cluster: Cluster, plugin_dir: Path) -> dict:
    path = os.pathsep.join([str(plugin_dir), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**cluster.env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _write_plugin(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "nas_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    return d


@pytest.mark.slow
def test_search_on_cluster_records_results_failures_and_placement(cluster, tmp_path):
    plugin_dir = _write_plugin(tmp_path)
    out = tmp_path / "run"
    p = subprocess.run(_nas_cmd("search", "--backend", "ray", "--address", cluster.address, "--trials", 3,
                                "--space", "test-marked", "--reward", "test-failing", "--plugin", "nas_test_plugin",
                                "--max-concurrent", 2, "--out", out, *TINY),
                       env=_env(cluster, plugin_dir), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "trials.csv")
    assert sorted(df["number"]) == [0, 1, 2]
    by_n = df.set_index("number")
    assert list(by_n["state"]) == ["COMPLETE", "FAIL", "FAIL"]
    assert by_n.loc[1, "error"] == "TrialFailed: reward is nan"
    assert by_n.loc[2, "error"] == "RuntimeError: deliberate failure of trial 2"
    assert pd.isna(by_n.loc[0, "error"])
    # Where each trial ran, and on what.
    for col in ("node_ip", "hostname", "pid"):
        assert by_n[col].notna().all(), col
    ok = by_n.loc[0]
    assert ok["device"] == "cpu" and isinstance(ok["device_name"], str)
    # S is the step time over the reference measured in the same worker process ...
    assert ok["S"] == pytest.approx(ok["step_time_ms"] / ok["reference_step_time_ms"])
    # ... which measured it once: every trial of a process reports the very same reference.
    per_pid = df.groupby("pid")["reference_step_time_ms"].nunique()
    assert (per_pid == 1).all()
    assert df["pid"].nunique() < len(df), "Tune did not reuse a worker: the reference was measured per trial"

    best = json.loads((out / "best.json").read_text())
    assert best["arch"] == ok["arch"]
    assert best["metrics"]["reward"] == pytest.approx(ok["reward"])
    assert best["backend"] == "ray"
    [ref] = best["reference"].values()
    assert ref["device"] == "cpu"
    assert (out / "pareto.png").stat().st_size > 0
    assert "trials: 1 complete, 2 fail" in p.stdout


@pytest.mark.slow
def test_killed_driver_is_restored_and_keeps_finished_trials(cluster, tmp_path):
    plugin_dir = _write_plugin(tmp_path)
    out = tmp_path / "run"
    # The plugin is not needed here, but passing it exercises the same path on restore.
    cmd = _nas_cmd("search", "--backend", "ray", "--address", cluster.address, "--trials", 3,
                   "--plugin", "nas_test_plugin", "--scheduler", "asha", "--max-concurrent", 2, "--out", out, *TINY)
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
        time.sleep(2.5)  # the experiment is snapshotted every second
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
    assert sorted(df["number"]) == [0, 1, 2]
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
    from nas.cli import main
    from nas.ray_backend import RayOptions

    with pytest.raises(NasError, match="whole number of GPUs"):
        RayOptions(gpus_per_trial=0.5).validate()
    with pytest.raises(NasError, match="positive number"):
        RayOptions(cpus_per_trial=0).validate()
    with pytest.raises(NasError, match="unknown scheduler"):
        RayOptions(scheduler="pbt").validate()
    assert main(["search", "--backend", "ray", "--gpus-per-trial", "0.5", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "nas: error: --gpus-per-trial must be a whole number of GPUs (0, 1, 2, ...), got 0.5"]
    assert main(["search", "--scheduler", "asha", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "are for --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_grid_scale_on_cluster(cluster, tmp_path):
    out = tmp_path / "grid"
    p = subprocess.run(_nas_cmd("grid-scale", "--backend", "ray", "--address", cluster.address, "--base",
                                "efficientnet-b0", "--max-candidates", 1, "--out", out, *TINY),
                       env=_env(cluster, tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    df = pd.read_csv(out / "grid.csv")
    assert list(df["candidate"])[0] == "base" and len(df) == 2
    assert (df["state"] == "COMPLETE").all(), df[["candidate", "state", "error"]]
    assert df["node_ip"].notna().all() and df["device"].eq("cpu").all()
    coeffs = json.loads((out / "coefficients.json").read_text())
    assert coeffs["backend"] == "ray"
    chosen = df[df["candidate"] != "base"].iloc[0]
    assert (coeffs["alpha"], coeffs["beta"], coeffs["gamma"]) == (chosen["alpha"], chosen["beta"], chosen["gamma"])
