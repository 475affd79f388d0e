"""The GPU report (issue 18): one command on one CUDA GPU, each figure beside its baseline measured in the same run.

Parts (``--parts``, run in this order; each gets its share of what is left of ``--budget``, so time a
part does not use goes to the next, and the whole stays within the budget):

* ``step``: the bare training step (:func:`nas.steptime.measure.make_train_step`, the step ``nas
  train`` runs, timed by :func:`~nas.steptime.measure.time_step`) of EfficientNet-B0 (224 px, batch
  256) and EfficientNetV2-S (384 px, batch 64) built by ``nas`` against torchvision's and timm's
  (when importable) same networks, eager and compiled (``torch.compile``): ms per step, images/s,
  achieved TFLOP/s (the FLOPs of one step, counted by ``torch.utils.flop_counter.FlopCounterMode``,
  over the step time), ours / torchvision and compiled / eager;
* ``table``: the step-time table built at the ``trainaware`` default (``nas calibrate``'s path,
  :func:`build_table`), its build time, and its agreement with 12 candidates it has not seen, each
  timed directly twice: Spearman, Kendall tau, MAPE, share within +-10%, and the same figures for
  the second timing against the first (what measurement itself achieves). The build is capped
  (cuDNN autotuning made it 266 s at 384 px once): a stopped build says how far it got;
* ``train``: ``nas train`` images/s against the bare step, first epoch and steady state
  (``bench_throughput.py``'s train part);
* ``search``: the real ``nas search`` in a fresh interpreter for ``--trials-per-device`` 1, 2, 4, 8:
  trials per hour, GPU busy share (SM utilisation from nvidia-ml-py, sampled in a thread), driver
  overhead; and the value that serves best (``--trials-per-device auto`` is measured too once the
  CLI has it).

Everything is also written to ``results/<device>-<date>.json`` and a Markdown table beside it, after
every part (a stopped run keeps what it measured).

    python benchmarks/gpu_report.py                          # CUDA, within 7 minutes
    python benchmarks/gpu_report.py --quick                  # fewer configurations, about 3 minutes
    python benchmarks/gpu_report.py --parts table,search     # some parts
    python benchmarks/gpu_report.py --device cpu --tiny      # the CPU path at a tiny size, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path

import report_parts
import torch
import torchvision
from common import parse_with_tiny

from nas.core.device import Runtime, device_name

HERE = Path(__file__).resolve().parent
PARTS = ("step", "table", "train", "search")
WEIGHTS = {"step": 0.26, "table": 0.34, "train": 0.10, "search": 0.30}  # shares of the budget
# The CPU path: tiny step settings, a tiny space's table, a tiny nas train and 1-2 trials per device.
TINY = dict(budget=600.0, candidates=4, search_trials=2, trials_per_device="1,2", threads=1)


class Budget:
    """The time left, shared between the parts still to run by their weights."""

    def __init__(self, total_s: float, parts: list[str]):
        self.t0, self.total = time.monotonic(), total_s
        self.weights = {p: WEIGHTS[p] for p in parts}

    def left(self) -> float:
        return max(0.0, self.total - (time.monotonic() - self.t0))

    def allowance(self, part: str) -> float:
        """``part``'s share of what is left (by weight among the parts not yet run)."""
        w = self.weights.pop(part)
        return self.left() * w / (w + sum(self.weights.values()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all parts (default 420)")
    p.add_argument("--quick", action="store_true", help="B0 only, compiled ours and torchvision only, 2 values")
    p.add_argument("--variants", default=None, help="eager,compiled (default: both on CUDA, eager on a CPU)")
    p.add_argument("--candidates", type=int, default=12, help="unseen candidates the table is checked on")
    p.add_argument("--search-trials", type=int, default=4, help="trials per search, at least 2 per worker")
    p.add_argument("--search-epochs", type=int, default=2, help="proxy epochs per trial (default 2)")
    p.add_argument("--trials-per-device", default="1,2,4,8", help="the values compared (default 1,2,4,8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on a CPU")
    p.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON and Markdown go")
    args = parse_with_tiny(p, TINY, argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    if args.quick:
        args.trials_per_device = "1,4" if args.trials_per_device == "1,2,4,8" else args.trials_per_device
    return args


def setting(runtime: Runtime, args) -> dict:
    timm = report_parts.timm_or_none()
    return {
        "device": str(runtime.device),
        "device_name": device_name(runtime.device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__ if timm else None,
        "cuda": torch.version.cuda,
        "dtype": runtime.dtype_name,
        "memory_format": "channels_last" if runtime.channels_last else "contiguous",
        "threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "quick": args.quick,
        "budget_s": args.budget,
        "date": datetime.date.today().isoformat(),
    }


def out_paths(args, s: dict) -> tuple[Path, Path]:
    slug = re.sub(r"[^a-z0-9]+", "-", s["device_name"].lower()).strip("-")
    stem = f"{slug}-{s['date']}" + ("-tiny" if args.tiny else "")
    return args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"


def markdown(report: dict) -> str:
    s = report["setting"]
    lines = [
        f"# GPU report: {s['device_name']}, {s['date']}",
        "",
        f"torch {s['torch']}, torchvision {s['torchvision']}, timm {s['timm']}, CUDA {s['cuda']}, {s['dtype']}, "
        f"{s['memory_format']}{', --tiny' if s['tiny'] else ''}{', --quick' if s['quick'] else ''}; "
        f"budget {s['budget_s']:.0f} s, ran {report.get('wall_s', 0):.0f} s",
        "",
        "| part | figure | value | baseline (same run) | ratio |",
        "|---|---|---|---|---|",
    ]
    for part, r in report["parts"].items():
        for row in r.get("summary", []):
            lines.append(
                f"| {part} | {row['figure']} | {row['value']} | {row.get('baseline', '')} | {row.get('ratio', '')} |"
            )
        for note in r.get("notes", []):
            lines.append(f"| {part} | note | {note} | | |")
    return "\n".join(lines) + "\n"


def write(report: dict, json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = Runtime.resolve(args.device)
    parts = [p for p in PARTS if p in args.parts.split(",")]
    budget = Budget(args.budget - (time.monotonic() - t0), parts)
    report = {"setting": setting(runtime, args), "parts": {}}
    json_path, md_path = out_paths(args, report["setting"])
    s = report["setting"]
    print(
        f"GPU report on {s['device']} ({s['device_name']}): torch {s['torch']}, torchvision {s['torchvision']}, "
        f"timm {s['timm'] or 'not installed'}, {s['dtype']}, {s['memory_format']}, {s['threads']} threads; "
        f"parts {', '.join(parts)} within {budget.left():.0f} s",
        flush=True,
    )
    for part in parts:
        allowance = budget.allowance(part)
        print(f"\n== {part} (budget {allowance:.0f} s) ==", flush=True)
        started = time.monotonic()
        result = report_parts.PARTS[part](args, runtime, time.monotonic() + allowance)
        report_parts.release()
        result["wall_s"] = time.monotonic() - started
        report["parts"][part] = result
        report["wall_s"] = time.monotonic() - t0
        write(report, json_path, md_path)
    print(f"\nwrote {json_path} and {md_path.name} ({report['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
