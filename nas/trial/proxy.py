"""The ``train`` evaluator: a candidate's cost on the run's target, then a proxy of it trained briefly.

The cost comes from the run's prepared target (:mod:`nas.trial.target`) through its step-time
method's source (:mod:`nas.steptime.methods`): the full-size candidate at the target setting
(``table``, ``measure``), or the shrunk proxy at the proxy's size (``proxy``). ``image_scale``
(compound scaling's resolution, EfficientNet section 3.3) multiplies the proxy's image size and the
target's for one candidate, while the reference stays at the run's sizes, so S stays comparable.
Then the proxy (:func:`nas.trial.settings.proxy_arch`) trains for the proxy's epochs
(:func:`nas.training.loop.fit`) and its validation top-1 accuracy is A.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from nas.core.device import Runtime
from nas.core.memory import check_step_memory, is_out_of_memory
from nas.data import load_dataset, probe
from nas.steptime.costs import get_cost
from nas.training.config import TrainingDiverged
from nas.training.loop import fit
from nas.trial.evaluator import Evaluator, OnEpoch, TrialFailed, TrialPruned, register_evaluator
from nas.trial.settings import ProxyConfig, proxy_arch
from search_spaces import Architecture, build, count_params


def repeat_seed(seed: int) -> int:
    """The seed a trial's second training uses: another trial's only in a run of over 2**30 trials
    (seeds are 31-bit)."""
    return (seed + 2**30) % 2**31


DRIFT_TOLERANCE = 0.25  # a re-timed reference this far from the one in use means the machine's load changed


@register_evaluator("train")
class TrainingEvaluator(Evaluator):
    help = "train a proxy of each candidate briefly and take its validation accuracy (default)"

    def __init__(self, settings, *, target=None, reference=None, data=None):
        super().__init__(settings, target=target, reference=reference, data=data)
        self.method = settings.step_time.method_kind
        self.cost_kind = get_cost(self.target.cost)
        self.source = self.method.source(self.target, self.space)

    @classmethod
    def load_data(cls, settings):
        """The data set, loaded and probed (:func:`nas.data.probe`): two classes at least, images that decode."""
        return probe(load_dataset(settings.dataset, settings.data_dir, seed=settings.seed))

    @property
    def splits(self):
        return self.data

    def samples_fidelity(self, number: int) -> bool:
        every = self.settings.step_time.fidelity_every
        return self.method.predicted and every > 0 and number % every == 0

    def describe(self) -> str:
        st, t = self.target.setting, self.target
        what = (
            f"the full-size {self.cost_kind.what} at {st['image_size']} px, batch {st['batch_size']}"
            if self.method.full_size
            else f"the proxy's training step ({st['image_size']} px, batch {st['batch_size']})"
        )
        how = "predicted by the step-time table" if self.method.predicted else "measured"
        return f"S = {what}, {how} on the target {t.describe()} [target {t.identity}], relative to the reference"

    # -- one candidate ----------------------------------------------------------------------------
    def proxy(self, image_scale: float = 1.0) -> ProxyConfig:
        p = self.settings.proxy
        return p if image_scale == 1.0 else p.at_image_size(round(p.image_size * image_scale))

    def timed_setting(self, arch: Architecture, image_scale: float = 1.0) -> tuple[Architecture, int, int]:
        """(architecture, image size, batch) whose cost stands for ``arch``."""
        st = self.target.setting
        if self.method.full_size:
            return arch, max(8, round(st["image_size"] * image_scale)), st["batch_size"]
        p = self.proxy(image_scale)
        return proxy_arch(arch, p), p.image_size, p.train.batch_size

    def known(self, arch: Architecture, *, image_scale: float = 1.0, fidelity: bool = False) -> dict[str, Any]:
        timed, size, batch = self.timed_setting(arch, image_scale)
        cost = self.source.cost(timed, size, batch)
        out = {
            **self.size(arch),
            "cost": self.target.cost,
            "cost_ms": cost["ms"],
            self.cost_kind.column: cost["ms"],
            "S": cost["ms"] / self.target.reference_ms,
            "reference_ms": self.target.reference_ms,
            "step_time_method": self.method.name,
            "step_iqr_ms": cost["iqr_ms"],
            "measured_ms": cost["measured_ms"],
            "step_image_size": size,
            "step_batch_size": batch,
            "target_id": self.target.identity,
            **self._target_setting(),
            "target_device": self.target.describe(),
        }
        if fidelity:
            out["measured_ms"], out["fidelity_skipped"] = self.source.direct(timed, size, batch)
        return out

    def _target_setting(self) -> dict[str, Any]:
        """What S stands for: the target setting (None for the proxy's own step)."""
        st = self.target.setting if self.method.full_size else {}
        return {"target_image_size": st.get("image_size"), "target_batch_size": st.get("batch_size")}

    def drift(self) -> dict[str, Any] | None:
        if self.method.predicted:
            return None
        timed, size, batch = self.timed_setting(self.reference_arch)
        now, _ = self.source.direct(timed, size, batch)
        ref = self.target.reference_ms
        if now is None or abs(now / ref - 1.0) <= DRIFT_TOLERANCE:
            return None
        return {"reference_ms": ref, "retimed_ms": now, "change": now / ref - 1.0}

    def evaluate(
        self,
        arch: Architecture,
        *,
        seed: int = 0,
        image_scale: float = 1.0,
        fidelity: bool = False,
        on_epoch: OnEpoch | None = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        p = self.proxy(image_scale)
        small = proxy_arch(arch, p)
        measured: dict[str, Any] = {}
        try:
            known = self.known(arch, image_scale=image_scale, fidelity=fidelity)
            measured = {**known, "proxy_arch": small.to_string()}
            t_known = time.perf_counter()
            acc = self._train(small, p, seed, known, measured, on_epoch)
            metrics = {
                **measured,
                "accuracy": acc,
                "epochs": p.epochs,
                "proxy_params": count_params(small, self.num_classes),
                "time_s": t_known - t0,
                "train_s": time.perf_counter() - t_known,
            }
            measured = metrics
            return self.score(metrics)
        except TrialPruned:
            raise
        except Exception as e:
            failure = _failure(e, measured)
            if failure is e:
                raise
            raise failure from None

    def repeat(self, arch: Architecture, *, seed: int, image_scale: float = 1.0) -> float | None:
        p = self.proxy(image_scale)
        return self._train(proxy_arch(arch, p), p, repeat_seed(seed), {}, {}, None)

    def _train(
        self,
        small: Architecture,
        p: ProxyConfig,
        seed: int,
        known: dict[str, Any],
        measured: dict[str, Any],
        on_epoch: OnEpoch | None,
    ) -> float:
        """Train the proxy; its final validation accuracy. ``measured`` follows every epoch."""
        cfg = p.train_config(device=self.settings.device, seed=seed, compile=self.settings.compile)
        check_step_memory(
            small,
            cfg.batch_size,
            p.image_size,
            self.num_classes,
            Runtime.resolve(cfg.device),
            optimizer=cfg.optimizer,
            hint="lower the proxy's --batch-size or --image-size",
        )
        torch.manual_seed(seed)
        model = build(small, self.num_classes)

        def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
            loss = metrics.get("train_loss")
            if loss is not None and not math.isfinite(loss):
                raise TrialFailed(f"training diverged: loss {loss} at epoch {epoch}")
            acc = float(metrics["val_accuracy"])
            measured.update(accuracy=acc, epochs=epoch)
            if on_epoch is not None and on_epoch(epoch, acc, known):
                raise TrialPruned(f"stopped after epoch {epoch}", dict(measured))

        acc = float(fit(model, self.splits, cfg, on_epoch_end=on_epoch_end, progress=False).val_accuracy)
        if not math.isfinite(acc):
            raise TrialFailed(f"accuracy is {acc}")
        return acc


def _failure(e: Exception, measured: dict[str, Any]) -> Exception:
    """The exception a failed trial ends with, carrying what was measured before it failed."""
    failure = e
    if isinstance(e, TrainingDiverged):
        failure = TrialFailed(str(e))
    elif is_out_of_memory(e):
        failure = TrialFailed(
            f"out of memory: {str(e).splitlines()[0]}; lower the proxy's --batch-size or --image-size"
        )
    failure.metrics = {k: v for k, v in measured.items() if k != "reward"}
    return failure
