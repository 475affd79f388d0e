"""The step-time model: piece keys, the table file, the prediction formula, fidelity, and the CLI.

Everything runs at tiny settings (16 px, batch 2, a few-piece space, milliseconds of timing per
piece): these tests check what is computed and stored, never how fast anything is.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.core.device import Runtime
from nas.core.memory import estimate_step_memory
from nas.errors import NasError
from nas.steptime import StepTimeModel, Target, check, default_target
from nas.steptime import build as build_mod
from nas.steptime import table as tables
from nas.steptime.build import calibration_archs
from nas.steptime.correction import correct, fit_correction
from nas.steptime.costs import COSTS
from nas.steptime.cover import covering_architectures
from nas.steptime.pieces import decompose, extract, piece_params
from search_spaces import Architecture, Stage, build, count_params, get_space, preset, scale
from search_spaces.base import SearchSpace
from tests.helpers import main_in_process

TINY = Architecture.from_string("stem8,r1_k3_s1_e1_i8_o8_se0.25,r2_k3_s2_e4_i8_o16_c1,head32,res32")
FAST = {"piece_run_time": 0.002, "measure_run_time": 0.01, "calibration_samples": 3, "num_classes": 10}
TARGET = Target(16, 2)


class TinySpace(SearchSpace):
    """Two stages: kernel of the first, op and layers of the second (not registered: a test space)."""

    name = "tiny-test"

    def decisions(self):
        return [("s1_kernel", [3, 5]), ("s2_op", ["mbconv", "fused"]), ("s2_layers", [1, 2])]

    def make(self, choice):
        return TINY.replace(
            stages=(
                Stage("mbconv", choice["s1_kernel"], 1, 1, 8, 1, 0.25),
                Stage(choice["s2_op"], 3, 2, 4, 16, choice["s2_layers"]),
            )
        )

    def reference(self):
        return TINY


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny table built once for the module's tests that only read it."""
    d = tmp_path_factory.mktemp("tables")
    return StepTimeModel.load_or_build(TinySpace(), Runtime.resolve("cpu"), TARGET, table_dir=d, **FAST)


def _model(tmp_path, **kw):
    return StepTimeModel.load_or_build(
        TinySpace(), Runtime.resolve("cpu"), TARGET, table_dir=tmp_path, **{**FAST, **kw}
    )


# -- pieces and their keys ------------------------------------------------------------------------


def test_keys_come_from_the_text_form_and_the_input_shape():
    v2s = preset("efficientnetv2-s")
    refs = decompose(v2s, 64, 16, 1000)
    assert sum(n for _, n in refs) == v2s.num_blocks + 3  # stem, every block, head, tail
    keys = [r.key for r, _ in refs]
    assert keys[0] == "stem|act_silu|stem24|16x3x64x64"
    assert "block|act_silu|r1_k3_s2_e4_i24_o48_c1|sd|16x24x32x32" in keys  # stage 2's first block
    assert "block|act_silu|r1_k3_s1_e4_i48_o48_c1|sd|16x48x16x16" in keys  # and its repeated block
    assert keys[-1] == "tail|act_silu|classes1000|dropout|16x1280x2x2"
    # Everything that shapes a module changes the key: activation, input size, batch.
    relu = {r.key for r, _ in decompose(v2s.replace(activation="relu"), 64, 16, 1000)}
    assert not relu & set(keys)
    assert not {r.key for r, _ in decompose(v2s, 96, 16, 1000)} & set(keys)
    assert not {r.key for r, _ in decompose(v2s, 64, 8, 1000)} & set(keys)
    # What does not shape a piece leaves its key alone: rates, the head width for a block.
    same = decompose(v2s.replace(dropout=0.3, drop_path=0.1, head=1408), 64, 16, 1000)
    assert [r.key for r, _ in same][:-2] == keys[:-2]


