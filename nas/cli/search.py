"""``nas search``: training-aware architecture search (EfficientNetV2 section 3.3, MnasNet).

A thin shell over :func:`nas.search.search`: flags become settings, and every choice, its help and
the flags of each strategy come from the registries (spaces, rewards and their short forms,
evaluators, step-time methods and costs, samplers, pruners, backends and their flags). The flag groups
shared with ``nas grid-scale`` (data and device, proxy training, step time, reward, backends) are
defined here once.
"""

from __future__ import annotations

import argparse

from nas.backends import BACKENDS, backend_from_flags
from nas.core.plugins import import_plugins
from nas.data import DATASETS
from nas.errors import NasError
from nas.search import search
from nas.steptime.costs import COSTS
from nas.steptime.methods import METHODS, StepTimeConfig
from nas.study.space import STUDY_NAME, SearchOptions
from nas.study.strategies import PRUNERS, SAMPLERS, default_pruner, help_text
from nas.trial.evaluator import EVALUATORS
from nas.trial.settings import ProxyConfig, TrialSettings
from rewards import parse_params, reward_class, reward_names, short_flags
from search_spaces import space_names


def _data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and device")
    g.add_argument("--dataset", default="digits", help=f"{', '.join(DATASETS)} (default digits, offline)")
    g.add_argument("--data-dir", default=None, help="where cifar10/cifar100 live (default ~/.cache/nas/data)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N: where trials are trained")
    g.add_argument("--seed", type=int, default=0, help="makes a run repeatable (sampler, data split, init)")
    g.add_argument("--evaluator", default="train", help=help_text(EVALUATORS, "train"))


def _proxy_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("proxy training (how each candidate is shrunk and trained)")
    g.add_argument("--width-mult", type=float, default=0.25, help="proxy width multiplier (default 0.25)")
    g.add_argument("--depth-mult", type=float, default=0.25, help="proxy depth multiplier (default 0.25)")
    g.add_argument("--image-size", type=int, default=32, help="proxy image size in px (default 32)")
    g.add_argument("--epochs", type=int, default=4, help="proxy training epochs (default 4)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=0.005)
    g.add_argument("--optimizer", default="adamw", help="adamw (default), sgd or rmsprop")
    g.add_argument(
        "--accuracy-every",
        type=int,
        default=5,
        help="train every k-th trial a second time with another seed, to measure how much of the accuracy "
        "is the seed's against how much it differs between candidates (fidelity.json; default 5; 0: never)",
    )
    g.add_argument(
        "--progressive",
        default="off",
        help="s, m, l: EfficientNetV2 progressive learning during proxy training; off (default)",
    )
    g.add_argument(
        "--compile",
        default="auto",
        help="torch.compile the training step: auto (default: where it saves time, long CUDA runs), on, "
        "off; a measured step time is then the compiled step's",
    )


def _step_time_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("step time (S in the reward: a candidate's cost on the target device)")
    g.add_argument("--step-time", default="table", metavar="METHOD", help=help_text(METHODS, "table"))
    g.add_argument(
        "--cost",
        default=None,
        help=help_text(COSTS) + " (default: the reward's: step for trainaware, latency for mnasnet)",
    )
    g.add_argument(
        "--target",
        default=None,
        metavar="FILE",
        help="the step-time table S stands for (nas calibrate --out FILE), whatever device runs the trials; "
        "default: this machine's own device, its table built once before the first trial",
    )
    g.add_argument(
        "--target-image-size",
        type=int,
        default=None,
        help="image size of what S stands for (default: 64 on a CPU for the training step; on CUDA and for "
        "latency the space's resolution: 384 px for trainaware, 224 for mnasnet)",
    )
    g.add_argument(
        "--target-batch-size",
        type=int,
        default=None,
        help="batch of what S stands for (default: 16 on a CPU; on CUDA 128 at 224 px and the same pixels "
        "per batch at other sizes: 40 at 384 px; 1 for latency)",
    )
    g.add_argument(
        "--latency-batch-size",
        type=int,
        default=None,
        help="with --cost latency: images per forward pass (default 1, as MnasNet measured)",
    )
    g.add_argument("--measure-time", type=float, default=0.4, help="seconds of timed steps per timing")
    g.add_argument(
        "--fidelity-every",
        type=int,
        default=5,
        help="with --step-time table, also time every k-th trial directly on the target (default 5; 0: never)",
    )


def _reward_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reward")
    g.add_argument("--reward", default="trainaware", help=f"{', '.join(reward_names())} (default trainaware)")
    g.add_argument(
        "--reward-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the reward (see each reward's parameters); repeatable",
    )
    for flag, (name, text) in short_flags().items():
        g.add_argument(flag, dest=f"reward_{name}", default=None, metavar=name.upper(), help=text)


def add_trial_arguments(p: argparse.ArgumentParser) -> None:
    """Data, device, proxy training, step time and reward: what defines a trial."""
    _data_arguments(p)
    _proxy_arguments(p)
    _step_time_arguments(p)
    _reward_arguments(p)


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
        help="start over in a run directory whose results the storage no longer holds, or with another "
        "target (the old files move to OUT/replaced-<time>/)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register spaces, rewards, evaluators); repeatable",
    )
    names = [n for n, b in BACKENDS.items() if b.selectable]
    p.add_argument("--backend", default="embedded", help="; ".join(f"{n}: {BACKENDS[n].help}" for n in names))
    for backend in BACKENDS.values():
        if backend.flags:
            g = p.add_argument_group(backend.group)
            for f in backend.flags:
                g.add_argument(f.name, type=f.type, default=f.default, help=f.help, metavar=f.metavar)


