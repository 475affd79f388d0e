"""Which architectures to build so that their pieces are every piece a space can produce.

A space is a list of categorical decisions and ``make(choice)``; it says nothing about which
decision shapes which stage. That is found by trying: starting from the first option of every
decision, each option of each decision is set alone and the piece keys of every stage
(:func:`nas.steptime.pieces.decompose`, with stride, channels and input size) are compared with the
start's. A decision that changes no key only changes a stage's layer count; it is set to its option
with the most blocks, so every stage that can repeat a block does.

The pieces of stage i are then a function of the decisions that change its keys (``groups[i]``),
and the space produces at most ``sum_i prod_{d in groups[i]} |options(d)|`` stage variants. When
that is at most ``limit``, every variant is built: in ``max_i`` rounds when no decision shapes two
stages (round j takes each stage's j-th variant, so all stages are covered by the same few
networks: 12 for ``trainaware``), else one network per variant. For a stage-factorized space like
``trainaware`` (6 stages x 12 op/kernel/expansion variants: 144 block pieces) that is every piece.
When a decision shapes several stages and multiplies the variants (``mnasnet``: a stage's filters
are the next stage's input channels, with kernel, SE and skip about 430 variants per stage), the
space is too large to pre-fill and :func:`covering_architectures` returns None: pieces are then
timed when a candidate first needs them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from nas.steptime.pieces import decompose
from search_spaces import Architecture

DEFAULT_LIMIT = 400


def _stage_keys(arch: Architecture, image_size: int, batch_size: int, num_classes: int) -> list[tuple[str, ...]]:
    """Per stage, the keys of its first and repeated block as they would be with a repeat (the
    repeated block's key exists even in a one-layer stage), plus the network's own pieces last."""
    longer = arch.replace(stages=tuple(s if s.repeats > 1 else dataclasses.replace(s, repeats=2) for s in arch.stages))
    by_stage: dict[int, list[str]] = {}
    other = []
    for ref, _ in decompose(longer, image_size, batch_size, num_classes):
        if ref.kind == "block":
            by_stage.setdefault(ref.stage, []).append(ref.key)
        else:
            other.append(ref.key)
    return [tuple(by_stage[i]) for i in range(len(arch.stages))] + [tuple(other)]


def covering_architectures(
    space, image_size: int, batch_size: int, num_classes: int, limit: int = DEFAULT_LIMIT
) -> list[Architecture] | None:
    """Architectures whose pieces are all the pieces ``space`` can produce at this setting, or None
    when it can produce more than ``limit`` stage variants (see the module docstring)."""
    decisions = space.decisions()
    start = {name: opts[0] for name, opts in decisions}
    base_keys = _stage_keys(space.make(start), image_size, batch_size, num_classes)
    groups: list[set[str]] = [set() for _ in base_keys]
    depth: dict[str, Any] = {}
    for name, opts in decisions:
        changed = False
        for o in opts[1:]:
            keys = _stage_keys(space.make({**start, name: o}), image_size, batch_size, num_classes)
            if len(keys) != len(base_keys):  # the decision changes the number of stages: not factorized
                return None
            for i, (k, b) in enumerate(zip(keys, base_keys)):
                if k != b:
                    groups[i].add(name)
                    changed = True
        if not changed:
            depth[name] = max(opts, key=lambda o: space.make({**start, name: o}).num_blocks)
    options = dict(decisions)
    variants = []
    for g in groups:
        names = sorted(g)
        variants.append([dict(zip(names, combo)) for combo in itertools.product(*(options[n] for n in names))])
    if sum(len(v) for v in variants) > limit:
        return None
    fixed = {**start, **depth}
    disjoint = all(not (a & b) for a, b in itertools.combinations(groups, 2))
    if disjoint:
        rounds = max(len(v) for v in variants)
        choices = [{**fixed, **{k: v for vs in variants for k, v in vs[j % len(vs)].items()}} for j in range(rounds)]
    else:
        choices = [{**fixed, **v} for vs in variants for v in vs]
    archs, seen = [], set()
    for c in choices:
        a = space.make(c)
        if a not in seen:
            seen.add(a)
            archs.append(a)
    return archs