def test_pieces_are_the_networks_own_modules():
    torch.manual_seed(0)
    rt = Runtime.resolve("cpu")
    net = rt.prepare(build(TINY, 10)).train()
    refs = decompose(TINY, 16, 2, 10)
    found = extract(net, [r for r, _ in refs], rt.images(torch.randn(2, 3, 16, 16)), rt)
    assert set(found) == {r.key for r, _ in refs}  # and every shape matched its key
    blocks = [m for st in net.features[1:-1] for m in st]
    assert found[refs[1][0].key][0] is blocks[0] and found[refs[3][0].key][0] is blocks[2]
    # Parameters of the pieces, counted with their multiplicity, are the network's.
    total = sum(n * piece_params(found[r.key][0])[0] for r, n in refs)
    assert total == count_params(TINY, 10)
    # So are the activations they save for the backward pass (the correction's ``act`` term), as the
    # memory estimate counts them on the whole network; latency's are what the forward produces.
    act = sum(n * COSTS["step"].piece_act_mb(*found[r.key], rt, kind=r.kind) for r, n in refs)
    assert act == pytest.approx(estimate_step_memory(TINY, 2, 16, 10).activations / 1e6, rel=0.02)
    assert 0 < sum(n * COSTS["latency"].piece_act_mb(*found[r.key], rt, kind=r.kind) for r, n in refs) < act


def test_trainaware_is_prefilled_completely_and_mnasnet_lazily():
    space = get_space("trainaware")
    covers = covering_architectures(space, 64, 16, 1000)
    assert covers is not None and len(covers) == 12
    keys = {r.key for a in covers for r, _ in decompose(a, 64, 16, 1000)}
    assert len(keys) == 6 * 12 * 2 + 3  # stage x op/kernel/expansion x (first, repeated) + stem, head, tail
    rng = np.random.default_rng(0)
    for _ in range(100):
        assert {r.key for r, _ in decompose(space.sample(rng), 64, 16, 1000)} <= keys
    assert covering_architectures(get_space("mnasnet"), 64, 16, 1000) is None


# -- the table and the formula --------------------------------------------------------------------


def test_prediction_is_the_documented_formula(built):
    data = json.loads(built.path.read_text())
    corr = data["correction"]
    for arch in (TINY, TinySpace().sample(1), TinySpace().sample(2)):
        pieces = [(data["pieces"][r.key], n) for r, n in decompose(arch, 16, 2, 10)]
        raw = sum(n * p["ms"] for p, n in pieces)
        params = count_params(arch, 10)
        saved = sum(n * p["act_mb"] for p, n in pieces)
        expected = corr["a"] * raw + corr["b"] * arch.num_blocks + corr["d"] * params + corr["e"] * saved + corr["c"]
        ratios = [p["measured_ms"] / p["raw_ms"] for p in corr["points"]]
        expected = min(max(expected, 0.9 * min(ratios) * raw), 1.1 * max(ratios) * raw)
        assert built.predict(arch) == pytest.approx(expected, rel=1e-12)
        assert built.breakdown(arch)["params"] == params


