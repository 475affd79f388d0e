"""The compound-scaled family (EfficientNet V1 section 3.3, step 2; V2 section 4.3): ``nas scale``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nas.core.files import read_json
from nas.errors import NasError, check_int
from nas.scaling.grid import DEPTH_ROUNDING, Candidate, check_phi
from search_spaces import Architecture, count_macs, count_params, scale, scale_v2
from search_spaces.presets import FAMILIES

# One member of a family: (name, width, depth, resolution multiplier, dropout or None to keep the base's).
Step = tuple[str, float, float, float, float | None]


def parse_coefficients(spec: str) -> tuple[Candidate, str | None]:
    """``A,B,G``, a ``coefficients.json`` (from ``nas grid-scale``, or ``{"alpha":..,"beta":..,"gamma":..}``
    or ``[a, b, g]``), or a grid-scale run directory. Returns the coefficients and, when the file
    names one, the base architecture string it was searched on."""
    if not isinstance(spec, str) or not spec.strip():
        raise NasError("no coefficients given (--coefficients A,B,G or a coefficients.json)")
    text = spec.strip()
    path = Path(text)
    base = None
    if path.is_dir():
        path = path / "coefficients.json"
        if not path.is_file():
            raise NasError(f"{text!r} is a directory without coefficients.json (not a finished grid-scale run)")
    if path.is_file() or text.lower().endswith(".json"):
        data = read_json(path, "coefficients file")
        if isinstance(data, dict):
            base = data.get("base", {}).get("arch") if isinstance(data.get("base"), dict) else None
            missing = [k for k in ("alpha", "beta", "gamma") if k not in data]
            if missing:
                raise NasError(f"coefficients file {str(path)!r} lacks {', '.join(missing)}")
            values = [data["alpha"], data["beta"], data["gamma"]]
        elif isinstance(data, list):
            values = data
        else:
            raise NasError(
                f"coefficients file {str(path)!r} holds {type(data).__name__}, "
                "expected an object with alpha, beta, gamma"
            )
        where = f"in {str(path)!r}"
    else:
        parts = [p.strip() for p in text.split(",")]
        values = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise NasError(
                    f"--coefficients {text!r}: {p!r} is not a number (expected A,B,G, e.g. "
                    "1.2,1.1,1.15, a coefficients.json or a published table: efficientnet, "
                    "efficientnetv2)"
                ) from None
        where = f"in --coefficients {text!r}"
    if len(values) != 3:
        raise NasError(f"expected three coefficients alpha,beta,gamma {where}, got {len(values)}")
    out = []
    for name, v in zip(("alpha", "beta", "gamma"), values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise NasError(f"{name} {where} must be a finite number, got {v!r}")
        if v < 1:
            raise NasError(f"{name} {where} must be >= 1 (compound scaling never shrinks), got {v!r}")
        out.append(float(v))
    return Candidate(*out), base


def scale_family(
    base: Architecture,
    coeffs: Candidate | str,
    n: int | None = None,
    *,
    v2_rules: bool | None = None,
    num_classes: int = 1000,
    depth_rounding: str | None = None,
    late_stages: int = 0,
) -> list[dict[str, Any]]:
    """The base (phi = 0) and its scaled models: phi = 1..n with compound coefficients
    (V1 section 3.3, step 2), or the members of a published table (``coeffs`` a name of
    :data:`search_spaces.presets.FAMILIES`: "efficientnet" gives B1..B8 and L2, "efficientnetv2"
    V2-B1..B3; all of them, or the first ``n``).

    ``v2_rules`` applies EfficientNetV2's rules instead of V1's (:func:`search_spaces.scale_v2`: V2
    channel rounding, inference size capped at 480), ``late_stages`` its heuristic of giving the
    added layers to the last stages. ``depth_rounding`` defaults to ``round`` for V1 compound
    scaling (see :data:`DEPTH_ROUNDING`) and to ``ceil``, the authors' rule, for the V2 rules and
    the published tables. A table brings its own rules: V1 rules with the V2 table's coefficients or
    the reverse are refused, as is ``late_stages`` without the V2 rules. A ``n`` so large that a
    member cannot be built (more layers or channels than an architecture may have) is refused
    naming ``--phi`` and the first member that fails.
    """
    num_classes = check_int("--num-classes", num_classes, 1, 1_000_000)
    if isinstance(coeffs, str):
        v2_rules, steps = _published_steps(coeffs, n, v2_rules)
    else:
        if n is None:
            raise NasError("--phi is needed with compound coefficients alpha,beta,gamma")
        n = check_phi(n, integer=True)
        steps = [(f"phi{phi}", coeffs.beta**phi, coeffs.alpha**phi, coeffs.gamma**phi, None) for phi in range(1, n + 1)]
    v2_rules = bool(v2_rules)
    late_stages = check_int("--late-stages", late_stages, 0, len(base.stages))
    if late_stages and not v2_rules:
        raise NasError("--late-stages is EfficientNetV2's heuristic (section 4.3): add --v2-rules")
    if depth_rounding is None:
        depth_rounding = "ceil" if v2_rules or isinstance(coeffs, str) else DEPTH_ROUNDING
    rules = {"v2_rules": v2_rules, "depth_rounding": depth_rounding, "late_stages": late_stages}
    archs = []  # every member first: a --phi too large is refused before any MACs are counted
    for step in steps:
        try:
            archs.append(_scaled(base, step, rules))
        except NasError as e:
            raise NasError(
                f"--phi {n}: {step[0]} (depth x{step[2]:.3g}, width x{step[1]:.3g}, resolution x{step[3]:.3g}) "
                f"cannot be built: {e}; choose a smaller --phi"
            ) from None
    base_macs = count_macs(base, num_classes=num_classes)
    rows = [_row(0, ("base", 1.0, 1.0, 1.0, None), base, base_macs, num_classes, rules)]
    for phi, (step, arch) in enumerate(zip(steps, archs), start=1):
        rows.append(_row(phi, step, arch, base_macs, num_classes, rules))
    return rows


def _published_steps(name: str, n: int | None, v2_rules: bool | None) -> tuple[bool, list[Step]]:
    """The rules and the first ``n`` members (all without ``n``) of a published table."""
    if name not in FAMILIES:
        raise NasError(f"unknown published coefficients {name!r}; known: {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    if v2_rules is not None and v2_rules != fam.v2_rules:
        rules = "EfficientNetV2's" if fam.v2_rules else "EfficientNet V1's"
        raise NasError(
            f"the published {name} coefficients were made with {rules} rules: "
            f"{'add' if fam.v2_rules else 'drop'} --v2-rules"
        )
    if n is not None and not 1 <= check_phi(n, integer=True) <= len(fam.members):
        raise NasError(
            f"--phi {n}: the published {name} coefficients have {len(fam.members)} members ({', '.join(fam.members)})"
        )
    members = list(fam.members.items())[: n or len(fam.members)]
    return fam.v2_rules, [(k, w, d, r / fam.base_resolution, p) for k, (w, d, r, p) in members]


def _scaled(base: Architecture, step: Step, rules: dict[str, Any]) -> Architecture:
    _, width, depth, res_mult, dropout = step
    common = dict(width=width, depth=depth, resolution_mult=res_mult, dropout=dropout)
    if rules["v2_rules"]:
        return scale_v2(base, **common, depth_rounding=rules["depth_rounding"], late_stages=rules["late_stages"])
    return scale(base, **common, depth_rounding=rules["depth_rounding"])


def _row(phi: int, step: Step, arch: Architecture, base_macs: int, num_classes: int, rules) -> dict[str, Any]:
    member, width, depth, res_mult, _ = step
    macs = count_macs(arch, num_classes=num_classes)
    return {
        "phi": phi,
        "member": member,
        "depth_mult": depth,
        "width_mult": width,
        "resolution": arch.resolution,
        "layers": arch.num_blocks,
        "params": count_params(arch, num_classes),
        "num_classes": num_classes,
        "macs": macs,
        "macs_ratio": macs / base_macs,
        # The FLOPs law of V1 section 3.3: depth counts once, width and resolution twice.
        "target_macs_ratio": depth * width**2 * res_mult**2,
        "rules": "v2" if rules["v2_rules"] else "v1",
        "depth_rounding": rules["depth_rounding"],
        "arch": arch.to_string(),
        "architecture": arch,
    }
