"""Hostile input: what a user who tries to break ``nas`` gets, one test per case found (issue 20 and
later). Every case here failed before its fix; add new ones as they are found.

The rules they check: a failed or refused start changes nothing on disk and the corrected command
simply runs; the settings live in the study as well as in ``config.json``; every failure is one
``nas: error:`` line naming the flag or value at fault; a process waiting for a lock says who holds
it; figures are never dropped or faked silently.
"""

from __future__ import annotations

import ast
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import search_spaces as ss
from nas.cli import main
from nas.errors import NasError
from nas.study.fidelity import write_fidelity
from tests.helpers import REPO, STANDIN, TINY, TINY_ARCH, nas_env, write_plugin


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: "), err
    return lines[0]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (the owner lock's holder record, rewritten by every
    owner, by name only)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() or p.name == ".owner.lock" else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


# -- 1. a failed or refused start changes nothing on disk ---------------------------------------------


def test_a_start_on_a_gpu_that_does_not_exist_leaves_nothing_and_the_corrected_command_runs(tmp_path, capsys, standin):
    out = tmp_path / "run"
    args = ["search", "--trials", "1", "--out", str(out), *TINY]
    assert main([*args, "--device", "cuda:99"]) == 2
    assert "'cuda:99'" in _one_error_line(capsys)
    assert not out.exists()
    out.mkdir()  # an existing directory keeps exactly what it had: no lock file, no study.db, no config.json
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--device", "cuda:99"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main([*args, "--device", "cpu"]) == 0, capsys.readouterr().err