def test_correction_is_the_least_squares_fit():
    rows = [
        {"raw_ms": r, "blocks": b, "params": p, "measured_ms": 1.5 * r + 0.5 * b + 3}
        for r, b, p in [(10, 4, 7), (20, 5, 3), (30, 9, 11), (45, 7, 5), (60, 12, 2)]
    ]
    fit = fit_correction(rows)
    assert fit["form"] == "a*raw + b*blocks + c" and fit["loo_mape"] == pytest.approx(0, abs=1e-9)
    assert (fit["a"], fit["b"], fit["d"], fit["c"]) == pytest.approx((1.5, 0.5, 0, 3.0))
    # A block that would take time off a step is a fitting artefact: never the chosen form.
    fit = fit_correction([{**r, "measured_ms": r["measured_ms"] - 1.0 * r["blocks"]} for r in rows])
    assert fit["form"] != "a*raw + b*blocks + c" and fit["b"] == 0 and fit["d"] >= 0 and fit["e"] >= 0
    rows = [{**r, "measured_ms": 0.9 * r["raw_ms"] + 2 * r["params"] + 1} for r in rows]
    fit = fit_correction(rows)
    assert fit["form"] == "a*raw + d*params + c"
    assert (fit["a"], fit["b"], fit["d"], fit["c"]) == pytest.approx((0.9, 0, 2, 1))
    # A cost in the saved activations on top of the pieces (a CPU's caches): one coefficient, a stays 1.
    saved = [130.0, 90.0, 400.0, 210.0, 60.0]
    fit = fit_correction([{**r, "act_mb": m, "measured_ms": r["raw_ms"] + 0.13 * m} for r, m in zip(rows, saved)])
    assert fit["form"] == "raw + e*act" and (fit["a"], fit["e"], fit["c"]) == pytest.approx((1, 0.13, 0))
    # Data a scale explains: the simplest form that does wins.
    fit = fit_correction([{**r, "measured_ms": 1.2 * r["raw_ms"]} for r in rows])
    assert fit["form"] == "a*raw" and fit["a"] == pytest.approx(1.2)
    # Noise around the raw sum: no fit beats it by the margin its coefficients owe, so none is kept.
    noisy = [
        {"raw_ms": r, "blocks": b, "params": p, "measured_ms": r * f}
        for r, b, p, f in zip(
            [300, 500, 800, 1200, 2000, 4000],
            [37, 41, 40, 38, 42, 38],
            [7e6, 2e7, 3e7, 4e7, 2e7, 1.5e8],
            [1.08, 0.93, 1.0, 0.97, 1.06, 0.92],
        )
    ]
    assert fit_correction(noisy) == {
        "a": 1.0,
        "b": 0.0,
        "d": 0.0,
        "e": 0.0,
        "c": 0.0,
        "form": "raw",
        "loo_mape": pytest.approx(np.mean([0.08 / 1.08, 0.07 / 0.93, 0, 0.03 / 0.97, 0.06 / 1.06, 0.08 / 0.92])),
    }


def _size(arch: Architecture) -> float:
    """A stand-in piece sum for calibration_archs: grows with depth, expansion and width."""
    return float(sum(s.repeats * s.expansion * s.out * s.kernel for s in arch.stages))


def test_calibration_networks_span_the_spaces_range_of_costs():
    space = get_space("trainaware")
    stub = SimpleNamespace(
        space=space,
        table=SimpleNamespace(prefilled=True, correction=None),
        breakdown=lambda a, corrected: {"raw_ms": _size(a)},
    )
    calib = calibration_archs(stub, 7)
    assert calib[0] == space.reference() and len(set(calib)) == 8
    picked = [_size(a) for a in calib[1:]]
    assert picked == sorted(picked)
    pool = [_size(space.sample(np.random.default_rng(s))) for s in range(200)]
    lo, hi = np.quantile(pool, [0.15, 0.85])
    assert picked[0] <= lo and picked[-1] >= hi, (picked, lo, hi)  # both ends of the range, not the middle
    assert np.quantile(pool, 0.4) <= picked[3] <= np.quantile(pool, 0.6)  # and the middle
    # A space the table cannot pre-fill: random draws (their pieces are timed first), and a built
    # table's are the networks its correction was fitted on, whatever the sampling does now.
    stub.table.prefilled = False
    rng = np.random.default_rng(build_mod.CALIBRATION_SEED)
    assert calibration_archs(stub, 3) == [space.reference()] + [space.sample(rng) for _ in range(3)]
    stub.table.correction = {"points": [{"arch": a.to_string()} for a in calib[:3]]}
    assert calibration_archs(stub) == calib[:3]


