"""A run's target: resolved from the settings and prepared once, before the first trial.

:func:`resolve` turns what the user left open into concrete values the run stores (the cost from
the reward: the training step for EfficientNetV2's reward, inference latency for MnasNet's; the
target setting from ``--target FILE`` or from the target device's defaults), and refuses a target
file that does not fit the search (another space, cost, class count or setting) with one line.

:func:`prepare` then makes the :class:`~nas.steptime.prepared.PreparedTarget` every process of the
run scores against: for ``--step-time table`` the step-time table (the file named by ``--target``,
else this machine's table for the setting, loaded or built now with a progress bar) and the
reference's predicted cost; for ``measure`` and ``proxy`` the reference timed directly on this
device until its timing settles.
"""

from __future__ import annotations

import dataclasses

from nas.core.device import Runtime
from nas.errors import NasError
from nas.steptime import table as tables
from nas.steptime.methods import DirectSource, steady_reference
from nas.steptime.model import StepTimeModel
from nas.steptime.prepared import PreparedTarget
from nas.steptime.target import Target, default_target
from nas.training.step import resolve_compile
from nas.trial.settings import TrialSettings, proxy_arch
from rewards import reward_class
from search_spaces import Architecture, count_params, get_space

PROXY_STEPS_PER_EPOCH = 20  # how many steps an epoch of the proxy is taken to train, for compile=auto


def _table_file_setting(path: str, settings: TrialSettings, cost: str, space_matters: bool) -> Target:
    """The setting of a ``--target`` table, refused when it does not fit the search."""
    model = StepTimeModel.from_file(path)
    st = model.setting
    here = {"space": settings.space, "cost": cost} if space_matters else {"cost": cost}
    for key, want in here.items():
        if st[key] != want:
            raise NasError(
                f"--target {path!r} is a {st['space']} {st['cost']} table and this search needs "
                f"{key} {want!r}; {model.cover_command(**here)}"
            )
    cfg = settings.step_time
    for key, given in (("image_size", cfg.target_image_size), ("batch_size", cfg.target_batch_size)):
        if given is not None and given != st[key]:
            raise NasError(
                f"--target-{key.replace('_', '-')} {given} differs from --target {path!r}'s {st[key]}; drop one of them"
            )
    return Target(st["image_size"], st["batch_size"], cost)


def resolve(settings: TrialSettings, device: str | None = None, *, space_matters: bool = True) -> TrialSettings:
    """``settings`` with the cost and the target setting made concrete (see the module docstring);
    ``device`` is where the target is when no table file names one (default: the trials' device).
    ``space_matters``: a target table must be of the settings' space (not for ``nas grid-scale``,
    whose candidates are one base scaled, whatever space the table was calibrated on)."""
    cfg = settings.step_time
    if not cfg.method_kind.full_size:  # the proxy's own training step, whatever the reward
        return dataclasses.replace(settings, step_time=dataclasses.replace(cfg, cost=cfg.cost or "step"))
    cost = cfg.cost or reward_class(settings.reward).default_cost
    if cfg.target is not None:
        t = _table_file_setting(cfg.target, settings, cost, space_matters)
    else:
        t = default_target(
            Runtime.resolve(device or settings.device),
            settings.space,
            image_size=cfg.target_image_size,
            batch_size=cfg.target_batch_size,
            cost=cost,
        )
    return dataclasses.replace(
        settings,
        step_time=dataclasses.replace(cfg, cost=cost, target_image_size=t.image_size, target_batch_size=t.batch_size),
    )


def check_classes(settings: TrialSettings, num_classes: int) -> None:
    """A ``--target`` table stands for the search's class count (its classifier is a piece)."""
    path = settings.step_time.target
    if path is None or not settings.step_time.method_kind.predicted:
        return
    model = StepTimeModel.from_file(path)
    if model.num_classes != num_classes:
        raise NasError(
            f"--target {path!r} is for {model.num_classes} classes and this search's data has "
            f"{num_classes}; {model.cover_command(num_classes=num_classes)}"
        )


def _table_target(settings, num_classes, reference, device, progress, log) -> PreparedTarget:
    cfg = settings.step_time
    target = Target(cfg.target_image_size, cfg.target_batch_size, cfg.cost)
    if cfg.target is not None:
        model, source = StepTimeModel.from_file(cfg.target), f"table {cfg.target}"
        check_classes(settings, num_classes)
    else:
        model = StepTimeModel.load_or_build(
            settings.space,
            Runtime.resolve(device or settings.device),
            target,
            num_classes=num_classes,
            progress=progress,
            log=log,
        )
        source = f"this machine's table {model.path}"
    ref = {
        "arch": reference.to_string(),
        "ms": model.predict(reference),
        "iqr_ms": None,
        "noisy": False,
        "params": count_params(reference, num_classes),
    }
    return PreparedTarget(
        method=cfg.method,
        cost=cfg.cost,
        fingerprint=model.fingerprint,
        setting=model.setting,
        reference=ref,
        source=source,
        table=model.table.to_dict(),
        table_path=str(model.path),
    )


def _direct_target(settings, num_classes, reference, device) -> PreparedTarget:
    cfg, proxy = settings.step_time, settings.proxy
    runtime = Runtime.resolve(device or settings.device)
    full = cfg.method_kind.full_size
    timed = reference if full else proxy_arch(reference, proxy)
    image, batch = (
        (cfg.target_image_size, cfg.target_batch_size) if full else (proxy.image_size, proxy.train.batch_size)
    )
    steps = 10**9 if full else proxy.epochs * PROXY_STEPS_PER_EPOCH  # the full-size step stands for a long run
    setting = {
        "space": settings.space,
        "cost": cfg.cost,
        "image_size": image,
        "batch_size": batch,
        "num_classes": num_classes,
        "compiled": resolve_compile(settings.compile, runtime, steps),
        "optimizer": "rmsprop" if full else proxy.train.optimizer,
        "min_run_time": cfg.min_run_time,
        "seed": settings.seed,
    }
    draft = PreparedTarget(
        method=cfg.method,
        cost=cfg.cost,
        fingerprint=tables.fingerprint(runtime),
        setting=setting,
        reference={},
        source="this machine",
    )
    ref = steady_reference(DirectSource(draft), timed, image, batch)
    ref.update(arch=reference.to_string(), params=count_params(reference, num_classes))
    return dataclasses.replace(draft, reference=ref)


def prepare(
    settings: TrialSettings,
    *,
    num_classes: int,
    reference: Architecture | None = None,
    device: str | None = None,
    progress=False,
    log=None,
) -> PreparedTarget:
    """The run's target (see the module docstring) for resolved ``settings`` (:func:`resolve`)."""
    reference = reference or get_space(settings.space).reference()
    if settings.step_time.method_kind.predicted:
        return _table_target(settings, num_classes, reference, device, progress, log)
    return _direct_target(settings, num_classes, reference, device)
