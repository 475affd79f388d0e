"""Does the proxy's accuracy rank candidates as a longer, larger training does? (issue 26)

On real photographs (the CIFAR-10 subset in ``../shared/data/cifar10/``, 500 training and 200
validation images per class by default, as ``--dataset imagefolder:PATH`` reads them), a fixed set
of trainaware candidates (the V2-S backbone and ``--candidates`` more, seeded and spread over the
space: the middle of each of equal slices of 200 draws ranked by parameter count) is trained under
each *proxy setting* (width and depth multipliers, image size, epochs) with the search's own proxy
training (:func:`nas.training.loop.fit` with the search's recipe), and every setting's ranking is
compared with the most faithful setting measured (``--truth``, by default the last setting listed
that has every candidate):

* Kendall tau and Spearman rho against the truth, with a bootstrap interval over candidates;
* the baselines a proxy must beat: the full-size candidate's parameter count and MACs, ranked
  against the same truth (a proxy that does not beat counting parameters adds nothing to P);
* the seed noise: the reference trained with three seeds (std in points) against the spread of
  accuracy over the candidates, and for the settings run with two seeds on every candidate, the
  Kendall of one seed's ranking against the other's (the ceiling any proxy of that setting reaches);
* the chain: Kendall between neighbouring settings (width and depth, epochs, image size), so that
  a broken link shows when the full-size truth is out of reach;
* the cost per trial (median seconds, images per second).

Each training is stored as it finishes (``--results``, one JSON file per candidate, setting and
seed), so a rerun resumes and the work may span several runs and processes: start the same command
twice and the two share the jobs (a job being trained is claimed by its process id).
``--report-only`` prints the tables from what is stored. Writes ``results/proxy_fidelity.{json,md}``.

    python benchmarks/bench_proxy_fidelity.py --threads 1             # the CPU chain
    python benchmarks/bench_proxy_fidelity.py --settings truth --device cuda   # full size, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from common import parse_with_tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.core.agreement import agreement  # noqa: E402
from nas.core.files import atomic_write_json, atomic_write_text  # noqa: E402
from nas.data import TensorImages, load_dataset, normalise  # noqa: E402
from nas.training.loop import fit  # noqa: E402
from nas.trial.settings import ProxyConfig, proxy_arch  # noqa: E402
from search_spaces import build, count_macs, count_params, get_space  # noqa: E402

SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-12k.tar.gz"
CACHE = Path(os.environ.get("NAS_CACHE_DIR", "~/.cache/nas")).expanduser() / "bench"

# name: (width and depth multiplier, image size, epochs). The default is what `nas search` trains.
_D = ProxyConfig()
SETTINGS = {
    "default": (_D.width, _D.image_size, _D.epochs),
    "half": (0.5, _D.image_size, _D.epochs),
    "4x-epochs": (_D.width, _D.image_size, 4 * _D.epochs),
    "64px": (_D.width, 64, _D.epochs),
    "full-40px": (1.0, 40, 1),  # the unshrunk candidate, reduced: its last stage sees 2x2 at 40 px
    "truth": (1.0, 64, 12),  # full size, last stage 2x2: the GPU's job (minutes there, days here)
}
CHAIN = [("default", "half"), ("half", "full-40px"), ("default", "4x-epochs"), ("default", "64px")]
POOL = 200  # seeded draws the candidates are spread over


# ------------------------------------------------------------------------------------------------
# Data and candidates


def cifar_subset(train_per_class: int, val_per_class: int) -> Path:
    """The shared CIFAR-10 images, unpacked once into the cache, and a folder of links to the first
    ``train_per_class`` / ``val_per_class`` files of each class (file-name order)."""
    if not SHARED_ARCHIVE.exists():
        sys.exit(f"error: {SHARED_ARCHIVE} not found; pass --dataset imagefolder:PATH")
    full = CACHE / "cifar10-12k"
    if not (full / "val").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_ARCHIVE) as tar:
            tar.extractall(CACHE, filter="data")
    sub = CACHE / f"cifar10-{train_per_class}-{val_per_class}"
    for part, n in (("train", train_per_class), ("val", val_per_class)):
        for cls in sorted(p.name for p in (full / part).iterdir()):
            dst = sub / part / cls
            if dst.is_dir() and len(list(dst.iterdir())) == n:
                continue
            dst.mkdir(parents=True, exist_ok=True)
            files = sorted((full / part / cls).iterdir())[:n]
            for f in files:
                if not (dst / f.name).exists():
                    (dst / f.name).symlink_to(f)
    return sub


def candidates(count: int, seed: int, space_name: str = "trainaware") -> list:
    """The space's reference, then ``count`` draws spread over the parameter counts of POOL draws."""
    space = get_space(space_name)
    rng = np.random.default_rng(seed)
    pool = sorted((space.sample(rng) for _ in range(POOL)), key=lambda a: count_params(a, 10))
    picks = [pool[int((i + 0.5) * len(pool) / count)] for i in range(count)]
    return [space.reference(), *picks]