def test_a_correction_never_extrapolates_past_the_measured_ratios():
    # Fitted on networks of 200-800 ms with a large negative intercept: a 5 ms network would come out
    # at -90 ms (what a tiny nas grid-scale base got); it is kept at a ratio that was measured.
    points = [{"raw_ms": r, "blocks": 40, "params": 1e7, "measured_ms": 1.3 * r - 100} for r in (200, 400, 800)]
    corr = {"a": 1.3, "b": 0.0, "d": 0.0, "c": -100.0, "form": "a*raw + c", "points": points}
    ratios = [p["measured_ms"] / p["raw_ms"] for p in points]  # 0.8 .. 1.175
    assert correct(corr, 5.0, 10, 1e4) == pytest.approx(0.9 * min(ratios) * 5.0)
    assert correct(corr, 1e5, 10, 1e9) == pytest.approx(1.1 * max(ratios) * 1e5)
    assert correct(corr, 400, 40, 1e7) == pytest.approx(1.3 * 400 - 100)  # inside: the fit itself
    assert correct({"a": 1.0, "b": 0.0, "d": 0.0, "c": -10.0}, 5.0, 1, 1) == 5.0  # no points: never negative


def test_round_trip_and_no_rebuild(built):
    assert built.built and built.table.prefilled and built.table.complete
    assert built.path.name.startswith("tiny-test-step-cpu-16px-b2-c10-")
    data = json.loads(built.path.read_text())
    assert data["format"] == tables.FORMAT
    assert data["fingerprint"] == {**Runtime.resolve("cpu").fingerprint(), "clock": "wall"} == built.fingerprint
    assert (
        data["setting"]
        == {
            "space": "tiny-test",
            "cost": "step",
            "image_size": 16,
            "batch_size": 2,
            "num_classes": 10,
            "compiled": False,
        }
        == built.setting
    )
    assert all(p["passes"] == 2 for p in data["pieces"].values())
    assert len(data["pieces"]) == 9  # stem, 2 first-stage variants, 2 ops x (first, repeated), head, tail
    again = StepTimeModel.load_or_build(
        TinySpace(), Runtime.resolve("cpu"), TARGET, table_dir=built.path.parent, **FAST
    )
    assert not again.built and again.table.pieces == built.table.pieces
    assert again.predict(TINY) == built.predict(TINY)
    loaded = StepTimeModel.load(TinySpace(), "cpu", TARGET, table_dir=built.path.parent, num_classes=10)
    assert loaded.predict(TINY) == built.predict(TINY)


def test_another_setting_or_device_never_reuses_a_table(built):
    d = built.path.parent
    rt = Runtime.resolve("cpu")
    for target in (Target(24, 2), Target(16, 4), Target(16, 2, "latency")):
        with pytest.raises(NasError, match="no step-time table"):
            StepTimeModel.load(TinySpace(), rt, target, table_dir=d, num_classes=10)
        assert tables.table_path(d, tables.fingerprint(rt), tables.setting("tiny-test", target, 10)) != built.path
    # Another class count is another setting: its tail (classifier and loss) differs.
    with pytest.raises(NasError, match="no step-time table"):
        StepTimeModel.load(TinySpace(), rt, TARGET, table_dir=d, num_classes=1000)
    # Another device (here: another thread count, or contiguous memory) is another fingerprint.
    contiguous = Runtime.resolve("cpu", channels_last="off")
    with pytest.raises(NasError, match="no step-time table"):
        StepTimeModel.load(TinySpace(), contiguous, TARGET, table_dir=d, num_classes=10)
    st = tables.setting("tiny-test", TARGET, 10)
    torch.set_num_threads(2)
    try:
        fp2 = tables.fingerprint(rt)
    finally:
        torch.set_num_threads(1)
    assert fp2["threads"] == 2 and tables.table_path(d, fp2, st) != built.path
    # A table copied onto another fingerprint's name is refused, not used.
    other = tables.table_path(d, tables.fingerprint(contiguous), st)
    other.write_text(built.path.read_text())
    with pytest.raises(NasError, match=r"made for another device or setting \(memory_format: 'channels_last' there"):
        StepTimeModel.load(TinySpace(), contiguous, TARGET, table_dir=d, num_classes=10)
    other.unlink()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda text: text[: len(text) // 2], "corrupt or truncated"),
        (lambda text: "", "corrupt or truncated"),
        (lambda text: json.dumps({"format": "nas.run/1"}), "not a step-time table"),
        (lambda text: text.replace('"ms": ', '"ms": -', 1), "impossible value"),
        (
            lambda text: text.replace('"iqr_ms": ', '"iqr_ms": "', 1).replace(
                ',\n      "params"', '",\n      "params"', 1
            ),
            "impossible value",
        ),
        (lambda text: json.dumps({**json.loads(text), "pieces": [1, 2]}), "no piece list"),
    ],
)
def test_corrupt_table_is_one_clear_error_and_rebuilt_on_request(tmp_path, built, damage, message):
    path = tables.table_path(tmp_path, built.fingerprint, built.setting)
    path.write_text(damage(built.path.read_text()))
    with pytest.raises(NasError, match=message) as e:
        _model(tmp_path)
    assert str(path) in str(e.value) and "\n" not in str(e.value) and "--rebuild" in str(e.value)
    rebuilt = _model(tmp_path, rebuild=True)
    assert rebuilt.built and StepTimeModel.load(TinySpace(), "cpu", TARGET, table_dir=tmp_path, num_classes=10)


