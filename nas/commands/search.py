"""``nas search``: training-aware architecture search (EfficientNetV2 section 3.3, MnasNet)."""

from __future__ import annotations

import argparse

BACKENDS = ("embedded", "ray")


def add_proxy_arguments(p: argparse.ArgumentParser) -> None:
    """Data, device and proxy-training flags, shared by ``nas search`` and ``nas grid-scale``."""
    g = p.add_argument_group("data and device")
    g.add_argument("--dataset", default="digits",
                   help="digits (default, offline), fake, cifar10, cifar100 or imagefolder:PATH")
    g.add_argument("--data-dir", default=None, help="where cifar10/cifar100 live (default ~/.cache/nas/data)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N: where trials are timed and trained")
    g.add_argument("--seed", type=int, default=0, help="makes a run repeatable (sampler, data split, init)")
    g = p.add_argument_group("proxy training (how each candidate is shrunk and trained)")
    g.add_argument("--width-mult", type=float, default=0.25, help="proxy width multiplier (default 0.25)")
    g.add_argument("--depth-mult", type=float, default=0.25, help="proxy depth multiplier (default 0.25)")
    g.add_argument("--image-size", type=int, default=32, help="proxy image size in px (default 32)")
    g.add_argument("--epochs", type=int, default=4, help="proxy training epochs (default 4)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=0.005)
    g.add_argument("--optimizer", default="adamw", help="adamw (default), sgd or rmsprop")
    g.add_argument("--progressive", default="off",
                   help="s, m, l: EfficientNetV2 progressive learning during proxy training; off (default)")
    g.add_argument("--measure-time", type=float, default=0.4, help="seconds of timed training steps per candidate")


def add_reward_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="trainaware", help="trainaware (A*S**w*P**v, default) or mnasnet")
    g.add_argument("--w", type=float, default=None, help="trainaware: step-time exponent (default -0.07)")
    g.add_argument("--v", type=float, default=None, help="trainaware: parameter exponent (default -0.05)")
    g.add_argument("--target-ms", type=float, default=None,
                   help="mnasnet: latency target T in ms (default: the reference's step time)")
    g.add_argument("--constraint", default=None, help="mnasnet: soft (default) or hard")


def reward_params(args) -> dict:
    from nas.errors import NasError

    trainaware = {"w": args.w, "v": args.v}
    mnasnet = {"target_ms": args.target_ms, "constraint": args.constraint}
    own, other = (trainaware, mnasnet) if args.reward == "trainaware" else (mnasnet, trainaware)
    stray = [k for k, v in other.items() if v is not None]
    if stray and args.reward in ("trainaware", "mnasnet"):
        raise NasError(f"--{stray[0].replace('_', '-')} does not apply to reward {args.reward!r}")
    return {k: v for k, v in own.items() if v is not None}


def trial_settings(args, space: str):
    from nas.trial import ProxyConfig, TrialSettings

    proxy = ProxyConfig(width=args.width_mult, depth=args.depth_mult, image_size=args.image_size,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                        progressive=args.progressive, measure_min_run_time=args.measure_time)
    return TrialSettings(space=space, dataset=args.dataset, data_dir=args.data_dir, reward=args.reward,
                         reward_params=reward_params(args), device=args.device, seed=args.seed,
                         proxy=proxy).validate()


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search a space for architectures accurate and fast to train here",
                       description="Each trial samples an architecture, times its training step on this "
                                   "device, trains a proxy briefly and scores it with the reward. Rerun the "
                                   "same command to resume a killed search.")
    p.add_argument("--space", default="trainaware", help="trainaware (default) or mnasnet (see nas spaces)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (default 20)")
    p.add_argument("--sampler", default="tpe", help="tpe (default), random, nsga2 (multi-objective)")
    p.add_argument("--pruner", default=None, help="median (default; none with nsga2), hyperband or none")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL, e.g. postgresql://user@host/db (default: OUT/study.db, SQLite)")
    p.add_argument("--study-name", default=None, help="study name inside --storage (default nas-search)")
    p.add_argument("--out", default=None, help="run directory (default runs/search-SPACE)")
    p.add_argument("--backend", default="embedded", help="embedded (Optuna in this process, default) or ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="embedded backend: run the trials in N processes sharing the run's storage (see nas worker)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register search spaces or rewards); repeatable")
    add_reward_arguments(p)
    add_proxy_arguments(p)
    g = p.add_argument_group("ray backend (--backend ray)")
    g.add_argument("--address", default=None, help="Ray cluster address: auto or HOST:PORT (default: start a local Ray)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0)
    g.add_argument("--gpus-per-trial", type=float, default=0.0)
    g.add_argument("--max-concurrent", type=int, default=None)
    g.add_argument("--scheduler", default="none", help="none or asha (Ray Tune's ASHA early stopping)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nas.errors import NasError
    from nas.search import STUDY_NAME, SearchOptions

    if args.backend not in BACKENDS:
        raise NasError(f"unknown backend {args.backend!r}; known: {', '.join(BACKENDS)}")
    from nas.workers import import_plugins

    import_plugins(args.plugin)  # before the settings are checked: a plugin may define --space / --reward
    settings = trial_settings(args, args.space)
    pruner = args.pruner or ("none" if args.sampler == "nsga2" else "median")
    opts = SearchOptions(n_trials=args.trials, sampler=args.sampler, pruner=pruner, storage=args.storage,
                         study_name=args.study_name or STUDY_NAME,
                         out=args.out or f"runs/search-{args.space}").validate()
    if args.backend == "ray":
        if args.workers is not None:
            raise NasError("--workers is for the embedded backend; Ray runs trials in parallel itself (--max-concurrent)")
        from nas.ray_backend import run_ray_search

        best = run_ray_search(settings, opts, args)
        return 0 if best else 1
    if args.scheduler != "none" or args.address is not None or args.max_concurrent is not None:
        raise NasError("--scheduler, --address and --max-concurrent are for --backend ray")
    if args.workers is not None:
        from nas.workers import run_workers

        best = run_workers(settings, opts, args.workers, plugins=args.plugin, progress=not args.no_progress)
        return 0 if best else 1
    from nas.search import run_search

    best = run_search(settings, opts, progress=not args.no_progress)
    return 0 if best else 1  # 1: every trial failed or was pruned