# ------------------------------------------------------------------------------------------------
# Jobs


def _job_path(results: Path, setting: str, index: int, seed: int) -> Path:
    return results / setting / f"c{index:02d}-seed{seed}.json"


def _claim(path: Path) -> bool:
    """Claim a job for this process; a claim whose process is gone is taken over."""
    lock = path.with_suffix(".running")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
            return False
        except (ValueError, ProcessLookupError):
            lock.unlink(missing_ok=True)
            return _claim(path)
        except PermissionError:
            return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def jobs(settings: list[str], n_cand: int, two_seeds: set[str]) -> list[tuple[str, int, int]]:
    """(setting, candidate, seed), cheapest settings first: every candidate at seed 0 (and seed 1
    for ``two_seeds``), the reference at seeds 1 and 2 (its seed noise)."""
    out = []
    for s in settings:
        out += [(s, i, 0) for i in range(n_cand)]
        out += [(s, 0, 1), (s, 0, 2)]
        if s in two_seeds:
            out += [(s, i, 1) for i in range(1, n_cand)]
    return out


def train_one(arch, setting: tuple, data, seed: int, device: str, batch_size: int) -> dict:
    width, size, epochs = setting
    p = ProxyConfig.of(width=width, depth=width, image_size=size, epochs=epochs, batch_size=batch_size)
    small = proxy_arch(arch, p)
    cfg = p.train_config(device=device, seed=seed, compile="off")
    torch.manual_seed(seed)
    model = build(small, data.num_classes)
    t0 = time.perf_counter()
    res = fit(model, data, cfg, progress=False)
    seconds = time.perf_counter() - t0
    n = len(data.train)
    per_epoch = n // batch_size * batch_size if n > batch_size else n  # a last incomplete batch is dropped
    return {
        "accuracy": float(res.val_accuracy),
        "history": [float(h["val_accuracy"]) for h in res.history],
        "train_s": seconds,
        "images_per_s": epochs * per_epoch / seconds,
        "pass_images_per_s": float(np.median([h["images_per_s"] for h in res.history])),
        "proxy_params": count_params(small, data.num_classes),
    }


def bare_loop(arch, setting: tuple, data, batch_size: int, steps: int) -> float:
    """Images per second of the plainest loop over the same proxy network: AdamW at the proxy's
    learning rate, channels_last, the images already normalised in memory, no evaluation."""
    width, size, _ = setting
    p = ProxyConfig.of(width=width, depth=width, image_size=size, batch_size=batch_size)
    torch.manual_seed(0)
    model = build(proxy_arch(arch, p), data.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=p.train.lr, weight_decay=p.train.weight_decay)
    images = data.train.images[: batch_size * steps]
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear").round()
    x = normalise(images).contiguous(memory_format=torch.channels_last)
    y = data.train.labels[: batch_size * steps]
    model.train()
    t0 = time.perf_counter()
    for b in range(0, len(x) - batch_size + 1, batch_size):
        loss = torch.nn.functional.cross_entropy(model(x[b : b + batch_size]), y[b : b + batch_size])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(x) // batch_size * batch_size / (time.perf_counter() - t0)


