"""A run's target, prepared once before its first trial and handed to every process that runs one.

What S stands for is decided once per run (:mod:`nas.trial.target` prepares it): the method that
gives a candidate's cost, the target device (its fingerprint), the setting (space, cost, image size,
batch, classes), the reference's cost and, for the ``table`` method, the step-time table itself.
The driver writes it to ``RUN_DIR/target.json`` (the table beside it as ``RUN_DIR/steptime.json``,
which pieces timed later on the target extend); worker processes read it from there and Ray trials
get it through Ray's object store. Every process scores every candidate against the same target and
the same reference, whatever device it runs on.

Its identity (:attr:`PreparedTarget.identity`) is the table's identity for the ``table`` method
(:attr:`nas.steptime.table.Table.identity`), else a hash of the fingerprint, setting and reference:
a run stores it, and a resume with another target is refused naming the difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nas.core.files import atomic_write_json, read_json
from nas.errors import NasError
from nas.steptime import table as tables
from nas.steptime.model import StepTimeModel
from search_spaces import Architecture

FORMAT = "nas.target/1"
FILE = "target.json"
TABLE_FILE = "steptime.json"


@dataclass(frozen=True)
class PreparedTarget:
    method: str
    cost: str
    fingerprint: dict[str, Any]
    setting: dict[str, Any]
    reference: dict[str, Any]  # {"arch", "ms", "iqr_ms", "noisy", "params"}
    source: str  # where the target came from: "this machine", "table FILE", "a Ray task on HOST"
    table: dict[str, Any] | None = field(default=None, repr=False)
    table_path: str | None = None  # the run's copy of the table, extended by pieces timed later

    @property
    def identity(self) -> str:
        if self.table is not None:
            return tables.Table.from_dict(self.table, Path(self.table_path or "table")).identity
        data = [self.method, self.fingerprint, self.setting, self.reference.get("arch"), self.reference.get("ms")]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def reference_ms(self) -> float:
        return float(self.reference["ms"])

    def describe(self) -> str:
        """The device in words: ``cpu (AMD EPYC (2 CPUs), 2 threads)``."""
        fp = self.fingerprint
        threads = f", {fp['threads']} thread{'s' if fp['threads'] != 1 else ''}" if fp.get("threads") else ""
        return f"{fp['device']} ({fp['device_name']}{threads})"

    def summary(self) -> dict[str, Any]:
        """What rows, best.json and the study record of the target (no pieces)."""
        return {
            "method": self.method,
            "cost": self.cost,
            "identity": self.identity,
            "source": self.source,
            "device": self.describe(),
            **{k: self.setting.get(k) for k in ("image_size", "batch_size")},
            **{k: self.fingerprint.get(k) for k in ("dtype", "memory_format")},  # how the target's steps run
            "reference_ms": self.reference_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("table")
        return {"format": FORMAT, **d, "identity": self.identity}

    @classmethod
    def from_dict(cls, data: Any, table: dict[str, Any] | None = None) -> PreparedTarget:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise NasError(f"not a prepared target (format {FORMAT!r}): {str(data)[:80]!r}")
        keys = {"method", "cost", "fingerprint", "setting", "reference", "source", "table_path"}
        missing = keys - set(data)
        if missing:
            raise NasError(f"a prepared target lacks {sorted(missing)}")
        return cls(**{k: data[k] for k in keys}, table=table)

    def _reference_holds(self) -> bool:
        """A table's reference is its prediction (a file edited by hand is not the run's target)."""
        if self.table is None:
            return True
        model = StepTimeModel(tables.Table.from_dict(self.table, Path(self.table_path or TABLE_FILE)))
        predicted = model.predict(Architecture.from_string(self.reference["arch"]))
        return abs(predicted - self.reference_ms) <= 1e-9 * max(1.0, predicted)

    # -- the run directory ---------------------------------------------------------------------
    def save(self, run_dir: Path) -> PreparedTarget:
        """Write ``target.json`` (and the table as ``steptime.json``) into ``run_dir``; returns the
        target as it now lives there."""
        run_dir = Path(run_dir)
        out = self
        if self.table is not None:
            path = run_dir / TABLE_FILE
            atomic_write_json(path, self.table)
            out = PreparedTarget(**{**asdict(self), "table": self.table, "table_path": str(path.resolve())})
        atomic_write_json(run_dir / FILE, out.to_dict())
        return out

    @classmethod
    def load(cls, run_dir: Path) -> PreparedTarget | None:
        """The target a run prepared (None when it has none yet), with its table as it is now."""
        path = Path(run_dir) / FILE
        if not path.exists():
            return None
        data = read_json(path, "run target")
        table = None
        if isinstance(data, dict) and data.get("table_path"):
            t = tables.read(Path(run_dir) / TABLE_FILE)
            if t is None:
                raise NasError(
                    f"{str(path)!r} names a step-time table, but {TABLE_FILE} is missing beside it; rerun "
                    "with --restart to prepare the target again"
                )
            table = t.to_dict()
        target = cls.from_dict(data, table)
        if table is not None:  # where the run directory is now (it may have moved since)
            target = replace(target, table_path=str((Path(run_dir) / TABLE_FILE).resolve()))
        if data.get("identity") != target.identity or not target._reference_holds():
            raise NasError(
                f"{str(path)!r} does not match its step-time table (identity {data.get('identity')!r} "
                f"recorded, {target.identity!r} found); rerun with --restart to prepare it again"
            )
        return target
