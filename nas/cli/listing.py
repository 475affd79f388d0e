"""``nas spaces`` and ``nas presets``: what exists."""

from __future__ import annotations

import pandas as pd

from search_spaces import count_macs, count_params, counterparts, get_space, preset, preset_names, space_names


def add_parser(sub) -> None:
    p = sub.add_parser("spaces", help="list the search spaces")
    p.set_defaults(func=run_spaces)
    p = sub.add_parser("presets", help="list the published networks, their sizes and the public models they equal")
    p.set_defaults(func=run_presets)


def run_spaces(args) -> int:
    names = space_names()
    width = max(map(len, names))
    for name in names:
        space = get_space(name)
        print(f"{name:<{width}} {space.size():.3e} architectures  {space.describe()}")
    return 0


def run_presets(args) -> int:

    rows = []
    for name in preset_names():
        arch = preset(name)
        # Equal in parameters, MACs and layers, and output for output with the same weights
        # (tests/test_presets.py, tests/test_weights.py).
        rows.append(
            {
                "preset": name,
                "params (1000 classes)": count_params(arch, 1000),
                "GMACs": round(count_macs(arch) / 1e9, 3),
                "px": arch.resolution,
                "equals": ", ".join(str(cp) for cp in counterparts(name)),
            }
        )
    left = {c: max(len(r[c]) for r in rows) for c in ("preset", "equals")}  # text columns read left-aligned
    text = pd.DataFrame(rows).to_string(
        index=False, justify="left", formatters={c: (lambda v, w=w: v.ljust(w)) for c, w in left.items()}
    )
    print("\n".join(line.rstrip() for line in text.splitlines()))
    return 0