def reward_params(args) -> dict:
    aliases = {name: getattr(args, f"reward_{name}") for name, _ in short_flags().values()}
    return parse_params(reward_class(args.reward), args.reward_param, aliases)


def step_time_config(args) -> StepTimeConfig:
    batch = args.target_batch_size
    if args.latency_batch_size is not None:
        if args.target_batch_size is not None:
            raise NasError("give --latency-batch-size or --target-batch-size, not both")
        batch = args.latency_batch_size
    return StepTimeConfig(
        method=args.step_time,
        target_image_size=args.target_image_size,
        target_batch_size=batch,
        min_run_time=args.measure_time,
        fidelity_every=args.fidelity_every,
        cost=args.cost,
        target=args.target,
    )


def trial_settings(args, space: str) -> TrialSettings:
    """The run's TrialSettings from the flags (checked on construction; resolved by the driver)."""
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
    return TrialSettings(
        space=space,
        dataset=args.dataset,
        data_dir=args.data_dir,
        reward=args.reward,
        reward_params=reward_params(args),
        device=args.device,
        seed=args.seed,
        proxy=proxy,
        step_time=step_time_config(args),
        compile=args.compile,
        evaluator=args.evaluator,
        accuracy_every=args.accuracy_every,
    )


def backend_options(args) -> tuple[str, dict]:
    """The backend's name and options; flags of another backend are refused."""
    return backend_from_flags(args.backend, vars(args))


def run_options(args) -> dict:
    """How a run is scheduled and shown, from the flags :func:`add_run_arguments` adds."""
    backend, options = backend_options(args)
    return {
        "backend": backend,
        "options": options,
        "plugins": tuple(args.plugin),
        "restart": args.restart,
        "progress": not args.no_progress,
    }


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search a space for architectures accurate and fast to train on a target device",
        description="Each trial samples an architecture, gets its cost on the run's target device, "
        "trains a proxy briefly and scores it with the reward. Rerun the same command to "
        "resume a killed search.",
    )
    p.add_argument("--space", default="trainaware", help=f"{', '.join(space_names())} (default trainaware; nas spaces)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (default 20)")
    p.add_argument("--sampler", default="tpe", help=help_text(SAMPLERS, "tpe"))
    defaults = ", ".join(f"{default_pruner(s)} for {s}" for s in SAMPLERS)
    p.add_argument(
        "--pruner",
        default=None,
        help=f"{help_text(PRUNERS)} (default: the sampler's: {defaults}); a pruner's parameters as NAME:KEY=VALUE,...",
    )
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
    add_run_arguments(p, study=STUDY_NAME)
    add_trial_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import_plugins(args.plugin)  # before the settings are checked: a plugin may define --space / --reward
    how = run_options(args)
    settings = trial_settings(args, args.space)
    opts = SearchOptions(
        n_trials=args.trials,
        sampler=args.sampler,
        pruner=args.pruner,
        storage=args.storage,
        study_name=args.study_name or STUDY_NAME,
        out=args.out or f"runs/search-{args.space}",
        validate_top=args.validate_top,
        validate_epochs=args.validate_epochs,
    )
    best = search(settings, opts, **how)
    return 0 if best else 1  # 1: every trial failed or was pruned
