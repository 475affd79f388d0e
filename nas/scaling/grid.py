"""The compound-scaling grid (EfficientNet V1 section 3.3, step 1): its maths and its plan.

EfficientNet scales depth by ``alpha**phi``, width by ``beta**phi`` and resolution by ``gamma**phi``
under ``alpha * beta**2 * gamma**2 ~= 2`` (all >= 1), so that FLOPs grow by about ``2**phi``.
Step 1 of the paper fixes ``phi = 1`` and grid-searches alpha, beta, gamma on the base network:

* :class:`GridSpec`, :func:`enumerate_candidates`, :func:`select_spread`: the grid, the constraint
  and the evenly spread subset that is affordable to train;
* :func:`scale_candidate`, :func:`plan_grid`: the scaled networks, every candidate checked before
  anything runs. Evaluating them is a problem like any search (:mod:`nas.study.grid`), run by
  any backend.

With ``phi != 1`` the grid still constrains the per-unit product ``alpha * beta**2 * gamma**2`` to 2
(the paper's definition) and every candidate is scaled by ``alpha**phi``, ``beta**phi``,
``gamma**phi``, so its FLOPs target is ``2**phi``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import NasError, check_choice, check_int, check_number
from nas.trial.settings import proxy_arch
from search_spaces import Architecture, compound, preset_names

TARGET = 2.0  # the paper's FLOPs factor per unit of phi
OBJECTIVES = ("accuracy", "reward")
STUDY_NAME = "nas-grid"
MAX_AXIS_VALUES = 201  # per coefficient (step 0.005 on [1, 2]); the grid is this cubed, kept in memory
# Floating-point slack for the tolerance test, so that a grid point exactly on the boundary
# (e.g. product 1.9 with tolerance 0.1) counts whatever the rounding of lo + i*step.
_EPS = 1e-9


def check_phi(value: Any, *, integer: bool = False, flag: str = "--phi") -> float:
    """phi must be positive: phi = 0 is the base itself, a negative phi would shrink it."""
    v = check_number(flag, value)
    if v <= 0 or (integer and v != int(v)):
        kind = "a positive integer" if integer else "a positive number"
        raise NasError(f"{flag} must be {kind}, got {v:g}")
    return int(v) if integer else v


# -- step 1: the grid -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """The coefficient grid: each of alpha, beta, gamma takes ``lo, lo+step, ... <= hi``; a point is a
    candidate when ``|alpha * beta**2 * gamma**2 - 2| <= tolerance``."""

    phi: float = 1.0
    step: float = 0.05
    lo: float = 1.0
    hi: float = 2.0
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        check_phi(self.phi)
        step, lo, hi = check_number("--step", self.step), check_number("--min", self.lo), check_number("--max", self.hi)
        tol = check_number("--tolerance", self.tolerance)
        if step <= 0:
            raise NasError(f"--step must be positive, got {self.step!r}")
        if lo < 1:
            # Coefficients below 1 would shrink a dimension (EfficientNet section 3.3: all >= 1).
            raise NasError(f"--min must be >= 1 (alpha, beta, gamma shrink nothing), got {self.lo!r}")
        if hi < lo:
            raise NasError(f"--max ({self.hi!r}) must be >= --min ({self.lo!r})")
        if tol < 0:
            raise NasError(f"--tolerance must be >= 0, got {self.tolerance!r}")
        n = self.axis_count()
        if n > MAX_AXIS_VALUES:
            raise NasError(
                f"the grid has {n} values per coefficient (--min {lo:g} --max {hi:g} --step {step:g}); "
                f"at most {MAX_AXIS_VALUES} are allowed, use a larger --step"
            )

    def axis_count(self) -> int:
        return int(math.floor((self.hi - self.lo) / self.step + _EPS)) + 1

    def values(self) -> list[float]:
        # Rounded so that 1 + 3*0.05 is 1.15, not 1.1500000000000001: values are keys and labels.
        return [round(self.lo + i * self.step, 10) for i in range(self.axis_count())]

    @property
    def grid_points(self) -> int:
        return self.axis_count() ** 3

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target": TARGET}


@dataclass(frozen=True, order=True)
class Candidate:
    """One (alpha, beta, gamma): depth, width and resolution coefficients per unit of phi."""

    alpha: float
    beta: float
    gamma: float

    @property
    def product(self) -> float:
        """FLOPs factor per unit of phi: depth counts once, width and resolution twice (section 3.3)."""
        return self.alpha * self.beta**2 * self.gamma**2

    @property
    def key(self) -> str:
        return f"a{self.alpha!r}_b{self.beta!r}_g{self.gamma!r}"

    @property
    def is_base(self) -> bool:
        return self.alpha == self.beta == self.gamma == 1.0

    def label(self) -> str:
        return "base" if self.is_base else f"{self.alpha:g},{self.beta:g},{self.gamma:g}"


BASE = Candidate(1.0, 1.0, 1.0)


def enumerate_candidates(spec: GridSpec) -> list[Candidate]:
    """Every grid point within tolerance of the constraint, in lexicographic (alpha, beta, gamma) order."""
    v = np.asarray(spec.values())
    b, g = np.meshgrid(v, v, indexing="ij")
    bg = b**2 * g**2
    out: list[Candidate] = []
    for a in v:  # one alpha at a time: memory axis**2, not axis**3
        ok = np.abs(a * bg - TARGET) <= spec.tolerance + _EPS
        for i, j in zip(*np.nonzero(ok)):
            out.append(Candidate(float(a), float(v[i]), float(v[j])))
    return out


def select_spread(candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """An evenly spread, deterministic subset of ``n`` candidates (greedy farthest-point sampling).

    The first pick is the candidate nearest the centroid of all of them (a balanced split of the
    FLOPs budget); each next pick is the one farthest (Euclidean, in (alpha, beta, gamma)) from those
    already picked, ties to the earlier one in lexicographic order. So the subset covers the
    depth-heavy, width-heavy and resolution-heavy corners first, and a larger ``n`` extends a smaller
    one (its first picks are the same), which lets a run grow with ``--max-candidates``.
    """
    check_int("--max-candidates", n, 1, 100_000)
    cands = sorted(candidates)
    if len(cands) <= n:
        return cands
    pts = np.array([(c.alpha, c.beta, c.gamma) for c in cands])
    # Distances rounded so that ties (the grid is symmetric) break by order, not by the last bit.
    first = int(np.argmin(np.round(np.linalg.norm(pts - pts.mean(axis=0), axis=1), 9)))
    picked = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    while len(picked) < n:
        nxt = int(np.argmax(np.round(dist, 9)))
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return [cands[i] for i in picked]


# Layers per stage are rounded to the nearest count, not ceil'ed as for the published B1..B7: the
# constraint alpha * beta**2 * gamma**2 ~= 2 exists to give every candidate the same FLOPs budget,
# and ceil inflates depth-heavy candidates most (B0 at alpha 1.2 gets 43% more layers: MACs 34% over
# target at phi 1, against 7% with nearest rounding), which would bias the comparison.
DEPTH_ROUNDING = "round"


def scale_candidate(
    base: Architecture, cand: Candidate, phi: float, depth_rounding: str = DEPTH_ROUNDING
) -> Architecture:
    """The base scaled by one candidate (``search_spaces.compound``): depth
    ``round(repeats * alpha**phi)`` (see :data:`DEPTH_ROUNDING`), width ``round_filters(c, beta**phi)``
    with V1's rule, resolution ``round(base.resolution * gamma**phi)``."""
    return compound(base, phi, cand.alpha, cand.beta, cand.gamma, depth_rounding=depth_rounding)