def throughput(args, archs, data, rounds: int) -> dict:
    """The default proxy trial of the reference against the bare loop, alternating, ratio per round:
    the trial's images/s over its whole training (evaluation, BatchNorm re-estimation included) and
    over its training passes only."""
    setting = SETTINGS["default"]
    per_round = []
    for r in range(rounds):
        t = train_one(archs[0], setting, data, r, args.device, args.batch_size)
        steps = len(data.train) // args.batch_size
        bare = bare_loop(archs[0], setting, data, args.batch_size, steps)
        per_round.append({"trial": t["images_per_s"], "trial_training_passes": t["pass_images_per_s"], "bare": bare})
        print(
            f"throughput round {r + 1}: trial {t['images_per_s']:.0f} img/s (training passes "
            f"{t['pass_images_per_s']:.0f}), bare loop {bare:.0f} img/s",
            flush=True,
        )
    med = {k: float(np.median([x[k] for x in per_round])) for k in per_round[0]}
    ratios = [x["trial"] / x["bare"] for x in per_round]
    pass_ratios = [x["trial_training_passes"] / x["bare"] for x in per_round]
    return {
        "rounds": per_round,
        "median": med,
        "trial_over_bare": [float(np.median(ratios)), float(min(ratios)), float(max(ratios))],
        "passes_over_bare": [float(np.median(pass_ratios)), float(min(pass_ratios)), float(max(pass_ratios))],
    }


def run_jobs(args, archs, data) -> None:
    todo = jobs(args.settings, len(archs), set(args.two_seeds))
    done = sum(_job_path(args.results, s, i, k).exists() for s, i, k in todo)
    print(f"{done} of {len(todo)} trainings already stored in {args.results}", flush=True)
    for s, i, k in todo:
        path = _job_path(args.results, s, i, k)
        if path.exists() or not _claim(path):
            continue
        try:
            if path.exists():
                continue
            r = train_one(archs[i], SETTINGS[s], data, k, args.device, args.batch_size)
            r.update(setting=s, candidate=i, seed=k, arch=archs[i].to_string(), threads=torch.get_num_threads())
            r.update(zip(("width_depth", "image_size", "epochs"), SETTINGS[s]))
            atomic_write_json(path, r)
            print(
                f"{s:10s} c{i:02d} seed {k}: accuracy {r['accuracy']:.3f} in {r['train_s']:.0f} s "
                f"({r['images_per_s']:.0f} img/s)",
                flush=True,
            )
        finally:
            path.with_suffix(".running").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# Report


def load_results(results: Path) -> dict[tuple[str, int, int], dict]:
    out = {}
    for f in results.glob("*/c*-seed*.json"):
        r = json.loads(f.read_text())
        out[(r["setting"], int(r["candidate"]), int(r["seed"]))] = r
    return out


def rank_ci(x, y, rounds: int = 2000, seed: int = 0) -> dict:
    """Kendall tau and Spearman rho of x against y, each with a 95% bootstrap interval over the pairs."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    f = agreement(x + 1e-9, y + 1e-9) if len(x) >= 3 else {"kendall_tau": None, "spearman": None}
    out = {
        "kendall": f["kendall_tau"],
        "spearman": f["spearman"],
        "kendall_ci": [None, None],
        "spearman_ci": [None, None],
    }
    if f["kendall_tau"] is None:
        return out
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(rounds):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            taus.append(stats.kendalltau(x[idx], y[idx]).statistic)
            rhos.append(stats.spearmanr(x[idx], y[idx]).statistic)
    if taus:
        out["kendall_ci"] = [float(v) for v in np.percentile(taus, [2.5, 97.5])]
        out["spearman_ci"] = [float(v) for v in np.percentile(rhos, [2.5, 97.5])]
    return out


def _acc(res, setting, n_cand, seed=0):
    """{candidate: accuracy} of a setting at a seed."""
    return {i: res[(setting, i, seed)]["accuracy"] for i in range(n_cand) if (setting, i, seed) in res}


def _rank(a: dict, b: dict) -> dict:
    """Kendall and Spearman (with intervals) of two {candidate: value} maps on their common candidates."""
    common = sorted(set(a) & set(b))
    return {"n": len(common), **rank_ci([a[i] for i in common], [b[i] for i in common])}


SEPARATION = 2.0  # a setting separates its candidates when their spread is at least this many times its seed noise


def _seed_noise(res: dict, s: str, n: int) -> float | None:
    """One training's seed noise in setting ``s``: from every candidate trained twice where there are
    such pairs (``sqrt(mean(d**2) / 2)``), else the standard deviation of the reference's seeds."""
    acc, second = _acc(res, s, n), _acc(res, s, n, seed=1)
    pairs = [acc[i] - second[i] for i in sorted(set(acc) & set(second))]
    if len(pairs) >= 3:
        return float(np.sqrt(np.mean(np.square(pairs)) / 2))
    seeds = [res[(s, 0, k)]["accuracy"] for k in range(3) if (s, 0, k) in res]
    return float(np.std(seeds, ddof=1)) if len(seeds) > 1 else None


