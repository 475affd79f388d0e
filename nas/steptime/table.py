"""The step-time table: one self-describing JSON file per target device and setting.

A table is what a *target* is: the device it was timed on (:func:`fingerprint`: device type and
name, torch version, dtype, memory format, CPU threads, allocator, clock), the setting it stands for
(:func:`setting`: space, cost, image size, batch size, class count, compiled or not), the timed
pieces, the correction fitted on calibration networks, and the build's own check. ``nas calibrate
--out FILE`` writes one anywhere; ``nas search --target FILE`` uses it for S on every process,
whatever device runs the trials. Its identity (:meth:`Table.identity`) is a hash of its
calibration (fingerprint, setting, correction, creation time): a rebuilt table has another one,
while pieces timed later on the same target extend a table without changing it.

Where tables live when no file is named (a run on this machine's own device): ``table_dir`` when
given, else ``$NAS_CACHE_DIR/steptime``, else ``$XDG_CACHE_HOME/nas/steptime``, else
``~/.cache/nas/steptime``, named by space, cost, device, setting and a hash of fingerprint and
setting (:func:`table_path`), which are compared again on every load.

Safety: files are written atomically (:func:`nas.core.files.atomic_write_json`), so a reader never
sees half a table, and any process that adds to a table does so under an exclusive lock on a lock
file beside it, re-reading the file first. A file that is not valid JSON, not a step-time table, or
holds an impossible value raises one :class:`NasError` line naming the file.

Format (``nas.steptime/3``)::

    {"format": "nas.steptime/3",
     "fingerprint": {"device": "cpu", "device_name": ..., "torch": ..., "dtype": "float32",
                     "memory_format": "channels_last", "threads": 2, "allocator": "glibc-reuse",
                     "clock": "wall"},
     "setting": {"space": "trainaware", "cost": "step", "image_size": 64, "batch_size": 16,
                 "num_classes": 10, "compiled": false},
     "pieces": {KEY: {"ms": 1.9, "iqr_ms": 0.05, "params": 10368, "tensors": 3, "act_mb": 1.6,
                      "passes": 2}, ...},
     "correction": {"a": 1.0, "b": 0.0, "d": 0.0, "e": 0.13, "c": 0.0, "form": "raw + e*act",
                    "loo_mape": 0.04, "points": [{"arch": ..., "raw_ms": ..., "blocks": ..., "params": ...,
                                                  "act_mb": ..., "measured_ms": ...}]},
     "check": null or {"spearman": ..., "kendall_tau": ..., "mape": ..., "within_10pct": ..., "n": ..., "rows": [...]},
     "prefilled": true, "build_s": 54.2, "created": "2026-..."}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.core.files import atomic_write_json, file_lock
from nas.errors import NasError

FORMAT = "nas.steptime/3"
FIELDS = {"format", "fingerprint", "setting", "pieces", "correction", "check", "prefilled", "build_s", "created"}
PIECE_FIELDS = {"ms", "iqr_ms", "params", "tensors", "act_mb", "passes"}
REBUILD_HINT = "rebuild it with `nas calibrate --rebuild` or delete it"


def default_table_dir(table_dir: str | os.PathLike | None = None) -> Path:
    if table_dir is not None:
        path = Path(table_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise NasError(f"--table-dir {str(table_dir)!r} is a file, not a directory")
        return path
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"]).expanduser() / "steptime"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nas" / "steptime"


def fingerprint(runtime, clock: str = "wall") -> dict[str, Any]:
    """The target device: everything a timing depends on besides the network and its input."""
    return {**runtime.fingerprint(), "clock": clock}


def setting(space: str, target, num_classes: int) -> dict[str, Any]:
    """What the table's figures stand for: space, cost, image size, batch, classes. Tables are timed
    from eager steps (``compiled`` false): a compiled step's speed-up is the same factor for every
    candidate only roughly, and compiling each piece would take minutes."""
    return {"space": space, **target.to_dict(), "num_classes": num_classes, "compiled": False}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def table_path(table_dir: str | os.PathLike | None, fp: dict[str, Any], st: dict[str, Any]) -> Path:
    name = (
        f"{st['space']}-{st['cost']}-{fp['device']}-{st['image_size']}px-b{st['batch_size']}-c{st['num_classes']}-"
        f"{_digest([fp, st])}.json"
    )
    return default_table_dir(table_dir) / name


@dataclass
class Table:
    """A table's content; ``pieces`` maps a piece key (:mod:`nas.steptime.pieces`) to its timing."""

    path: Path
    fingerprint: dict[str, Any]
    setting: dict[str, Any]
    pieces: dict[str, dict[str, Any]] = field(default_factory=dict)
    correction: dict[str, Any] | None = None
    check: dict[str, Any] | None = None
    prefilled: bool = False
    build_s: float = 0.0
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "setting": self.setting,
            "pieces": self.pieces,
            "correction": self.correction,
            "check": self.check,
            "prefilled": self.prefilled,
            "build_s": self.build_s,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> Table:
        validate(data, path)
        return cls(
            path=Path(path),
            fingerprint=data["fingerprint"],
            setting=data["setting"],
            pieces=data["pieces"],
            correction=data["correction"],
            check=data["check"],
            prefilled=data["prefilled"],
            build_s=float(data["build_s"]),
            created=str(data["created"]),
        )

    def save(self, path: Path | None = None, *, durable: bool = True) -> None:
        atomic_write_json(path or self.path, self.to_dict(), durable=durable)

    @property
    def complete(self) -> bool:
        """Has its correction (the build's last step): it can predict."""
        return self.correction is not None

    @property
    def identity(self) -> str:
        """A hash of the calibration (see the module docstring)."""
        return _digest([FORMAT, self.fingerprint, self.setting, self.correction, self.created])

    def describe(self) -> str:
        fp, st = self.fingerprint, self.setting
        threads = f", {fp['threads']} thread{'s' if fp['threads'] != 1 else ''}" if fp.get("threads") else ""
        return (
            f"{st['space']} {st['cost']} table {self.identity} for {fp['device']} ({fp['device_name']}{threads}), "
            f"{st['image_size']} px, batch {st['batch_size']}, {st['num_classes']} classes"
        )


