"""``nas search``: training-aware architecture search (EfficientNetV2 section 3.3, MnasNet).

The flag groups shared with ``nas grid-scale`` (data and device, proxy training, step time, reward,
backends) are defined here once.
"""

from __future__ import annotations

import argparse

BACKEND_CHOICES = ("embedded", "ray")


def add_trial_arguments(p: argparse.ArgumentParser) -> None:
    """Data, device, proxy training, step time and reward: what defines a trial."""
    g = p.add_argument_group("data and device")
    g.add_argument(
        "--dataset", default="digits", help="digits (default, offline), fake, cifar10, cifar100 or imagefolder:PATH"
    )
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
    g.add_argument(
        "--progressive",
        default="off",
        help="s, m, l: EfficientNetV2 progressive learning during proxy training; off (default)",
    )
    g.add_argument(
        "--compile",
        default="auto",
        help="torch.compile the training step: auto (default: where it saves time, long CUDA runs), on, off; "
        "a measured step time is then the compiled step's",
    )
    g = p.add_argument_group("step time (S in the reward)")
    g.add_argument(
        "--step-time",
        default="table",
        metavar="METHOD",
        help="table (default): the full-size candidate's step at the target setting, predicted by the "
        "per-device step-time model (nas calibrate; built on first use); measure: the same step, "
        "timed directly; proxy: the shrunk proxy's step, timed (the old method, for comparison)",
    )
    g.add_argument(
        "--target-image-size",
        type=int,
        default=None,
        help="image size of the training step S stands for (default: 64 on a CPU; on CUDA the space's "
        "resolution: 384 px for trainaware, 224 for mnasnet)",
    )
    g.add_argument(
        "--target-batch-size",
        type=int,
        default=None,
        help="batch of the training step S stands for (default: 16 on a CPU; on CUDA 128 at 224 px and the "
        "same pixels per batch at other sizes: 40 at 384 px)",
    )
    g.add_argument("--measure-time", type=float, default=0.4, help="seconds of timed training steps per timing")
    g.add_argument(
        "--fidelity-every",
        type=int,
        default=5,
        help="with --step-time table, also time every k-th trial directly (default 5; 0: never)",
    )
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="trainaware", help="trainaware (A*S**w*P**v, default) or mnasnet")
    g.add_argument(
        "--reward-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the reward (see each reward's parameters); repeatable",
    )
    g.add_argument("--w", type=float, default=None, help="trainaware: step-time exponent (default -0.07)")
    g.add_argument("--v", type=float, default=None, help="trainaware: parameter exponent (default -0.05)")
    g.add_argument(
        "--target-ms",
        type=float,
        default=None,
        help="mnasnet: latency target T in ms (default: the reference's step time)",
    )
    g.add_argument("--constraint", default=None, help="mnasnet: soft (default) or hard")


def add_run_arguments(p: argparse.ArgumentParser, *, study: str) -> None:
    """Where results go and how trials are scheduled (none of it changes what a trial computes)."""
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL, e.g. postgresql://user@host/db (default: OUT/study.db, SQLite)",
    )
    p.add_argument("--study-name", default=None, help=f"study name inside --storage (default {study})")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over in a run directory whose results the storage no longer holds (the old files "
        "move to OUT/replaced-<time>/)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register search spaces or rewards); repeatable",
    )
    p.add_argument("--backend", default="embedded", help="embedded (Optuna on this machine, default) or ray")
    g = p.add_argument_group("parallel trials on this machine (embedded backend)")
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run the trials in N processes sharing the run's storage (see nas worker)",
    )
    g.add_argument(
        "--trials-per-device",
        type=int,
        default=None,
        metavar="N",
        help="N worker processes per device (per GPU with --device cuda), so small proxies fill a GPU",
    )
    g = p.add_argument_group("ray backend (--backend ray)")
    g.add_argument(
        "--address", default=None, help="Ray cluster address: auto or HOST:PORT (default: start a local Ray)"
    )
    g.add_argument("--cpus-per-trial", type=float, default=1.0)
    g.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0.0,
        help="GPUs per trial: a fraction shares a GPU (0.25: four trials per GPU), or whole GPUs",
    )
    g.add_argument("--max-concurrent", type=int, default=None)
    g.add_argument("--scheduler", default="none", help="none or asha (Ray Tune's ASHA early stopping)")


def reward_params(args) -> dict:
    from rewards import parse_params, reward_class

    aliases = {"w": args.w, "v": args.v, "target_ms": args.target_ms, "constraint": args.constraint}
    return parse_params(reward_class(args.reward), args.reward_param, aliases)