def separates(res: dict, s: str, n: int) -> bool | None:
    vals = list(_acc(res, s, n).values())
    noise = _seed_noise(res, s, n)
    if noise is None or len(vals) < 3:
        return None
    return bool(np.std(vals, ddof=1) >= SEPARATION * noise)


def pick_truth(res: dict, complete: list[str], n: int) -> str:
    """The most faithful complete setting (the widest and deepest, then the largest images, then the most
    epochs) among those whose candidates separate beyond the seed noise; if none does, the most
    faithful of all (the report then says that it is no truth)."""
    key = SETTINGS.__getitem__
    clear = [s for s in complete if separates(res, s, n)]
    return max(clear or complete, key=key)


def report(res: dict, archs, truth: str | None, num_classes: int) -> dict:
    n = len(archs)
    present = [s for s in SETTINGS if any(k[0] == s for k in res)]
    complete = [s for s in present if len(_acc(res, s, n)) == n]
    if truth is None and complete:
        truth = pick_truth(res, complete, n)
    params = {i: float(count_params(a, num_classes)) for i, a in enumerate(archs)}
    macs = {i: float(count_macs(a, num_classes=num_classes)) for i, a in enumerate(archs)}
    out = {"truth": truth, "truth_separates": separates(res, truth, n) if truth else None}
    out.update(candidates=n, settings={}, chain=[])
    t = _acc(res, truth, n) if truth else {}
    if t:
        out["baselines"] = {"params": _rank(params, t), "macs": _rank(macs, t)}
    for s in present:
        acc, second = _acc(res, s, n), _acc(res, s, n, seed=1)
        seeds = [res[(s, 0, k)]["accuracy"] for k in range(3) if (s, 0, k) in res]
        rows = [r for k, r in res.items() if k[0] == s]
        entry = _entry(s, acc, rows, t if s != truth else {})
        pairs = [acc[i] - second[i] for i in sorted(set(acc) & set(second))]
        entry.update(
            seed_std=float(np.std(seeds, ddof=1)) if len(seeds) > 1 else None,
            seeds=len(seeds),
            # one training's seed noise from every candidate trained twice: sqrt(mean(d**2) / 2)
            pair_noise=float(np.sqrt(np.mean(np.square(pairs)) / 2)) if len(pairs) >= 3 else None,
            seed_vs_seed=_rank(acc, second) if len(second) >= 3 else None,
        )
        entry["separates"] = separates(res, s, n)
        out["settings"][s] = entry
        if len(second) == n and s != truth:  # the mean of two seeds: a proxy at twice the cost
            mean2 = {i: (acc[i] + second[i]) / 2 for i in acc}
            out["settings"][f"{s} x2 seeds"] = {
                **_entry(s, mean2, rows, t),
                "trial_s_median": 2 * entry["trial_s_median"],
            }
    out["verdict"] = verdict(out)
    for a, b in CHAIN:
        if a in present and b in present:
            out["chain"].append({"from": a, "to": b, **_rank(_acc(res, a, n), _acc(res, b, n))})
    return out


