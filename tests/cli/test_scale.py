"""``nas scale`` and ``nas grid-scale`` as a user runs them (EfficientNet V1 section 3.3).

Subprocess runs cost an interpreter start and a torch import each, so the command line is run that
way once per command; the other cases call ``nas.cli.main`` in this process, which is the same code
path below argument parsing.
"""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
import pytest

from nas.cli import main
from nas.core.resolve import resolve_arch
from nas.scaling.grid import Candidate, scale_candidate
from search_spaces import REFERENCE, Architecture, compound, preset

SMALL = (
    "stem16,r1_k3_s1_e1_i16_o16,r2_k3_s2_e6_i16_o24,r2_k5_s2_e6_i24_o40_se0.25,r3_k3_s2_e6_i40_o80_se0.25,head320,res64"
)
TINY = "stem8,r1_k3_s2_e1_i8_o8_c1,r1_k3_s2_e4_i8_o16,head32,res32"
TINY_PROXY = [
    "--dataset",
    "fake",
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--width-mult",
    "1",
    "--depth-mult",
    "1",
    "--measure-time",
    "0.05",
    "--step-time",
    "proxy",
    "--no-progress",
]  # the proxy's own step is timed


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_scale_writes_one_json_per_phi_and_the_family_table(run_nas, tmp_path):
    rc, out, err = run_nas(
        "scale",
        "--phi",
        "3",
        "--coefficients",
        "1.2,1.1,1.15",
        "--base",
        SMALL,
        "--out",
        tmp_path,
        "--num-classes",
        "10",
    )
    assert rc == 0, err
    base = Architecture.from_string(SMALL)
    for phi in (1, 2, 3):
        arch = Architecture.from_json((tmp_path / f"phi{phi}.json").read_text())
        assert arch == compound(base, phi, 1.2, 1.1, 1.15, depth_rounding="round")
        assert arch.resolution == round(64 * 1.15**phi)
        assert f"phi {phi}: {arch.to_string()}" in out
    assert not (tmp_path / "phi0.json").exists() and not (tmp_path / "phi4.json").exists()
    fam = pd.read_csv(tmp_path / "family.csv")
    assert list(fam["phi"]) == [0, 1, 2, 3]
    assert {"arch", "params", "macs", "resolution", "macs_ratio", "target_macs_ratio"} <= set(fam.columns)
    assert fam["macs"].is_monotonic_increasing and fam["params"].is_monotonic_increasing
    assert list(fam["target_macs_ratio"].round(6)) == [round((1.2 * 1.1**2 * 1.15**2) ** p, 6) for p in range(4)]
    assert "alpha*beta**2*gamma**2 = 1.920" in out and "macs_ratio" in out


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python's accepts them; JSON does not)."""

    def refuse(token):
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_scale_json_and_v2_rules(capsys, tmp_path):
    rc, out, err = cli(
        capsys,
        "scale",
        "--phi",
        "2",
        "--coefficients",
        "1.2,1.1,1.15",
        "--base",
        SMALL,
        "--out",
        tmp_path,
        "--v2-rules",
        "--late-stages",
        "2",
        "--json",
        "--num-classes",
        "10",
    )
    assert rc == 0, err
    data = strict_json(out)
    assert data["rules"] == "v2" and [r["phi"] for r in data["family"]] == [0, 1, 2]
    assert data["num_classes"] == 10 and all(r["num_classes"] == 10 for r in data["family"])
    assert data["family"][0]["file"] is None and data["family"][1]["file"] == "phi1.json"
    phi2 = Architecture.from_json((tmp_path / "phi2.json").read_text())
    assert phi2.to_string() == data["family"][2]["arch"]
    # --late-stages 2: added layers go to the last two stages only.
    assert [s.repeats for s in phi2.stages[:2]] == [1, 2]
    # Without it, the V2 rules scale every stage (ceil, the authors' rule), and --depth-rounding is honoured.
    rc, out, _ = cli(
        capsys,
        "scale",
        "--phi",
        "2",
        "--coefficients",
        "1.2,1.1,1.15",
        "--base",
        SMALL,
        "--out",
        tmp_path / "b",
        "--v2-rules",
        "--json",
    )
    assert [s.repeats for s in Architecture.from_string(strict_json(out)["family"][2]["arch"]).stages] == [
        math.ceil(r * 1.44) for r in (1, 2, 2, 3)
    ]
    assert strict_json(out)["depth_rounding"] == "ceil"
    rc, out, _ = cli(
        capsys,
        "scale",
        "--phi",
        "2",
        "--coefficients",
        "1.2,1.1,1.15",
        "--base",
        SMALL,
        "--out",
        tmp_path / "c",
        "--v2-rules",
        "--depth-rounding",
        "round",
        "--json",
    )
    assert [s.repeats for s in Architecture.from_string(strict_json(out)["family"][2]["arch"]).stages] == [
        1,
        3,
        3,
        4,
    ]  # round(r * 1.44)


