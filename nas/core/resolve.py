"""Turn what a user typed (preset name, block string, JSON file, run directory) into an Architecture."""

from __future__ import annotations

import json
from pathlib import Path

from nas.errors import NasError
from search_spaces import Architecture, preset, preset_names


def resolve_arch(spec: str) -> Architecture:
    """``spec`` is a preset name, an architecture string, an architecture JSON file, or a run
    directory of ``nas search`` / ``nas grid-scale`` (its ``best.json``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise NasError("no architecture given")
    spec = spec.strip()
    if spec.lower() in preset_names():
        return preset(spec)
    path = Path(spec)
    if path.is_dir():
        # A search or grid-scale run: its best.json; a nas train run: the architecture it trained.
        for name in ("best.json", "final.json"):
            if (path / name).is_file():
                return _from_json_file(path / name)
        raise NasError(f"{spec!r} is a directory without best.json or final.json (not a finished nas run directory)")
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise NasError(f"architecture file {spec!r} does not exist")
        return _from_json_file(path)
    if (spec[:1] in ("r", "s") and "_" in spec) or spec.startswith("stem"):
        return Architecture.from_string(spec)
    raise NasError(
        f"{spec!r} is not a preset ({', '.join(preset_names())}), an architecture string, "
        "a JSON file or a run directory"
    )


def _from_json_file(path: Path) -> Architecture:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise NasError(f"cannot read {str(path)!r}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise NasError(f"{str(path)!r} is not valid JSON: {e}") from None
    # Accept a bare architecture, or any nas result file that carries one under "arch".
    if isinstance(data, dict) and "arch" in data:
        arch = data["arch"]
        return Architecture.from_string(arch) if isinstance(arch, str) else Architecture.from_dict(arch)
    return Architecture.from_dict(data)


def recorded_num_classes(spec: str) -> tuple[int | None, str | None]:
    """The class count a run directory (its best.json or final.json) or a result JSON file records,
    and the file it was read from; (None, None) when it records none (a preset, a string, a bare
    architecture, a run written before num_classes was recorded)."""

    path = Path(spec.strip()) if isinstance(spec, str) else None
    if path is None:
        return None, None
    candidates = [path / "best.json", path / "final.json"] if path.is_dir() else [path] if path.is_file() else []
    for f in candidates:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # unreadable: resolve_arch names the problem where it matters
        n = data.get("num_classes") if isinstance(data, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            return n, str(f)
    return None, None