def _entry(s: str, acc: dict, rows: list, truth_acc: dict) -> dict:
    vals = list(acc.values())
    return {
        "width_depth": SETTINGS[s][0],
        "image_size": SETTINGS[s][1],
        "epochs": SETTINGS[s][2],
        "n": len(acc),
        "accuracy_mean": float(np.mean(vals)) if vals else None,
        "accuracy_range": [float(min(vals)), float(max(vals))] if vals else None,
        "spread_std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "trial_s_median": float(np.median([r["train_s"] for r in rows])),
        "images_per_s_median": float(np.median([r["images_per_s"] for r in rows])),
        "vs_truth": _rank(acc, truth_acc) if truth_acc else None,
        "seed_std": None,
        "seeds": 0,
        "pair_noise": None,
        "seed_vs_seed": None,
    }


BAR = 0.6  # the Kendall a default proxy must reach against the truth, and beat the parameter count's


def verdict(rep: dict) -> dict:
    """The cheapest setting whose Kendall against the truth is at least BAR and above the parameter
    count's; else the best setting found, said as such."""
    base = rep.get("baselines", {}).get("params", {}).get("kendall")
    if not rep.get("truth_separates"):
        return {"meets": False, "setting": None, "kendall": None, "params_kendall": base, "no_truth": True}
    ranked = [(e["trial_s_median"], s, e["vs_truth"]["kendall"]) for s, e in rep["settings"].items() if e["vs_truth"]]
    ranked = [r for r in ranked if r[2] is not None]
    meets = sorted(r for r in ranked if r[2] >= BAR and (base is None or r[2] > base))
    if meets:
        return {"meets": True, "setting": meets[0][1], "kendall": meets[0][2], "params_kendall": base}
    best = max(ranked, key=lambda r: r[2], default=(None, None, None))
    return {"meets": False, "setting": best[1], "kendall": best[2], "params_kendall": base}


def _f(v, fmt=".2f"):
    return "-" if v is None else format(v, fmt)


def _tau(r, key: str = "kendall") -> str:
    if not r or r[key] is None:
        return "-"
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.2f} [{_f(lo)}, {_f(hi)}]" + (f" (n={r['n']})" if key == "kendall" else "")


def _noise(e: dict) -> str:
    out = f"{100 * e['seed_std']:.1f} (reference, {e['seeds']} seeds)" if e["seed_std"] is not None else "-"
    if e["pair_noise"] is not None:
        out += f"; {100 * e['pair_noise']:.1f} (every candidate, 2 seeds)"
    return out


