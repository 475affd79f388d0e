"""The training loop shared by ``nas train`` and the search's proxy training.

One epoch: take the progressive-learning stage's settings (EfficientNetV2 section 4.2, Algorithm 1:
image size, RandAugment magnitude, mixup alpha, dropout), train one pass over the training split,
evaluate top-1 on the validation split, optionally checkpoint, then call ``on_epoch_end``.

Optimisers follow the papers' recipes where they name one: RMSProp with decay 0.9, momentum 0.9,
epsilon 1e-3 (EfficientNet V1 section 5.2, V2 section 5.1), linear warmup then cosine decay, label
smoothing 0.1, optional weight EMA (:func:`nas.training.step.make_optimizer`). Small-data defaults (learning
rates per optimiser, batch 64) are ours.

Data: batches arrive already on the training device, resized, augmented and normalised there
(:mod:`nas.data.batches`); mixup runs there too. The loop never copies a batch from the host.

Reproducibility: every epoch re-seeds torch's generator from ``(seed, epoch)`` inside
``torch.random.fork_rng`` (RandAugment, mixup, dropout and stochastic depth draw from it) and the
batches are shuffled with their own generator seeded the same way. So on CPU the same seed gives the
same result, and a run resumed from a checkpoint gives exactly the result of an uninterrupted one.

One optimiser step is a :class:`nas.training.step.TrainStep` (optionally compiled); the same object is what
:mod:`nas.steptime.measure` times, so a measured step time is the step this loop runs. The device, AMP and
memory format are resolved by :mod:`nas.core.device`; evaluation is :mod:`nas.training.evaluation`, checkpoints
:mod:`nas.training.checkpoint`, the weight EMA :mod:`nas.training.ema`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from nas.core import devicelock
from nas.core.device import Runtime, cudnn_autotune
from nas.core.interrupt import check as check_interrupt
from nas.data import Splits, check_randaugment, make_mixup
from nas.data.batches import make_batches
from nas.errors import NasError
from nas.training.checkpoint import make_checkpoint, restore, save_checkpoint
from nas.training.config import TrainConfig, TrainingDiverged, TrainResult
from nas.training.ema import ModelEMA
from nas.training.evaluation import evaluate, recalibrate_bn
from nas.training.progressive import StageSettings
from nas.training.step import TrainStep, make_optimizer, resolve_compile

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "make_optimizer",
    "recalibrate_bn",
]


# ------------------------------------------------------------------------------------------------
# Learning-rate schedule


def lr_factor(step: int, total_steps: int, warmup_steps: int, cosine: bool) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay towards 0 (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))


# ------------------------------------------------------------------------------------------------
# Per-epoch settings


def epoch_settings(cfg: TrainConfig, epoch: int, base_size: int, base_dropout: float) -> tuple[int, StageSettings]:
    """(stage index, settings) of a 0-based epoch: the progressive stage, or the fixed values."""
    if cfg.progressive is not None:
        i = cfg.progressive.stage_index(epoch, cfg.epochs)
        return i, cfg.progressive.stage(i)
    return 0, StageSettings(
        image_size=cfg.image_size or base_size,
        randaugment=check_randaugment(cfg.randaugment),
        mixup=float(cfg.mixup),
        dropout=base_dropout if cfg.dropout is None else float(cfg.dropout),
    )


def _set_dropout(model: nn.Module, p: float) -> None:
    if hasattr(model, "set_dropout"):
        model.set_dropout(p)
    elif isinstance(getattr(model, "dropout", None), nn.Dropout):
        model.dropout.p = float(p)
    else:
        raise NasError(f"{type(model).__name__} has no set_dropout() or .dropout layer; cannot schedule dropout")


def _current_dropout(model: nn.Module) -> float:
    d = getattr(model, "dropout", None)
    return float(d.p) if isinstance(d, nn.Dropout) else 0.0


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------
# Training


class _Training:
    """What one :func:`fit` call sets up once and uses every epoch: the runtime, optimiser, schedule,
    batches, weight EMA and the step."""

    def __init__(self, model: nn.Module, splits: Splits, cfg: TrainConfig, base_size: int, progress: bool):
        self.model, self.splits, self.cfg, self.base_size, self.progress = model, splits, cfg, base_size, progress
        self.runtime = Runtime.resolve(cfg.device, cfg.amp, cfg.channels_last)
        self.runtime.prepare(model)
        self.optimizer = make_optimizer(model, cfg)
        # Batches are produced on the training device (nas.data.batches); one object per split for the
        # whole run, so loader worker processes (image folders) persist across epochs.
        device, workers = self.runtime.device, cfg.num_workers
        self.train_batches = make_batches(
            splits.train, device=device, batch_size=cfg.batch_size, train=True, num_workers=workers
        )
        self.val_batches = make_batches(
            splits.val, device=device, batch_size=max(cfg.batch_size, 256), train=False, num_workers=workers
        )
        steps_per_epoch = self.train_batches.num_batches
        total_steps = steps_per_epoch * cfg.epochs
        warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, cfg.cosine)
        )
        self.ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay else None
        self.eval_model = self.ema.module if self.ema is not None else model
        sizes = [epoch_settings(cfg, e, base_size, 0.0)[1].image_size for e in range(cfg.epochs)]
        self.compiled = resolve_compile(cfg.compile, self.runtime, min(map(sizes.count, sizes)) * steps_per_epoch)
        loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.step = TrainStep(model, self.optimizer, self.runtime, loss, compile=self.compiled)
        # Reading the loss synchronises a GPU with the host; on CUDA it is checked every few steps
        # (weights after a non-finite loss are never checkpointed, so stopping a little later is safe).
        self.check_every = 1 if self.runtime.device.type == "cpu" else 16
        self.step_time, self.steps = 0.0, 0

    def running(self) -> contextlib.ExitStack:
        """The context the epochs run in. cuda:N is the current device for the run, so nothing that
        defaults to the current device (kernels compiled by Inductor, cuDNN's autotuning) lands on
        another GPU; the batches' worker processes end with it."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.runtime.device_context())
        stack.enter_context(cudnn_autotune(self.runtime.device.type == "cuda"))
        stack.enter_context(contextlib.closing(self.train_batches))
        stack.enter_context(contextlib.closing(self.val_batches))
        return stack

    def resume(self, state: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        return restore(state, self.model, self.optimizer, self.scheduler, self.ema, self.step.scaler, self.cfg)

    def checkpoint(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        return make_checkpoint(
            self.model,
            self.cfg,
            self.splits,
            epoch,
            history,
            self.optimizer,
            self.scheduler,
            self.ema,
            self.step.scaler,
        )

    def epoch(self, epoch: int, base_dropout: float) -> tuple[dict[str, Any], tuple[float, float] | None]:
        """Train one pass and evaluate: the epoch's metrics, and ``(loss, learning rate)`` when the
        loss became NaN or infinite."""
        cfg, t_epoch = self.cfg, time.perf_counter()
        stage, s = epoch_settings(cfg, epoch, self.base_size, base_dropout)
        seed = _epoch_seed(cfg.seed, epoch)
        if cfg.progressive is not None or cfg.dropout is not None or hasattr(self.model, "set_dropout"):
            _set_dropout(self.model, s.dropout)  # a model without dropout is fine unless one is asked for
        desc = f"epoch {epoch + 1}/{cfg.epochs} stage {stage} {s.image_size}px"
        train_loss, seen, train_s, lr, diverged = self._train_pass(s, seed, desc)
        if diverged is None and not math.isfinite(train_loss):
            diverged = (train_loss, lr)
        val_size = cfg.eval_image_size or s.image_size
        if cfg.bn_recalibration and diverged is None:
            batches = self.train_batches.epoch(val_size, seed=seed)
            recalibrate_bn(self.eval_model, batches, self.runtime, cfg.bn_recalibration)
        metrics = {
            "epoch": epoch + 1,
            "stage": stage,
            "image_size": s.image_size,
            "dropout": s.dropout,
            "randaugment": s.randaugment,
            "mixup": s.mixup,
            "train_loss": train_loss if diverged is None else diverged[0],
            "val_accuracy": evaluate(self.eval_model, self.val_batches.epoch(val_size), self.runtime),
            "lr": lr,
            "epoch_time_s": time.perf_counter() - t_epoch,
            "images_per_s": seen / train_s if train_s > 0 else 0.0,
        }
        return metrics, diverged

    def _train_pass(self, s: StageSettings, seed: int, desc: str):
        """One pass over the training split: (mean loss, images, seconds, last learning rate, divergence)."""
        model, optimizer, runtime = self.model, self.optimizer, self.runtime
        batches = self.train_batches.epoch(s.image_size, randaugment=s.randaugment, seed=seed)
        mix = make_mixup(s.mixup, self.splits.num_classes)
        loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        seen, lr, diverged = 0, optimizer.param_groups[0]["lr"], None
        # Trials sharing this device train side by side, not while one of them times a step.
        with devicelock.training(), torch.random.fork_rng(devices=runtime.cuda_indices):
            torch.manual_seed(seed)
            model.train()
            bar = _progress(batches, self.progress, desc)
            t_train = time.perf_counter()
            for i, (images, labels) in enumerate(bar):
                check_interrupt()  # Ctrl-C stops here, between steps (nas.core.interrupt)
                t_step = time.perf_counter()
                if mix is not None:
                    images, labels = mix(images, labels)
                images = runtime.images(images)
                lr = optimizer.param_groups[0]["lr"]
                loss = self.step(images, labels)
                n = images.shape[0]
                loss_sum += loss.double() * n
                seen += n
                if (i + 1) % self.check_every == 0 and not bool(torch.isfinite(loss_sum)):
                    diverged = (float(loss), lr)
                    break
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(model)
                self.step_time += time.perf_counter() - t_step
                self.steps += 1
                if self.progress and (i + 1) % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", refresh=False)
            train_loss = float(loss_sum) / max(seen, 1)  # synchronises: the pass is over
            return train_loss, seen, time.perf_counter() - t_train, lr, diverged


def _base_settings(model: nn.Module, splits: Splits, cfg: TrainConfig) -> tuple[int, float]:
    """The image size and dropout a run starts from: the config's, else the architecture's."""
    if not isinstance(cfg, TrainConfig):
        raise NasError(f"fit() needs a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(splits, Splits):
        raise NasError(f"fit() needs Splits from nas.data.load_dataset, got {type(splits).__name__}")
    arch = getattr(model, "arch", None)
    base_size = cfg.image_size or getattr(arch, "resolution", None)
    if cfg.progressive is None and base_size is None:
        raise NasError("give TrainConfig.image_size: the model carries no architecture resolution")
    base_dropout = getattr(arch, "dropout", None)
    return base_size, _current_dropout(model) if base_dropout is None else base_dropout


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    state: dict[str, Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``splits.train`` for ``cfg.epochs`` epochs, evaluating on ``splits.val``.

    * ``on_epoch_end(epoch, metrics)`` is called after every epoch (``epoch`` 1-based; metrics keys:
      epoch, stage, image_size, dropout, randaugment, mixup, train_loss, val_accuracy, lr,
      epoch_time_s, images_per_s). Whatever it raises (e.g. ``optuna.TrialPruned``) propagates.
    * ``state``: a checkpoint from :func:`nas.training.checkpoint.load_checkpoint` to resume from (model,
      optimiser, schedule, EMA and history are restored; training continues at its epoch).
    * ``checkpoint_path``: written (atomically) after every epoch, before ``on_epoch_end``.
    * When the loss becomes NaN or infinite the epoch stops, ``on_epoch_end`` still gets its
      metrics (``train_loss`` non-finite), then :class:`TrainingDiverged` is raised; no checkpoint
      is written for that epoch.
    """
    base_size, base_dropout = _base_settings(model, splits, cfg)
    run = _Training(model, splits, cfg, base_size, progress)
    start_epoch, history = run.resume(state) if state is not None else (0, [])
    t_start = time.perf_counter()
    with run.running():
        for epoch in range(start_epoch, cfg.epochs):
            metrics, diverged = run.epoch(epoch, base_dropout)
            if diverged is not None:
                # Report the epoch (train_loss NaN/inf) so a caller's hook can react, e.g. the search
                # failing the trial, but never checkpoint the broken weights over good ones.
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, dict(metrics))
                raise TrainingDiverged(
                    f"training diverged: loss is {diverged[0]} at epoch {epoch + 1} "
                    f"(learning rate {diverged[1]:.3g}); lower the learning rate"
                )
            history.append(metrics)
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, run.checkpoint(epoch + 1, history))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, dict(metrics))
    accs = [h["val_accuracy"] for h in history]
    return TrainResult(
        val_accuracy=accs[-1] if accs else float("nan"),
        best_val_accuracy=max(accs) if accs else float("nan"),
        history=history,
        wall_time_s=time.perf_counter() - t_start,
        epochs_run=cfg.epochs - start_epoch,
        start_epoch=start_epoch,
        mean_step_time_s=run.step_time / run.steps if run.steps else 0.0,
        eval_model=run.eval_model,
        compiled=run.compiled,
    )


def _progress(loader, enabled: bool, desc: str):
    # disable=None: no bar when stderr is not a terminal (logs, CI), so files stay readable.
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None) if enabled else loader
