"""The compound-scaled family (EfficientNet V1 section 3.3, step 2; V2 section 4.3): ``nas scale``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nas.errors import NasError
from nas.scaling.grid import DEPTH_ROUNDING, Candidate, check_phi, scale_candidate
from search_spaces import Architecture, count_macs, count_params, scale_v2

def parse_coefficients(spec: str) -> tuple[Candidate, str | None]:
    """``A,B,G``, a ``coefficients.json`` (from ``nas grid-scale``, or ``{"alpha":..,"beta":..,"gamma":..}``
    or ``[a, b, g]``), or a grid-scale run directory. Returns the coefficients and, when the file
    names one, the base architecture string it was searched on."""
    from nas.files import read_json

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
            raise NasError(f"coefficients file {str(path)!r} holds {type(data).__name__}, "
                           "expected an object with alpha, beta, gamma")
        where = f"in {str(path)!r}"
    else:
        parts = [p.strip() for p in text.split(",")]
        values = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise NasError(f"--coefficients {text!r}: {p!r} is not a number "
                               "(expected A,B,G, e.g. 1.2,1.1,1.15, or a coefficients.json)") from None
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


def scale_family(base: Architecture, coeffs: Candidate, n: int, *, v2_rules: bool = False,
                 num_classes: int = 1000, depth_rounding: str = DEPTH_ROUNDING) -> list[dict[str, Any]]:
    """The base (phi = 0) and its compound-scaled models for phi = 1..n (V1 section 3.3, step 2).

    ``v2_rules`` applies EfficientNetV2's scaling rules instead (V2 section 4.3, ``scale_v2``):
    inference size capped at 480 and the added layers given to the last stages.
    """
    n = check_phi(n, integer=True)
    base_macs = count_macs(base, num_classes=num_classes)
    rows = []
    for phi in range(0, n + 1):
        if v2_rules:
            arch = scale_v2(base, width=coeffs.beta ** phi, depth=coeffs.alpha ** phi,
                            resolution_mult=coeffs.gamma ** phi)
        else:
            arch = scale_candidate(base, coeffs, phi, depth_rounding)
        macs = count_macs(arch, num_classes=num_classes)
        rows.append({
            "phi": phi,
            "depth_mult": coeffs.alpha ** phi,
            "width_mult": coeffs.beta ** phi,
            "resolution": arch.resolution,
            "layers": arch.num_blocks,
            "params": count_params(arch, num_classes),
            "macs": macs,
            "macs_ratio": macs / base_macs,
            "target_macs_ratio": coeffs.product ** phi,
            "arch": arch.to_string(),
            "architecture": arch,
        })
    return rows