def test_scale_reproduces_efficientnetv2_b1_to_b3(capsys, tmp_path):
    """EfficientNetV2-B1..B3 are V2-B0 scaled by the published coefficients with the V2 rules; their
    parameter counts are timm's tf_efficientnetv2_b1..b3 (search_spaces.reference)."""
    rc, out, err = cli(
        capsys,
        "scale",
        "--coefficients",
        "efficientnetv2",
        "--base",
        "efficientnetv2-b0",
        "--v2-rules",
        "--out",
        tmp_path,
        "--json",
    )
    assert rc == 0, err
    data = strict_json(out)
    assert data["published"] == "efficientnetv2" and data["alpha"] is None and data["rules"] == "v2"
    fam = data["family"]
    assert [r["member"] for r in fam] == ["base", "b1", "b2", "b3"]
    assert [r["params"] for r in fam[1:]] == [8_141_052, 10_096_086, 14_358_406]
    for r in fam[1:]:
        name = f"efficientnetv2-{r['member']}"
        assert r["params"] == REFERENCE[name]["params"] and r["macs"] == REFERENCE[name]["macs"]
        assert Architecture.from_json((tmp_path / r["file"]).read_text()) == preset(name)
    # The table implies its rules and base: the same without --v2-rules and --base.
    rc, out, err = cli(capsys, "scale", "--coefficients", "efficientnetv2", "--out", tmp_path / "again", "--phi", "2")
    assert rc == 0, err
    assert "b1: " + preset("efficientnetv2-b1").to_string() in out and "b3:" not in out
    assert "EfficientNetV2" in out and "at 1000 classes" in out


def test_scale_reproduces_efficientnet_b1_to_b3(capsys, tmp_path):
    rc, out, err = cli(capsys, "scale", "--coefficients", "efficientnet", "--phi", "3", "--out", tmp_path, "--json")
    assert rc == 0, err
    fam = strict_json(out)["family"]
    assert [Architecture.from_string(r["arch"]) for r in fam[1:]] == [preset(f"efficientnet-b{k}") for k in (1, 2, 3)]
    assert strict_json(out)["depth_rounding"] == "ceil"


