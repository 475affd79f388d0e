"""``nas spaces`` and ``nas presets``: what exists."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("spaces", help="list the search spaces")
    p.set_defaults(func=run_spaces)
    p = sub.add_parser("presets", help="list the published networks")
    p.set_defaults(func=run_presets)


def run_spaces(args) -> int:
    from search_spaces import get_space, space_names

    for name in space_names():
        space = get_space(name)
        print(f"{name:<11} {space.size():.3e} architectures  {space.describe()}")
    return 0


def run_presets(args) -> int:
    import pandas as pd

    from search_spaces import REFERENCE, count_macs, count_params, preset, preset_names

    rows = []
    for name in preset_names():
        arch = preset(name)
        ref = REFERENCE.get(name, {})
        rows.append({"preset": name, "params": count_params(arch), "GMACs": round(count_macs(arch) / 1e9, 3),
                     "resolution": arch.resolution, "published params": ref.get("params", ""),
                     "published GMACs": ref.get("gmacs", "")})
    print(pd.DataFrame(rows).to_string(index=False))
    return 0