def trial_settings(args, space: str):
    """The run's TrialSettings from the flags (checked on construction), with the step-time target
    resolved for the device so the run stores concrete values."""
    from nas.steptime.methods import StepTimeConfig
    from nas.trial.settings import ProxyConfig, TrialSettings

    proxy = ProxyConfig.of(
        width=args.width_mult,
        depth=args.depth_mult,
        image_size=args.image_size,
        progressive=args.progressive,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
    )
    step = StepTimeConfig(
        method=args.step_time,
        target_image_size=args.target_image_size,
        target_batch_size=args.target_batch_size,
        min_run_time=args.measure_time,
        fidelity_every=args.fidelity_every,
    )
    settings = TrialSettings(
        space=space,
        dataset=args.dataset,
        data_dir=args.data_dir,
        reward=args.reward,
        reward_params=reward_params(args),
        device=args.device,
        seed=args.seed,
        proxy=proxy,
        step_time=step,
        compile=args.compile,
    )
    if step.method != "proxy":
        import dataclasses

        settings = dataclasses.replace(settings, step_time=step.resolved(settings.device, space))
    elif args.target_image_size is not None or args.target_batch_size is not None:
        from nas.errors import NasError

        raise NasError(
            "--target-image-size and --target-batch-size set the full-size step; with --step-time proxy "
            "the proxy's own step is timed (use --step-time measure or table)"
        )
    return settings


def backend_options(args) -> tuple[str, dict]:
    """The backend's name and options; flags of another backend are refused."""
    from nas.errors import NasError

    if args.backend not in BACKEND_CHOICES:
        raise NasError(f"unknown backend {args.backend!r}; known: {', '.join(BACKEND_CHOICES)}")
    parallel = args.workers is not None or args.trials_per_device is not None
    ray_flags = (
        args.scheduler != "none"
        or args.address is not None
        or args.max_concurrent is not None
        or args.gpus_per_trial != 0.0
        or args.cpus_per_trial != 1.0
    )
    if args.backend == "ray":
        from nas.backends.ray import RayOptions

        if parallel:
            raise NasError(
                "--workers and --trials-per-device are for the embedded backend; Ray runs trials in "
                "parallel itself (--max-concurrent, fractional --gpus-per-trial)"
            )
        if args.storage is not None:
            raise NasError("--storage is for the embedded backend; the ray backend keeps its state in OUT/ray")
        if getattr(args, "pruner", None) not in (None, "none"):
            raise NasError(
                f"--pruner {args.pruner} is for the embedded backend; with --backend ray use --scheduler asha"
            )
        return "ray", {
            "ray": RayOptions(
                address=args.address,
                cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial,
                max_concurrent=args.max_concurrent,
                scheduler=args.scheduler,
                plugins=tuple(args.plugin),
            )
        }
    if ray_flags:
        raise NasError(
            "--scheduler, --address, --max-concurrent, --cpus-per-trial and --gpus-per-trial are for --backend ray"
        )
    if parallel:
        return "workers", {"workers": args.workers, "trials_per_device": args.trials_per_device}
    return "embedded", {}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a space for architectures accurate and fast to train here",
        description="Each trial samples an architecture, gets its training step time on this "
        "device, trains a proxy briefly and scores it with the reward. Rerun the "
        "same command to resume a killed search.",
    )
    p.add_argument("--space", default="trainaware", help="trainaware (default) or mnasnet (see nas spaces)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (default 20)")
    p.add_argument("--sampler", default="tpe", help="tpe (default), random, nsga2 (multi-objective)")
    p.add_argument("--pruner", default=None, help="median (default; none with nsga2), hyperband or none")
    p.add_argument("--out", default=None, help="run directory (default runs/search-SPACE)")
    p.add_argument(
        "--validate-top",
        type=int,
        default=0,
        metavar="K",
        help="after the search, retrain the top K and K random trials longer and report how well the "
        "proxy's accuracy ranks them (Kendall tau, fidelity.json); default 0: off",
    )
    p.add_argument(
        "--validate-epochs",
        type=int,
        default=None,
        metavar="N",
        help="epochs of that longer training (default 4x --epochs)",
    )
    add_run_arguments(p, study="nas-search")
    add_trial_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from nas.core.plugins import import_plugins
    from nas.search.driver import run as run_job
    from nas.study.job import Job
    from nas.study.space import STUDY_NAME, SearchOptions, SearchProblem

    import_plugins(args.plugin)  # before the settings are checked: a plugin may define --space / --reward
    backend, options = backend_options(args)
    settings = trial_settings(args, args.space)
    pruner = args.pruner or ("none" if args.sampler == "nsga2" or backend == "ray" else "median")
    opts = SearchOptions(
        n_trials=args.trials,
        sampler=args.sampler,
        pruner=pruner,
        storage=args.storage,
        study_name=args.study_name or STUDY_NAME,
        out=args.out or f"runs/search-{args.space}",
        validate_top=args.validate_top,
        validate_epochs=args.validate_epochs,
    )
    job = Job(
        problem=SearchProblem(settings, opts),
        n_trials=opts.n_trials,
        out=opts.out,
        backend=backend,
        sampler=opts.sampler,
        pruner=opts.pruner,
        storage=opts.storage,
        options=options,
        plugins=tuple(args.plugin),
        restart=args.restart,
        progress=not args.no_progress,
    )
    best = run_job(job)
    return 0 if best else 1  # 1: every trial failed or was pruned