@dataclass(frozen=True)
class GridOptions:
    """Which candidates (``spec``, ``max_candidates``), how the winner is chosen, stored where."""

    spec: GridSpec = GridSpec()
    max_candidates: int = 8
    objective: str = "accuracy"
    storage: str | None = None
    study_name: str = STUDY_NAME
    out: str = "runs/grid"

    def __post_init__(self) -> None:
        check_int("--max-candidates", self.max_candidates, 1, 100_000)
        check_choice("--objective", self.objective, OBJECTIVES)


@dataclass(frozen=True)
class GridPlan:
    """What a grid-scale command will evaluate, settled before anything is stored or trained."""

    phi: float
    n_feasible: int
    candidates: tuple[Candidate, ...]  # the base first, then the selected ones in selection order

    @property
    def selected(self) -> tuple[Candidate, ...]:
        return self.candidates[1:]


def plan_grid(base: Architecture, settings, opts: GridOptions) -> GridPlan:
    """Enumerate, select and check every candidate (scaled architecture and proxy image size), so
    that bad input fails here, before any evaluation and before the run directory is touched."""
    spec = opts.spec
    feasible = enumerate_candidates(spec)
    if not feasible:
        v = spec.values()
        lo_p, hi_p = Candidate(v[0], v[0], v[0]).product, Candidate(v[-1], v[-1], v[-1]).product
        raise NasError(
            f"no (alpha, beta, gamma) on the grid [{spec.lo:g}, {spec.hi:g}] step {spec.step:g} "
            f"satisfies |alpha*beta**2*gamma**2 - 2| <= {spec.tolerance:g} (products range "
            f"{lo_p:.3f}..{hi_p:.3f}); widen --min/--max or --tolerance"
        )
    chosen = select_spread(feasible, opts.max_candidates)
    cands = (BASE, *chosen)
    for c in cands:
        try:
            scale_candidate(base, c, spec.phi)
            settings.proxy.at_image_size(proxy_image_size(settings, c, spec.phi))
        except NasError as e:
            raise NasError(f"--phi {spec.phi:g}: candidate {c.label()} at phi {spec.phi:g}: {e}") from None
    return GridPlan(phi=spec.phi, n_feasible=len(feasible), candidates=cands)


def proxy_image_size(settings, cand: Candidate, phi: float) -> int:
    """The proxy trains at the settings' image size; a candidate's resolution coefficient must be
    visible to its evaluation, so its proxy image grows with ``gamma**phi`` like the real one."""
    return int(round(settings.proxy.image_size * cand.gamma**phi))


def proxy_duplicates(base: Architecture, settings, plan: GridPlan) -> list[list[Candidate]]:
    """Groups of candidates that the proxy's width / depth shrinking makes identical: rounding to
    multiples of 8 at a small width multiplier can erase a beta of 1.1, and ceil at a small depth
    multiplier an alpha of 1.2, so such candidates differ only by measurement noise."""
    groups: dict[tuple[str, int], list[Candidate]] = {}
    for c in plan.candidates:
        size = proxy_image_size(settings, c, plan.phi)
        small = proxy_arch(scale_candidate(base, c, plan.phi), settings.proxy.at_image_size(size))
        groups.setdefault((small.to_string(), size), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def default_out(spec: str, base: Architecture, phi: float) -> str:
    """runs/grid-<preset, run dir or file name; else a hash of the architecture>-phi<phi>."""
    return f"runs/grid-{base_slug(spec, base)}-phi{phi:g}"


def base_slug(spec: str, base: Architecture) -> str:
    s = str(spec).strip()
    if s.lower() in preset_names():
        return s.lower()
    p = Path(s)
    if p.is_dir():
        return p.resolve().name
    if p.is_file():
        return p.stem
    return "arch-" + hashlib.sha1(base.to_string().encode()).hexdigest()[:8]
