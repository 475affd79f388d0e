"""``nas show / spaces / presets / measure`` run as a user runs them: a real subprocess each.

Each run starts a fresh interpreter that imports torch (seconds), so the runs are started together
in one module fixture and the tests read their results. Further bad-input cases go through
``nas.cli.main`` in this process: the same code path after the interpreter has started.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from search_spaces import Architecture, count_macs, count_params, preset, preset_names, space_names
from tests.helpers import main_in_process

TINY = "stem8,r1_k3_s1_e1_i8_o8_se0.25,r2_k3_s2_e4_i8_o16_c1,head32,res32"
BLOCKS = "stem32,r1_k3_s11_e1_i32_o16_se0.25,r2_k3_s22_e6_i16_o24_se0.25,head640,res128"
# The subprocess runs take tens of seconds together (each interpreter imports torch and torchvision).
subprocess_runs = pytest.mark.slow

MEASURE = ("--device", "cpu", "--batch-size", "2", "--image-size", "32", "--min-run-time", "0.2", "--json")

# Bad input, each in its own interpreter: name -> (arguments, a piece of the error line naming the bad value).
BAD = {
    "malformed_string": (["show", "stem32,r1_k3_s1_e1_i32_o16_zz"], "'zz'"),
    "not_json": (["show", "{tmp}/not-an-arch.json"], "not-an-arch.json"),
}
# More bad input, through nas.cli.main in this process (a fresh interpreter costs seconds).
BAD_IN_PROCESS = {
    "unknown_preset": (["show", "nope"], "'nope'"),
    "kernel_9": (["show", "stem32,r1_k9_s1_e1_i32_o16"], "got 9"),
    "expansion_0": (["show", "stem32,r1_k3_s1_e0_i32_o16"], "got 0"),
    "inconsistent_i_fc": (["show", "stem32,r1_k3_s1_e6_i16_o16_fc8"], "i16 and fc8"),
    "not_json_other_suffix": (["show", "{tmp}/notes.txt"], "notes.txt"),
    "bad_field_json": (["show", "{tmp}/bad-field.json"], "'colour'"),
    "missing_file": (["show", "{tmp}/missing.json"], "missing.json"),
    "binary_file": (["show", "{tmp}/binary.json"], "binary.json"),
    "bad_resolution": (["show", "efficientnet-b0", "--resolution", "4"], "got 4"),
    "measure_unknown_preset": (["measure", "nope", *MEASURE], "'nope'"),
    "measure_batch_0": (["measure", TINY, "--device", "cpu", "--batch-size", "0"], "got 0"),
    "measure_bad_device": (["measure", TINY, "--device", "tpu"], "'tpu'"),
}


def _write_files(tmp):
    (tmp / "arch.json").write_text(preset("mnasnet-a1").to_json(indent=2))
    (tmp / "not-an-arch.json").write_text("this is not JSON {\n")
    (tmp / "notes.txt").write_text("r1_k3_s1_e1_i32_o16\n")
    (tmp / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    bad = json.loads(preset("efficientnet-b0").to_json())
    bad["colour"] = "red"
    (tmp / "bad-field.json").write_text(json.dumps(bad))


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    _write_files(path)
    return path


@pytest.fixture(scope="module")
def runs(run_nas, tmp):
    # Only what needs a real interpreter (its exit status, its own stdout and stderr) runs in one: each
    # costs seconds of CPU importing torch and torchvision. The other commands run in this process.
    cases = {
        "show_preset": ["show", "efficientnet-b0", "--json"],
        "measure": ["measure", TINY, *MEASURE],
        **{f"bad_{k}": [a.replace("{tmp}", str(tmp)) for a in args] for k, (args, _) in BAD.items()},
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(run_nas, *args) for k, args in cases.items()}
        return {k: f.result() for k, f in futures.items()}


def _ok(result) -> str:
    rc, out, err = result
    assert rc == 0, err
    assert err == ""  # no warnings, no log lines
    return out


@subprocess_runs
def test_show_preset_json(runs):
    info = json.loads(_ok(runs["show_preset"]))
    b0 = preset("efficientnet-b0")
    assert {"arch", "params", "macs", "resolution"} <= set(info)
    assert info["arch"] == b0.to_string()
    assert info["params"] == 5_288_548
    assert info["macs"] == count_macs(b0)
    assert info["macs"] == pytest.approx(0.386e9, rel=0.01)
    assert info["resolution"] == 224
    assert Architecture.from_dict(info["architecture"]) == b0


def test_show_block_string(capsys):
    arch = Architecture.from_string(BLOCKS)
    out = _ok(main_in_process(["show", BLOCKS], capsys))
    assert arch.to_string() in out
    assert f"{count_params(arch):,}" in out
    assert "MBConv" in out and "conv3x3 (stem)" in out
    info = json.loads(_ok(main_in_process(["show", BLOCKS, "--json"], capsys)))
    assert Architecture.from_string(info["arch"]) == arch
    assert info["params"] == count_params(arch)
    assert info["macs"] == count_macs(arch)
    assert info["resolution"] == 128


def test_show_json_file(tmp, capsys):
    info = json.loads(_ok(main_in_process(["show", str(tmp / "arch.json"), "--json"], capsys)))
    a1 = preset("mnasnet-a1")
    assert info["arch"] == a1.to_string()
    assert info["params"] == count_params(a1)
    assert info["resolution"] == 224


def test_spaces_lists_every_space(capsys):
    out = _ok(main_in_process(["spaces"], capsys))
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == space_names()


def test_presets_lists_every_preset(capsys):
    out = _ok(main_in_process(["presets"], capsys))  # counts the MACs of every preset, up to V2-L at 480 px
    assert "params (1000 classes)" in out.splitlines()[0]
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert [r[0] for r in rows] == preset_names()
    assert rows[0][:2] == ["efficientnet-b0", "5288548"]
    assert out.splitlines()[1].rstrip().endswith("torchvision efficientnet_b0, timm tf_efficientnet_b0")


def test_show_states_the_class_count_a_run_records(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.json").write_text(json.dumps({"arch": TINY, "num_classes": 10}))
    arch = Architecture.from_string(TINY)
    out = _ok(main_in_process(["show", str(run)], capsys))
    assert f"params      {count_params(arch, 10):,}  (at 10 classes, as recorded in {run / 'best.json'})" in out
    info = json.loads(_ok(main_in_process(["show", str(run), "--json"], capsys)))
    assert (info["num_classes"], info["params"]) == (10, count_params(arch, 10))
    assert info["num_classes_from"] == str(run / "best.json")
    # --num-classes wins; a run that records none is counted at 1000 classes, and says so.
    assert json.loads(_ok(main_in_process(["show", str(run), "--json", "--num-classes", "3"], capsys)))[
        "params"
    ] == count_params(arch, 3)
    (run / "best.json").write_text(json.dumps({"arch": TINY}))
    assert "(at 1000 classes)" in _ok(main_in_process(["show", str(run)], capsys))


def test_show_prints_the_conventions_and_nominal_inputs(capsys):
    out = _ok(main_in_process(["show", "efficientnet-edgetpu-s"], capsys))
    assert "nominal in" in out and "BatchNorm   eps 0.001   momentum 0.1   padding symmetric" in out
    out = _ok(main_in_process(["show", preset("mobilenetv2", "torchvision").to_string()], capsys))
    assert "nominal in" not in out and "eps 1e-05" in out and "activation  relu6" in out


@subprocess_runs
def test_measure_json(runs):
    rc, out, err = runs["measure"]
    assert rc == 0, err
    # Nothing on stderr but the progress line a slow step earns (a loaded machine: steps over 0.5 s).
    assert all(line.startswith("timing: step ") for line in err.splitlines()), err
    r = json.loads(out)
    assert {
        "step_time_ms",
        "iqr_ms",
        "device",
        "arch",
        "params",
        "batch_size",
        "image_size",
        "threads",
        "torch_version",
        "dtype",
        "memory_format",
    } <= set(r)
    assert r["step_time_ms"] > 0 and r["iqr_ms"] >= 0
    assert r["device"] == "cpu"
    assert (r["batch_size"], r["image_size"]) == (2, 32)
    assert Architecture.from_string(r["arch"]) == Architecture.from_string(TINY)
    assert r["params"] == count_params(Architecture.from_string(TINY))


def _one_error_line(result, names: str) -> None:
    rc, out, err = result
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nas: error: ")
    assert names in lines[0]
    assert out == ""


@subprocess_runs
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_error_line(runs, case):
    _one_error_line(runs[f"bad_{case}"], BAD[case][1])


@pytest.mark.parametrize("case", sorted(BAD_IN_PROCESS))
def test_more_bad_input_in_process(tmp, capsys, case):
    args, names = BAD_IN_PROCESS[case]
    _one_error_line(main_in_process([a.replace("{tmp}", str(tmp)) for a in args], capsys), names)


def test_argparse_errors_are_one_line_too(capsys):
    rc, _out, err = main_in_process(["measure", TINY, "--batch-size", "x"], capsys)
    assert rc == 2
    assert len(err.splitlines()) == 1 and re.match(r"nas measure: error: ", err)
    assert "'x'" in err