def _bad(path: Path, what: str) -> NasError:
    return NasError(f"step-time table {str(path)!r} {what}; {REBUILD_HINT}")


def _number(path: Path, where: str, v: Any, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0) or v < 0:
        raise _bad(path, f"has an impossible value at {where}: {v!r}")
    return float(v)


def _count(path: Path, where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(path, f"has an impossible value at {where}: {v!r}")
    return v


def _validate_pieces(pieces: Any, path: Path) -> None:
    if not isinstance(pieces, dict):
        raise _bad(path, "has no piece list")
    for key, p in pieces.items():
        if not isinstance(p, dict) or set(p) != PIECE_FIELDS:
            raise _bad(path, f"has a malformed piece {key!r}")
        _number(path, f"{key} ms", p["ms"], positive=True)
        _number(path, f"{key} iqr_ms", p["iqr_ms"])
        _number(path, f"{key} act_mb", p["act_mb"])
        for k in ("params", "tensors", "passes"):
            _count(path, f"{key} {k}", p[k])


def _validate_correction(corr: Any, path: Path) -> None:
    if corr is None:
        return
    if not isinstance(corr, dict) or not {"a", "b", "c", "d", "e"} <= set(corr):
        raise _bad(path, "has a malformed correction")
    _number(path, "correction a", corr["a"], positive=True)
    for k in ("b", "c", "d", "e"):
        v = corr[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(path, f"has an impossible value at correction {k}: {v!r}")


def validate(data: Any, path: Path) -> None:
    """One NasError line naming the file when ``data`` is not a well-formed step-time table."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _bad(path, f"is not a step-time table (format {fmt!r}, expected {FORMAT!r})")
    if set(data) != FIELDS:
        raise _bad(path, f"has fields {sorted(set(data) ^ FIELDS)} it should not have or lacks")
    for part, keys in (
        ("fingerprint", {"device", "device_name", "torch", "clock"}),
        ("setting", {"space", "cost", "image_size", "batch_size", "num_classes"}),
    ):
        if not isinstance(data[part], dict) or not keys <= set(data[part]):
            raise _bad(path, f"has no complete {part}")
    _validate_pieces(data["pieces"], path)
    _validate_correction(data["correction"], path)
    if not isinstance(data["prefilled"], bool):
        raise _bad(path, f"has an impossible value at prefilled: {data['prefilled']!r}")
    _number(path, "build_s", data["build_s"])


def read(path: Path) -> Table | None:
    """The table at ``path`` (None when there is none), checked to be a well-formed table."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise NasError(f"step-time table {str(path)!r} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"is unreadable ({e.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"is corrupt or truncated (not valid JSON: {e})") from None
    return Table.from_dict(data, path)


def first_difference(found: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """``key: value there, value here`` for the first key where two dicts differ, or None."""
    for k in sorted(set(found) | set(expected), key=str):
        if found.get(k) != expected.get(k):
            return f"{k}: {found.get(k)!r} there, {expected.get(k)!r} here"
    return None


def load(path: Path, fp: dict[str, Any], st: dict[str, Any]) -> Table | None:
    """The table at ``path`` (None when there is none), refused unless it was made for this
    fingerprint and setting (a file copied or renamed onto the wrong name)."""
    t = read(path)
    if t is None:
        return None
    diff = first_difference(t.fingerprint, fp) or first_difference(t.setting, st)
    if diff:
        raise NasError(
            f"step-time table {str(path)!r} was made for another device or setting ({diff}) and does "
            f"not apply; {REBUILD_HINT}"
        )
    return t


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the table at ``path`` (on ``path + '.lock'``), held by whoever builds or
    extends it; readers need none (writes are atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock"), what=f"the step-time table {path}"):
        yield