def test_a_start_refused_for_an_unusable_step_time_cache_leaves_nothing(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("NAS_CACHE_DIR", str(blocker))
    out = tmp_path / "run"
    table = ["--step-time", "table", "--target-image-size", "16", "--target-batch-size", "2"]
    assert main(["search", "--trials", "1", "--out", str(out), *TINY, *table]) == 2
    assert str(blocker) in _one_error_line(capsys)
    assert not out.exists()


def test_a_start_refused_because_study_db_was_deleted_creates_no_study(tmp_path, capsys, standin):
    out = tmp_path / "run"
    args = ["search", "--trials", "2", "--out", str(out), *TINY]
    assert main(args) == 0
    (out / "study.db").unlink()
    before = _tree(out)
    capsys.readouterr()
    assert main(args) == 2
    assert "records 2 finished trials but the run's storage holds 0" in _one_error_line(capsys)
    assert _tree(out) == before  # no new, empty study.db (nor its -wal / -shm)


# -- 2. the settings live in the study too ------------------------------------------------------------


def test_a_search_that_lost_config_json_is_refused_with_the_settings_that_differ(tmp_path, capsys, standin):
    out = tmp_path / "run"
    args = ["search", "--out", str(out), *TINY, "--sampler", "random"]
    assert main([*args, "--trials", "2"]) == 0
    saved = (out / "config.json").read_text()
    (out / "config.json").unlink()
    capsys.readouterr()
    assert main([*args, "--trials", "6", "--epochs", "2"]) == 2
    line = _one_error_line(capsys)
    assert re.search(r"different settings \(settings\.proxy\.[a-z.]*epochs: 1 there, 2 now\)", line), line
    assert not (out / "config.json").exists()
    assert main([*args, "--trials", "2"]) == 0  # the same settings: accepted, and config.json restored
    assert (out / "config.json").read_text() == saved


def test_a_grid_that_lost_config_json_is_refused_with_the_settings_that_differ(tmp_path, capsys, standin):
    out = tmp_path / "grid"
    args = ["grid-scale", "--base", TINY_ARCH, "--max-candidates", "1", "--out", str(out), *TINY]
    assert main(args) == 0
    (out / "config.json").unlink()
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    assert "epochs: 1 there, 2 now" in _one_error_line(capsys)
    assert main(args) == 0 and (out / "config.json").exists()


@pytest.mark.slow
def test_a_workers_search_that_lost_config_json_is_refused_with_the_settings_that_differ(tmp_path):
    env = nas_env(write_plugin(tmp_path / "plugins", "nas_standin", STANDIN))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas.cli", "search", "--plugin", "nas_standin", "--out", str(out), *TINY]
    cmd += ["--sampler", "random", "--workers", "2"]
    p = subprocess.run([*cmd, "--trials", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (out / "config.json").unlink()
    p = subprocess.run([*cmd, "--trials", "6", "--epochs", "2"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 2, p.stdout + p.stderr
    [line] = p.stderr.strip().splitlines()
    assert "epochs: 1 there, 2 now" in line and not (out / "config.json").exists()


# -- 3. a process waiting for a lock says who holds it --------------------------------------------------


def test_a_process_waiting_for_a_lock_says_once_who_holds_it(tmp_path):
    lock = tmp_path / "results.lock"
    take = (
        "import sys; from nas.core.files import file_lock\n"
        f"with file_lock({str(lock)!r}, what='the results of RUN'):\n"
        "    print('held', flush=True); sys.stdin.readline()\n"
    )
    env = nas_env()
    holder = subprocess.Popen(
        [sys.executable, "-c", take], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen(
            [sys.executable, "-c", take],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        line = waiter.stderr.readline().strip()  # said while it waits, before it holds the lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert waiter.stdout.readline().strip() == "held"
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        assert waiter.wait(timeout=60) == 0
        rest = waiter.stderr.read()
    finally:
        holder.kill()
        holder.wait()
    host = socket.gethostname()
    assert re.fullmatch(
        rf"nas: waiting for the results of RUN: held by pid {holder.pid} on {re.escape(host)} since \S+ \S+",
        line,
    ), line
    assert rest == "", rest


# -- 4. every failure is one line naming the flag or value at fault ------------------------------------------


def test_a_phi_too_large_for_the_network_names_phi(tmp_path, capsys):
    args = ["scale", "--phi", "200", "--coefficients", "1.2,1.1,1.15", "--base", "efficientnet-b0"]
    assert main([*args, "--out", str(tmp_path / "family")]) == 2
    line = _one_error_line(capsys)
    assert "--phi 200" in line and "repeats" in line, line
    assert not (tmp_path / "family").exists()


def test_an_architecture_string_that_is_not_a_string_is_named_by_type():
    with pytest.raises(NasError, match=r"an architecture string must be a str, got int 42"):
        ss.Architecture.from_string(42)


def test_weights_with_non_finite_values_are_refused_naming_the_first_bad_key():
    theirs = torchvision.models.mobilenet_v2(weights=None).state_dict()
    ours = ss.build(ss.preset("mobilenetv2", source="torchvision"))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    nan = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in theirs.items()}
    with pytest.raises(NasError, match=r"'features\.0\.0\.weight' .*NaN") as e:
        ss.load_weights(ours, nan, source="torchvision")
    assert "\n" not in str(e.value)
    bad = dict(theirs)
    bad["features.3.conv.1.0.weight"] = bad["features.3.conv.1.0.weight"].clone()
    bad["features.3.conv.1.0.weight"][0, 0, 0, 0] = math.inf
    with pytest.raises(NasError, match=r"'features\.3\.conv\.1\.0\.weight'"):
        ss.load_weights(ours, bad, source="torchvision")
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items()), "a refused load changed nothing"


# -- 5. honest figures ----------------------------------------------------------------------------------------


def test_a_corrupt_fidelity_file_is_reported_and_kept_aside(tmp_path, capsys):
    (tmp_path / "fidelity.json").write_text('{"accuracy": {"n": 4,')  # cut short
    write_fidelity(tmp_path, {"step_time": {"n": 2}})
    err = capsys.readouterr().err
    assert "warning:" in err and "fidelity.json" in err and "corrupt" in err, err
    [aside] = tmp_path.glob("fidelity.json.corrupt-*")
    assert aside.read_text() == '{"accuracy": {"n": 4,'
    assert (tmp_path / "fidelity.json").read_text().count('"step_time"') == 1


# What a declared dependency brings for certain: imported, but declared by the package that needs it.
PROVIDED = {"PIL": "torchvision", "sqlalchemy": "optuna"}
DISTRIBUTIONS = {"sklearn": "scikit-learn", "pynvml": "nvidia-ml-py"}


def test_every_third_party_package_the_code_imports_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*meta["dependencies"], *(d for ds in meta["optional-dependencies"].values() for d in ds)]
    declared = {re.split(r"[\s\[<>=!~;]", s, maxsplit=1)[0].lower() for s in specs}
    imported = set()
    for pkg in ("nas", "search_spaces", "rewards"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third = imported - set(sys.stdlib_module_names) - {"nas", "search_spaces", "rewards"} - set(PROVIDED)
    missing = sorted(m for m in third if DISTRIBUTIONS.get(m, m).lower() not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