def test_missing_pieces_are_timed_on_first_use_and_kept(tmp_path):
    model = _model(tmp_path)
    n = len(model.table.pieces)
    wide = scale(TINY, width=2.0)  # a scaled network: none of its blocks is in the table
    missing = {r.key for r, _ in decompose(wide, 16, 2, 10)} - set(model.table.pieces)
    assert missing
    model.predict(wide)
    assert model.timed == len(missing)
    assert model.predict(TINY, image_size=24) > 0  # another resolution: its pieces too
    on_disk = StepTimeModel.load(TinySpace(), "cpu", TARGET, table_dir=tmp_path, num_classes=10)
    assert len(on_disk.table.pieces) == len(model.table.pieces) > n
    assert on_disk.predict(wide) == model.predict(wide) and on_disk.timed == 0


def test_two_writers_extending_one_table_keep_both_pieces(tmp_path):
    _model(tmp_path)
    a, b = (StepTimeModel.load(TinySpace(), "cpu", TARGET, table_dir=tmp_path, num_classes=10) for _ in range(2))
    archs = (scale(TINY, width=2.0), scale(TINY, width=3.0))
    threads = [threading.Thread(target=m.predict, args=(x,)) for m, x in zip((a, b), archs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = StepTimeModel.load(TinySpace(), "cpu", TARGET, table_dir=tmp_path, num_classes=10)
    for x in archs:
        assert {r.key for r, _ in decompose(x, 16, 2, 10)} <= set(final.table.pieces)


# -- target and fidelity ----------------------------------------------------------------------


def test_default_targets():
    assert default_target(Runtime.resolve("cpu"), "trainaware") == Target(64, 16)
    assert default_target(Runtime.resolve("cpu"), None, image_size=32) == Target(32, 16)
    cuda = Runtime(torch.device("cuda"), torch.bfloat16, True)  # a description only: nothing runs on it
    assert default_target(cuda, "trainaware") == Target(384, 40)
    assert default_target(cuda, "mnasnet") == Target(224, 128)
    assert default_target(cuda, "trainaware", image_size=224) == Target(224, 128)
    for bad in ({"image_size": 4}, {"batch_size": 0}):
        with pytest.raises(NasError, match="got"):
            default_target(Runtime.resolve("cpu"), None, **bad)


def test_check_times_fresh_candidates(built):
    rep = check(built, 3, seed=5, min_run_time=0.01, repeat=True)
    assert rep["n"] == 3 and len(rep["rows"]) == 3 and rep["repeat"]["n"] == 3
    seen = {a.to_string() for a in calibration_archs(built)}
    for r in rep["rows"]:
        assert r["predicted_ms"] == built.predict(Architecture.from_string(r["arch"])) and r["measured_ms"] > 0
        assert r["measured_again_ms"] > 0 and (r["arch"] not in seen or len(seen) >= 8)  # the space has 8


# -- the CLI ----------------------------------------------------------------------------------


def measure_a1(image_size: int, *extra) -> list:
    """``nas measure`` of MnasNet-A1 on one CPU thread at batch 2 and ``image_size`` px, then ``extra``."""
    return [
        "measure",
        "mnasnet-a1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--image-size",
        str(image_size),
        "--batch-size",
        "2",
        "--min-run-time",
        "0.01",
        *extra,
    ]


TINY_CLI = (
    "--device",
    "cpu",
    "--threads",
    "1",
    "--target-image-size",
    "16",
    "--target-batch-size",
    "2",
    "--piece-time",
    "0.002",
    "--min-run-time",
    "0.01",
)


@pytest.mark.parametrize(
    "args,names",
    [
        (["--target-image-size", "4"], "got 4"),
        (["--target-batch-size", "0"], "got 0"),
        (["--check", "-1"], "got -1"),
        (["--threads", "0"], "got 0"),
        (["--piece-time", "0"], "got 0"),
        (["--space", "nope"], "'nope'"),
        (["--device", "tpu"], "'tpu'"),
    ],
)
def test_calibrate_bad_flags(args, names, capsys, tmp_path):
    assert main(["calibrate", "--table-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas: error:") and names in err and "\n" not in err


def test_calibrate_and_measure_in_process(capsys, tmp_path):
    """mnasnet: a space too large to pre-fill, so the pieces of its calibration networks and checked
    candidates are timed on first use."""
    assert (
        main(
            [
                "calibrate",
                "--space",
                "mnasnet",
                "--check",
                "2",
                "--table-dir",
                str(tmp_path),
                "--json",
                "--num-classes",
                "10",
                *TINY_CLI,
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert {"spearman", "kendall_tau", "mape", "within_10pct", "n", "device_name", "table"} <= set(out)
    assert out["n"] == 2 and not out["prefilled"] and out["built_now"] and out["table"].startswith(str(tmp_path))
    assert (out["target_image_size"], out["target_batch_size"]) == (16, 2)
    assert main(measure_a1(16, "--num-classes", "10", "--table-dir", str(tmp_path), "--json")) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["step_time_ms"] > 0 and m["predicted_step_time_ms"] > 0 and m["table"] == out["table"]
    # Another setting has no table: no prediction, no error.
    assert main(measure_a1(24, "--table-dir", str(tmp_path), "--json")) == 0
    assert "predicted_step_time_ms" not in json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_calibrate_cli_end_to_end(run_nas, tmp_path, capsys):
    """As a user runs it: build, reuse, a corrupt table (one line, exit 2) and --rebuild. The build runs
    in a fresh interpreter, the rest in this process (the same fingerprint: one thread here too), which
    saves an interpreter's seconds of imports each."""
    args = [
        "calibrate",
        "--space",
        "mnasnet",
        "--check",
        "3",
        "--table-dir",
        tmp_path,
        "--num-classes",
        "10",
        *TINY_CLI,
    ]
    rc, out, err = run_nas(*args, "--json")
    assert rc == 0, err
    first = json.loads(out)
    assert first["built_now"] and first["n"] == 3
    rc, out, err = main_in_process(args, capsys)
    assert rc == 0 and "reused" in out and "Spearman" in out, err
    path = first["table"]
    with open(path, "w") as f:
        f.write('{"format": "nas.steptime/1", "pieces": {')
    rc, out, err = main_in_process(args, capsys)
    assert rc == 2 and err.strip().count("\n") == 0 and "corrupt or truncated" in err and path in err
    rc, out, err = main_in_process(measure_a1(16, "--num-classes", "10", "--table-dir", tmp_path, "--json"), capsys)
    assert rc == 2 and "corrupt" in err and err.strip().count("\n") == 0
    rc, out, err = main_in_process([*args, "--rebuild", "--json"], capsys)
    assert rc == 0 and json.loads(out)["built_now"], err