@pytest.mark.parametrize(
    "args, word",
    [
        (
            ["scale", "--phi", "-1", "--coefficients", "1.2,1.1,1.15", "--base", TINY],
            "--phi must be a positive integer, got -1",
        ),
        (["scale", "--phi", "2", "--coefficients", "1.2,1.1", "--base", TINY], "three coefficients"),
        (["scale", "--phi", "2", "--coefficients", "0.9,1.1,1.15", "--base", TINY], "alpha .* >= 1.*got 0.9"),
        (["scale", "--phi", "2", "--coefficients", "1.2,x,1.15", "--base", TINY], "'x' is not a number"),
        (["scale", "--phi", "2", "--coefficients", "1.2,1.1,1.15"], "--base is needed"),
        # conflicting flags
        (["scale", "--coefficients", "1.2,1.1,1.15", "--base", TINY], "--phi is needed with compound coefficients"),
        (
            ["scale", "--phi", "1", "--coefficients", "1.2,1.1,1.15", "--base", TINY, "--late-stages", "1"],
            "--late-stages is EfficientNetV2's heuristic .*: add --v2-rules",
        ),
        (
            ["scale", "--coefficients", "efficientnet", "--v2-rules"],
            "published efficientnet coefficients were made with EfficientNet V1's rules: drop --v2-rules",
        ),
        (["scale", "--coefficients", "efficientnetv2", "--phi", "4"], "--phi 4: .* have 3 members \\(b1, b2, b3\\)"),
        (
            [
                "scale",
                "--phi",
                "1",
                "--coefficients",
                "1.2,1.1,1.15",
                "--base",
                TINY,
                "--v2-rules",
                "--late-stages",
                "9",
            ],
            "--late-stages must be an integer in \\[0, 2\\], got 9",
        ),
        (
            ["scale", "--phi", "1", "--coefficients", "1.2,1.1,1.15", "--base", TINY, "--num-classes", "0"],
            "--num-classes must be an integer in \\[1, 1000000\\], got 0",
        ),
        (["grid-scale", "--base", TINY, "--phi", "-1"], "--phi must be a positive number, got -1"),
        (["grid-scale", "--base", TINY, "--min", "0.9"], "--min must be >= 1.*0.9"),
        (["grid-scale", "--base", TINY, "--max-candidates", "0"], "--max-candidates .* got 0"),
        (
            ["grid-scale", "--base", TINY, "--objective", "speed"],
            "--objective must be one of accuracy, reward; got 'speed'",
        ),
        (["grid-scale", "--base", "no-such-net"], "no-such-net"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, word):
    import re

    rc, _out, err = cli(capsys, *args, "--out", tmp_path / "run")
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("nas: error: ") and re.search(word, err), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unreadable_coefficient_files(capsys, tmp_path):
    (tmp_path / "c.json").write_text('{"alpha": 1.2, "beta"')
    rc, _, err = cli(capsys, "scale", "--phi", "2", "--coefficients", tmp_path / "c.json", "--base", TINY)
    assert rc == 2 and "c.json" in err and "corrupt" in err and len(err.splitlines()) == 1
    (tmp_path / "c.json").write_bytes(b"\xff\xfe\x00")
    rc, _, err = cli(capsys, "scale", "--phi", "2", "--coefficients", tmp_path / "c.json", "--base", TINY)
    assert rc == 2 and "unreadable" in err and len(err.splitlines()) == 1


def test_empty_grid_through_the_command_line(run_nas, tmp_path):
    rc, out, err = run_nas("grid-scale", "--base", TINY, "--max", "1.05", "--out", tmp_path / "run")
    assert rc == 2 and out == ""
    assert err.splitlines() == [err.strip()] and "[1, 1.05]" in err and "1.276" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_grid_scale_end_to_end_then_resume_then_scale(capsys, tmp_path):
    run = tmp_path / "grid"
    args = ["grid-scale", "--base", TINY, "--max-candidates", "3", "--out", run, *TINY_PROXY]
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    assert "109 of 9261 grid points" in out and "evaluating 3 of them" in out
    df = pd.read_csv(run / "grid.csv")
    for col in (
        "alpha",
        "beta",
        "gamma",
        "product",
        "depth_mult",
        "width_mult",
        "resolution",
        "params",
        "macs",
        "macs_ratio",
        "step_time_ms",
        "accuracy",
        "reward",
        "state",
        "error",
    ):
        assert col in df.columns, col
    assert len(df) == 4 and list(df["state"]) == ["COMPLETE"] * 4 and df.loc[0, "candidate"] == "base"
    assert df.loc[0, "macs_ratio"] == 1.0 and (df["step_time_ms"] > 0).all()
    base = Architecture.from_string(TINY)
    for _, r in df.iloc[1:].iterrows():
        c = Candidate(r["alpha"], r["beta"], r["gamma"])
        assert abs(r["product"] - 2) <= 0.1 + 1e-9
        assert r["arch"] == scale_candidate(base, c, 1.0).to_string()
        assert r["resolution"] == round(32 * c.gamma) and r["proxy_image_size"] == round(16 * c.gamma)
        # The proxy trains at the candidate's resolution: the timed batch had that size.
        assert r["step_image_size"] == r["proxy_image_size"]
    coef = json.loads((run / "coefficients.json").read_text())
    chosen = df[df["candidate"] != "base"].sort_values(["accuracy", "macs"], ascending=[False, True]).iloc[0]
    assert (coef["alpha"], coef["beta"], coef["gamma"]) == (chosen["alpha"], chosen["beta"], chosen["gamma"])
    assert coef["objective"] == "accuracy" and coef["objective_value"] == chosen["accuracy"]
    assert coef["runner_up"] is not None and coef["base"]["accuracy"] == df.loc[0, "accuracy"]
    assert coef["settings"]["proxy"]["train"]["image_size"] == 16 and coef["n_feasible"] == 109
    assert (run / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert resolve_arch(str(run)).to_string() == chosen["arch"]  # best.json: the chosen scaled network

    # Rerunning the same command evaluates nothing: same rows, same durations, no new trial.
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    assert "4 of 4 candidates already finished" in out
    pd.testing.assert_frame_equal(pd.read_csv(run / "grid.csv"), df)
    study = optuna.load_study(study_name="nas-grid", storage=f"sqlite:///{run / 'study.db'}")
    assert len(study.trials) == 4

    # Bad input against the finished run directory: refused, nothing in it changed.
    results = lambda: {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith((".", "study.db"))}  # noqa: E731
    before = results()
    for bad in (["--max", "1.05"], ["--phi", "-1"], ["--min", "0.5"], ["--tolerance", "0.2"]):
        rc, _, err = cli(capsys, *args, *bad)
        assert rc == 2 and len(err.splitlines()) == 1, (bad, err)
    assert results() == before

    # Step 2 from the run directory: the base comes from coefficients.json.
    rc, out, err = cli(capsys, "scale", "--phi", "2", "--coefficients", run, "--out", tmp_path / "fam")
    assert rc == 0, err
    phi1 = Architecture.from_json((tmp_path / "fam" / "phi1.json").read_text())
    assert phi1.to_string() == chosen["arch"]
    assert math.isclose(
        pd.read_csv(tmp_path / "fam" / "family.csv")["target_macs_ratio"].iloc[2], chosen["product"] ** 2
    )
