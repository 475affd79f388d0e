"""Writing and reading the files a run leaves: one atomic write path for all of them.

Every file ``nas`` writes (results, plots, configurations, checkpoints, step-time tables) goes through
:func:`atomic_write`: a temporary file in the same folder, flushed, then ``os.replace``d over the
target, so a kill at any moment leaves either the old file or the new one, never half of one. Files
that are the only copy of something (checkpoints, configurations, tables) are also fsynced before the
rename (``durable``), so even a power cut leaves one or the other; result files, which the driver
rebuilds from the run's storage, skip that (an fsync costs tens of milliseconds on a busy disk).
Files get the permissions a plain ``open()`` would give them (0666 minus the umask), not the 0600 of a
temporary file. :func:`append_line` appends one line with a single ``write`` system call, which a kill
cannot cut in two.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from nas.errors import NasError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = False, durable: bool = True) -> None:
    """Write through ``write(file)`` into a temporary file in the same folder, then replace ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write(path, lambda f: f.write(text), durable=durable)


def to_json(data: Any) -> str:
    """Strict JSON (``NaN`` and infinities become null: other JSON readers refuse them)."""
    return json.dumps(_strict(data), indent=2, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    atomic_write_text(path, to_json(data), durable=durable)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (a newline is added) in one ``write`` call on an ``O_APPEND`` descriptor:
    concurrent appenders never interleave inside a line, and a kill leaves whole lines only."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, what: str | None = None) -> Iterator[None]:
    """An ``flock`` on ``path`` (created) for the block: exclusive, or shared with other shared holders.
    The kernel drops it when its process dies, so a killed holder never leaves it taken.

    The holder writes its process id, host and time into the file (:func:`write_holder`). A process
    that finds the lock taken says so on stderr before it waits, once per holder: ``nas: waiting for
    WHAT: held by pid 123 on HOST since 2026-12-02 10:00:00`` (``what`` names the lock as a user knows
    it, e.g. "the results of runs/x"; by default the lock file)."""
    path = Path(path)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                _announce_wait(path, what, read_holder(fd))
                fcntl.flock(fd, mode)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed or replaced while we waited: lock the one that is there now
    try:
        write_holder(fd)
        yield
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def write_holder(fd: int, **extra: Any) -> None:
    """Record this process as the holder of the lock open on ``fd``: pid, host, since when (and ``extra``).
    Shared holders may write at once; a reader takes the first whole record (:func:`read_holder`)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def read_holder(fd: int) -> dict[str, Any] | None:
    """The holder record in the lock file open on ``fd``, or None (never written, or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        record, _ = json.JSONDecoder().raw_decode(text.strip())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None) -> str:
    """``pid 123 on HOST since 2026-12-02 10:00:00``, or "another process" when nothing was recorded."""
    if not record:
        return "another process"
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('since')}"


_ANNOUNCED: set[tuple[str, Any]] = set()


def _announce_wait(path: Path, what: str | None, record: dict[str, Any] | None) -> None:
    key = (str(path), record.get("pid") if record else None)
    if key in _ANNOUNCED:  # a lock taken in turns (a device shared by workers) is announced once per holder
        return
    _ANNOUNCED.add(key)
    print(f"nas: waiting for {what or f'the lock {str(path)!r}'}: held by {describe_holder(record)}", file=sys.stderr)


def _strict(o: Any) -> Any:
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        return _strict(o.item())
    return o


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path, what: str) -> Any:
    """A JSON file's data, or one NasError line naming the file and what is wrong with it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NasError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise NasError(f"{what} {str(path)!r} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NasError(f"{what} {str(path)!r} is unreadable or corrupt: {e}") from None
