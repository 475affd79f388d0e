"""The settings that define a search, frozen, checked on construction and round-tripping through
JSON, so the same settings travel to a worker process or a Ray node and are stored with a run:
:class:`TrialSettings` (what is searched, on which data, scored how), :class:`ProxyConfig` (how a
candidate is shrunk and trained briefly) and the step-time configuration it carries
(:class:`nas.steptime.methods.StepTimeConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nas.core.device import check_device
from nas.data import check_dataset_name
from nas.errors import NasError, check_choice, check_int, check_positive
from nas.steptime.methods import StepTimeConfig
from nas.training.config import TrainConfig
from nas.training.progressive import get_schedule
from rewards import get_reward
from search_spaces import Architecture, get_space, scale

# The proxy's training recipe: AdamW at a fixed learning rate, no warm-up, BatchNorm re-estimated on 8
# batches before each evaluation (in a 4-epoch run the running averages lag far behind the weights, so
# early epochs would score chance and the pruner would act on noise).
PROXY_TRAINING = TrainConfig(
    epochs=4,
    batch_size=64,
    optimizer="adamw",
    lr=0.005,
    image_size=32,
    eval_image_size=32,
    warmup_epochs=0.0,
    bn_recalibration=8,
)


@dataclass(frozen=True)
class ProxyConfig:
    """How a candidate is shrunk (width, depth) and trained (``train``: image size, epochs, ...)."""

    width: float = 0.25
    depth: float = 0.25
    train: TrainConfig = PROXY_TRAINING

    def __post_init__(self) -> None:
        check_positive("proxy width multiplier", self.width)
        check_positive("proxy depth multiplier", self.depth)
        if not isinstance(self.train, TrainConfig):
            raise NasError(f"proxy training must be a TrainConfig, got {type(self.train).__name__}")
        if self.train.image_size is None:
            raise NasError("proxy training needs an image size")

    @classmethod
    def of(
        cls, *, width: float = 0.25, depth: float = 0.25, image_size: int = 32, progressive: str = "off", **train: Any
    ) -> ProxyConfig:
        """From the ``nas search`` flags: the image size sets training and evaluation size, and a
        progressive schedule (``s``, ``m``, ``l``) is scaled to end at it (EfficientNetV2 section 4.2)."""
        check_int("proxy image size", image_size, 8, 1024)
        cfg = dataclasses.replace(PROXY_TRAINING, image_size=image_size, eval_image_size=image_size, **train)
        return cls(width=width, depth=depth, train=cfg).with_progressive(progressive)

    def with_progressive(self, name: str) -> ProxyConfig:
        sched = get_schedule(name)
        if sched is not None:
            size = self.image_size
            sched = sched.with_sizes(max(8, size // 2), size)
        return dataclasses.replace(self, train=dataclasses.replace(self.train, progressive=sched))

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def epochs(self) -> int:
        return self.train.epochs

    def at_image_size(self, size: int) -> ProxyConfig:
        """The same proxy trained and evaluated at ``size`` px (compound scaling's resolution)."""
        check_int("proxy image size", size, 8, 1024)
        sched = self.train.progressive
        if sched is not None:
            sched = sched.with_sizes(max(8, size // 2), size)
        return dataclasses.replace(
            self, train=dataclasses.replace(self.train, image_size=size, eval_image_size=size, progressive=sched)
        )

    def train_config(self, *, device: str, seed: int, compile: str | None = None) -> TrainConfig:
        changes: dict[str, Any] = {"device": device, "seed": seed}
        if compile is not None and "compile" in {f.name for f in dataclasses.fields(TrainConfig)}:
            changes["compile"] = compile
        return dataclasses.replace(self.train, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProxyConfig:
        return cls(width=d["width"], depth=d["depth"], train=TrainConfig.from_dict(d["train"]))


def proxy_arch(arch: Architecture, proxy: ProxyConfig) -> Architecture:
    """The candidate at proxy scale (V2 rounding, so tiny widths stay multiples of 8)."""
    return scale(arch, width=proxy.width, depth=proxy.depth, resolution=proxy.image_size, rounding="v2")


@dataclass(frozen=True)
class TrialSettings:
    """What defines a search: two runs with equal settings are the same experiment. Checked on
    construction (the space and reward must be registered: import plugins first)."""

    space: str = "trainaware"
    dataset: str = "digits"
    data_dir: str | None = None
    reward: str = "trainaware"
    reward_params: dict = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    step_time: StepTimeConfig = field(default_factory=StepTimeConfig)
    compile: str = "auto"  # torch.compile of the training steps trained and timed: auto, on, off (nas.training.step)
    evaluator: str = "train"  # how a candidate is scored (nas.trial.evaluator.EVALUATORS; checked where it is made)
    accuracy_every: int = 5  # every k-th trial is trained again with another seed: A's seed noise (0: never)

    def __post_init__(self) -> None:
        if not isinstance(self.evaluator, str) or not self.evaluator:
            raise NasError(f"--evaluator must name an evaluator, got {self.evaluator!r}")
        get_space(self.space)
        get_reward(self.reward, **self.reward_params)
        check_dataset_name(self.dataset)
        check_device(self.device)
        check_choice("compile", self.compile, ("auto", "on", "off"))
        check_int("seed", self.seed, 0, 2**31 - 1_000_001)  # trial seeds add the trial number
        check_int("--accuracy-every", self.accuracy_every, 0, 1_000_000)
        for name, typ in (("proxy", ProxyConfig), ("step_time", StepTimeConfig)):
            if not isinstance(getattr(self, name), typ):
                raise NasError(f"{name} must be a {typ.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "reward": self.reward,
            "reward_params": dict(self.reward_params),
            "device": self.device,
            "seed": self.seed,
            "proxy": self.proxy.to_dict(),
            "step_time": self.step_time.to_dict(),
            "compile": self.compile,
            "evaluator": self.evaluator,
            "accuracy_every": self.accuracy_every,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSettings:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise NasError(f"unknown trial setting(s) {', '.join(unknown)}")
        d = dict(d)
        d["proxy"] = ProxyConfig.from_dict(d["proxy"])
        d["step_time"] = StepTimeConfig.from_dict(d["step_time"])
        return cls(**d)