def _yes(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _rho(r) -> str:
    return _tau(r, "spearman")


def markdown(rep: dict, setup: str) -> str:
    lines = [
        f"Proxy fidelity: {setup}; truth = `{rep['truth']}`"
        + (
            f"; baselines against it: parameters Kendall {_tau(rep['baselines']['params'])}, "
            f"MACs {_tau(rep['baselines']['macs'])}"
            if "baselines" in rep
            else ""
        ),
        "",
        "| setting | width/depth, px, epochs | n | accuracy mean [range] | spread (std, points) | seed noise "
        "(std, points) | Kendall vs truth [95% CI] | Spearman vs truth [95% CI] | seed vs seed Kendall "
        "| separates (spread >= 2x noise) | trial s (median) | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, e in rep["settings"].items():
        rng = e["accuracy_range"]
        vt = e["vs_truth"]
        lines.append(
            f"| {s} | {e['width_depth']}, {e['image_size']}, {e['epochs']} | {e['n']} | "
            f"{100 * e['accuracy_mean']:.1f}% [{100 * rng[0]:.1f}, {100 * rng[1]:.1f}] | "
            f"{_f(e['spread_std'] and 100 * e['spread_std'], '.1f')} | "
            f"{_noise(e)} | "
            f"{'(truth)' if s == rep['truth'] else _tau(vt)} | {_rho(vt)} | "
            f"{_tau(e['seed_vs_seed'])} | {_yes(e.get('separates'))} | {e['trial_s_median']:.0f} | "
            f"{e['images_per_s_median']:.0f} |"
        )
    v = rep["verdict"]
    if v.get("no_truth"):
        lines += [
            "",
            f"No truth: the candidates of `{rep['truth']}`, the most faithful setting measured, do not separate "
            f"beyond its seed noise (spread < {SEPARATION}x noise), so no ranking against it can be judged.",
        ]
    elif v["setting"] is not None:
        lines += [
            "",
            (
                f"Cheapest setting with Kendall >= {BAR} and above the parameter count's ({_f(v['params_kendall'])}): "
                f"`{v['setting']}` ({_f(v['kendall'])})"
                if v["meets"]
                else f"No setting reaches Kendall {BAR} above the parameter count's ({_f(v['params_kendall'])}); "
                f"the best is `{v['setting']}` at {_f(v['kendall'])}"
            ),
        ]
    if rep["chain"]:
        lines += ["", "| link | Kendall [95% CI] | Spearman [95% CI] |", "|---|---|---|"]
        lines += [f"| {c['from']} -> {c['to']} | {_tau(c)} | {_rho(c)} |" for c in rep["chain"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=None, help="default: the shared CIFAR-10 subset (imagefolder)")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--candidates", type=int, default=12, help="candidates besides the V2-S reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="+", default=["default", "4x-epochs", "half", "64px", "full-40px"])
    p.add_argument("--two-seeds", nargs="*", default=["default"], help="settings run at 2 seeds everywhere")
    p.add_argument("--truth", default=None, help="the setting others are ranked against")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "proxy_fidelity")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--throughput-rounds",
        type=int,
        default=0,
        help="also time the default proxy trial against a bare loop, this many alternating rounds",
    )
    tiny = dict(
        candidates=3,
        train_per_class=6,
        val_per_class=3,
        settings=["tiny", "tiny-2x"],
        two_seeds=["tiny"],
        throughput_rounds=1,
        batch_size=16,
    )
    args = parse_with_tiny(p, tiny, argv)
    if args.tiny:
        SETTINGS.update({"tiny": (0.1, 16, 1), "tiny-2x": (0.1, 16, 2)})
        CHAIN.append(("tiny", "tiny-2x"))
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"error: unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    dataset = args.dataset or f"imagefolder:{cifar_subset(args.train_per_class, args.val_per_class)}"
    data = load_dataset(dataset, seed=args.seed)
    archs = candidates(args.candidates, args.seed)
    setup = (
        f"{dataset.split('/')[-1] if args.dataset is None else dataset}, {len(data.train)} training and "
        f"{len(data.val)} validation images, {len(archs)} trainaware candidates (seed {args.seed}), batch "
        f"{args.batch_size}, {args.device}, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(setup, flush=True)
    if not args.report_only:
        run_jobs(args, archs, data)
    rep = report(load_results(args.results), archs, args.truth, data.num_classes)
    rep["setup"] = setup
    rep["date"] = time.strftime("%Y-%m-%d")
    md = markdown(rep, setup)
    if args.throughput_rounds:
        if not isinstance(data.train, TensorImages):
            sys.exit("error: the throughput part needs a data set held in memory")
        rep["throughput"] = tp = throughput(args, archs, data, args.throughput_rounds)
        m, (r, lo, hi), (pr, plo, phi) = tp["median"], tp["trial_over_bare"], tp["passes_over_bare"]
        md += (
            f"\nThroughput (default proxy of the reference, {args.throughput_rounds} alternating rounds): trial "
            f"{m['trial']:.0f} img/s over its whole training, {m['trial_training_passes']:.0f} img/s in its training "
            f"passes; bare loop {m['bare']:.0f} img/s; trial / bare {r:.2f} (range {lo:.2f}-{hi:.2f}), training "
            f"passes / bare {pr:.2f} (range {plo:.2f}-{phi:.2f})\n"
        )
    print(md)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.results.with_suffix(".json"), rep)
    atomic_write_text(args.results.with_suffix(".md"), md)


if __name__ == "__main__":
    main()
