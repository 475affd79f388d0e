"""The step-time table: one JSON file per device fingerprint, target setting and space.

Where: ``table_dir`` when given, else ``$NAS_CACHE_DIR/steptime``, else
``$XDG_CACHE_HOME/nas/steptime``, else ``~/.cache/nas/steptime``. The file name carries the space,
device, setting and a hash of the whole fingerprint (:func:`fingerprint`: the runtime's device name,
torch version, dtype, memory format and CPU threads, plus the target's image and batch size and the
space), so another device or setting never finds this table; the fingerprint is stored in the file
and compared on every load too, so a file copied or renamed onto the wrong name is refused.

Safety: files are written atomically (:func:`nas.core.files.atomic_write_json`), so a reader never sees
half a table, and any process that adds to a table does so under an exclusive ``fcntl.flock`` on a
lock file beside it, re-reading the file first: two processes building or extending the same table
serialise (which also keeps their timings from disturbing each other) and neither loses the
other's pieces. A file that is not valid JSON, not a step-time table, made for another fingerprint
or holding an impossible value raises one :class:`NasError` line naming the file; it is replaced
only when the caller asks (``rebuild=True``, ``nas calibrate --rebuild``).

Format (``nas.steptime/1``)::

    {"format": "nas.steptime/1", "fingerprint": {...},
     "pieces": {KEY: {"ms": 1.9, "iqr_ms": 0.05, "params": 10368, "tensors": 3}, ...},
     "correction": {"a": 1.02, "b": 0.0, "d": 0.0, "c": 4.1, "form": "a*raw + c", "loo_mape": 0.04,
                    "points": [{"arch": ..., "raw_ms": ..., "blocks": ..., "params": ..., "measured_ms": ...}, ...]},
     "prefilled": true, "build_s": 84.2, "created": "2025-..."}
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

from nas.errors import NasError

FORMAT = "nas.steptime/1"
REBUILD_HINT = "rebuild it with `nas calibrate --rebuild` (StepTimeModel.load_or_build(..., rebuild=True)) or delete it"


def default_table_dir(table_dir: str | os.PathLike | None = None) -> Path:
    if table_dir is not None:
        return Path(table_dir).expanduser()
    if os.environ.get("NAS_CACHE_DIR"):
        return Path(os.environ["NAS_CACHE_DIR"]).expanduser() / "steptime"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nas" / "steptime"


def fingerprint(runtime, target, space: str, clock: str = "wall") -> dict[str, Any]:
    """Everything a table's figures depend on: no other table answers for another value of any."""
    return {**runtime.fingerprint(), **target.to_dict(), "space": space, "clock": clock}


def table_path(table_dir: str | os.PathLike | None, fp: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{fp['space']}-{fp['device']}-{fp['image_size']}px-b{fp['batch_size']}-{digest}.json"
    return default_table_dir(table_dir) / name


@dataclass
class Table:
    """A table's content; ``pieces`` maps a piece key (:mod:`nas.steptime.pieces`) to its timing."""

    path: Path
    fingerprint: dict[str, Any]
    pieces: dict[str, dict[str, Any]] = field(default_factory=dict)
    correction: dict[str, Any] | None = None
    prefilled: bool = False
    build_s: float = 0.0
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "pieces": self.pieces,
            "correction": self.correction,
            "prefilled": self.prefilled,
            "build_s": self.build_s,
            "created": self.created,
        }

    def save(self) -> None:
        from nas.core.files import atomic_write_json

        atomic_write_json(self.path, self.to_dict())

    @property
    def complete(self) -> bool:
        """Has its correction (the build's last step): it can predict."""
        return self.correction is not None


def _bad(path: Path, what: str) -> NasError:
    return NasError(f"step-time table {str(path)!r} {what}; {REBUILD_HINT}")


def _number(path: Path, where: str, v: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or (positive and v <= 0)
        or (nonneg and v < 0)
    ):
        raise _bad(path, f"has an impossible value at {where}: {v!r}")
    return float(v)


def _count(path: Path, where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(path, f"has an impossible value at {where}: {v!r}")
    return v


def load(path: Path, expected: dict[str, Any]) -> Table | None:
    """The table at ``path`` (None when there is none), after checking that it is a well-formed
    step-time table made for the fingerprint ``expected``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"is unreadable ({e.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"is corrupt or truncated (not valid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise _bad(path, f"is not a step-time table (format {fmt!r}, expected {FORMAT!r})")
    known = {"format", "fingerprint", "pieces", "correction", "prefilled", "build_s", "created"}
    if set(data) != known:
        raise _bad(path, f"has fields {sorted(set(data) ^ known)} it should not have or lacks")
    fp = data["fingerprint"]
    if not isinstance(fp, dict):
        raise _bad(path, "has no fingerprint")
    if fp != expected:
        k = next(k for k in sorted(set(fp) | set(expected), key=str) if fp.get(k) != expected.get(k))
        raise NasError(
            f"step-time table {str(path)!r} was made for another setting ({k}: {fp.get(k)!r} there, "
            f"{expected.get(k)!r} here) and does not apply; {REBUILD_HINT}"
        )
    pieces = data["pieces"]
    if not isinstance(pieces, dict):
        raise _bad(path, "has no piece list")
    for key, p in pieces.items():
        if not isinstance(p, dict) or set(p) != {"ms", "iqr_ms", "params", "tensors"}:
            raise _bad(path, f"has a malformed piece {key!r}")
        _number(path, f"{key} ms", p["ms"], positive=True)
        _number(path, f"{key} iqr_ms", p["iqr_ms"], nonneg=True)
        _count(path, f"{key} params", p["params"])
        _count(path, f"{key} tensors", p["tensors"])
    corr = data["correction"]
    if corr is not None:
        if not isinstance(corr, dict) or not {"a", "b", "c", "d"} <= set(corr):
            raise _bad(path, "has a malformed correction")
        _number(path, "correction a", corr["a"], positive=True)
        for k in ("b", "c", "d"):
            _number(path, f"correction {k}", corr[k])
    if not isinstance(data["prefilled"], bool):
        raise _bad(path, f"has an impossible value at prefilled: {data['prefilled']!r}")
    return Table(
        path=path,
        fingerprint=fp,
        pieces=pieces,
        correction=corr,
        prefilled=data["prefilled"],
        build_s=_number(path, "build_s", data["build_s"], nonneg=True),
        created=str(data["created"]),
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the table at ``path`` (:func:`nas.core.files.file_lock` on ``path + '.lock'``),
    held by whoever builds or extends it; readers need none (writes are atomic)."""
    from nas.core.files import file_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        yield
