"""Keeping freed memory (nas.core.allocator) against glibc's default, on the CPU training step.

Each allocator runs in fresh interpreters (the setting is per process, and what a process allocated
before is part of what is measured): one with ``NAS_MALLOC=system`` (glibc as it comes), one as nas
runs (freed memory kept). Rounds alternate the two. Each child times every network's training step
(``nas measure``'s step: :func:`nas.steptime.measure.measure_step_time`, median of blocks) in order,
each network freshly built, and reports its own system CPU time, where page faults are paid.
Printed: median step time per network and allocator over rounds, the ratio system / kept per round
(median and range), and the children's system time.

    python benchmarks/bench_allocator.py                 # 64 px, batch 16, 3 rounds
    python benchmarks/bench_allocator.py --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import parse_with_tiny

REPO = Path(__file__).resolve().parent.parent

# The networks: a preset, and the largest candidate of a 12-candidate fidelity run of the trainaware
# space at 64 px (168M parameters, mostly 15 Fused-MBConv k5 e6 blocks at 256 channels), the kind of
# network whose step glibc's default slowed most.
NETWORKS = {
    "efficientnet-b0": "efficientnet-b0",
    "trainaware-large": (
        "stem24,r1_k3_s1_e6_i24_o24_c1,r4_k3_s2_e4_i24_o48_c1,r5_k3_s2_e6_i48_o64_c1,r7_k3_s2_e6_i64_o128_c1,"
        "r8_k3_s1_e4_i128_o160_se0.25,r16_k5_s2_e6_i160_o256_c1,head1280,res384,drop0.2,sd0.2,act_silu"
    ),
}
TINY = dict(networks=["efficientnet-b0"], rounds=1, image_size=32, batch_size=4, min_run_time=0.05)

CHILD = """
import json, resource, sys
from nas.steptime.measure import measure_step_time
from search_spaces import Architecture, preset
import torch
args = json.loads(sys.argv[1])
if args["threads"]:
    torch.set_num_threads(args["threads"])
out = {}
for name, spec in args["networks"]:
    arch = preset(spec) if "," not in spec else Architecture.from_string(spec)
    r = measure_step_time(arch, device="cpu", batch_size=args["batch_size"], image_size=args["image_size"],
                          num_classes=10, min_run_time=args["min_run_time"])
    out[name] = r.step_time_ms
from nas.core.allocator import reuse_freed_memory
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": out, "sys_s": u.ru_stime, "user_s": u.ru_utime, "allocator": reuse_freed_memory()}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--rounds", type=int, default=3, help="rounds, each one child per allocator (default 3)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per network and child (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the children (default: torch's)")
    return parse_with_tiny(p, TINY, argv)


def child(args, malloc: str) -> dict:
    env = {**os.environ, "NAS_MALLOC": malloc, "PYTHONPATH": str(REPO)}
    spec = {
        "networks": [(n, NETWORKS[n]) for n in args.networks],
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "min_run_time": args.min_run_time,
        "threads": args.threads,
    }
    p = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], cwd=REPO, env=env, capture_output=True, text=True
    )
    if p.returncode != 0:
        sys.exit(f"bench_allocator: the {malloc} child failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, list[dict]] = {"system": [], "kept": []}
    for i in range(args.rounds):
        order = ("system", "kept") if i % 2 == 0 else ("kept", "system")
        for which in order:
            runs[which].append(child(args, "system" if which == "system" else ""))
        print(f"  round {i + 1}/{args.rounds} done", file=sys.stderr)
    kept_name = runs["kept"][0]["allocator"]
    n = args.rounds
    print(
        f"training step on the CPU at {args.image_size} px, batch {args.batch_size}, threads "
        f"{args.threads or 'torch default'}; glibc as it comes (system) against {kept_name} (kept), "
        f"{n} round{'s' if n != 1 else ''}"
    )
    for net in args.networks:
        sysm = [r["ms"][net] for r in runs["system"]]
        kept = [r["ms"][net] for r in runs["kept"]]
        ratios = [s / k for s, k in zip(sysm, kept)]
        print(
            f"{net:>18}: system {statistics.median(sysm):8.1f} ms, kept {statistics.median(kept):8.1f} ms, "
            f"system/kept {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
        )
    for which in ("system", "kept"):
        s = [r["sys_s"] for r in runs[which]]
        print(f"{which:>18}: system CPU time per child {statistics.median(s):.1f} s (range {min(s):.1f}-{max(s):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
