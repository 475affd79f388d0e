"""The training loop: progressive stages observed where they act (the model and the batches),
seeding, the callback, divergence."""

from __future__ import annotations

import optuna
import pytest
from torch import nn

import nas.data.batches as batches_mod
import nas.training.loop as train_mod
from nas.data import load_dataset
from nas.training.config import TrainingDiverged
from nas.training.loop import fit
from nas.training.progressive import get_schedule


def test_each_stage_sets_the_dropout_the_model_uses_and_the_size_it_sees(small, tiny_model, cfg, monkeypatch):
    sched = get_schedule("l", size_start=8, size_end=16)  # 8, 11, 13, 16 px; mixup 0 -> 0.4
    model = tiny_model()
    seen_dropout, seen_size, per_epoch = set(), set(), []
    model.dropout.register_forward_pre_hook(lambda m, inp: seen_dropout.add(round(m.p, 6)) if m.training else None)
    model.register_forward_pre_hook(lambda m, inp: seen_size.add(inp[0].shape[-1]) if m.training else None)
    loader_args, mixups = [], []
    real_augment, real_mixup = batches_mod.make_randaugment, train_mod.make_mixup

    def spy_augment(magnitude):
        loader_args.append(magnitude)
        return real_augment(magnitude)

    def spy_mixup(alpha, num_classes):
        mix = real_mixup(alpha, num_classes)
        if mix is None:
            mixups.append((alpha, 0))
            return None
        mixups.append([alpha, 0])

        def counted(x, y):
            mixups[-1][1] += 1
            return mix(x, y)

        return counted

    monkeypatch.setattr(batches_mod, "make_randaugment", spy_augment)
    monkeypatch.setattr(train_mod, "make_mixup", spy_mixup)

    def on_epoch_end(epoch, metrics):
        per_epoch.append((set(seen_dropout), set(seen_size), metrics))
        seen_dropout.clear()
        seen_size.clear()

    fit(model, small, cfg(epochs=4, progressive=sched), on_epoch_end=on_epoch_end, progress=False)
    assert len(per_epoch) == 4
    for i, (drop, size, metrics) in enumerate(per_epoch):
        st = sched.stage(i)
        assert drop == {round(st.dropout, 6)} and size == {st.image_size}
        assert (metrics["stage"], metrics["image_size"], metrics["dropout"]) == (i, st.image_size, st.dropout)
    assert [d for d, _, _ in per_epoch] == [{0.1}, {0.233333}, {0.366667}, {0.5}]
    assert loader_args == [5, 12, 18, 25]
    assert [round(a, 6) for a, _ in mixups] == [0.0, 0.133333, 0.266667, 0.4]
    assert mixups[0][1] == 0 and all(n == 256 // 32 for _, n in mixups[1:])  # every batch mixed


def test_fixed_size_training_uses_the_architecture_defaults(small, tiny_model, cfg):
    model = tiny_model()
    sizes = set()
    model.register_forward_pre_hook(lambda m, inp: sizes.add(inp[0].shape[-1]) if m.training else None)
    result = fit(model, small, cfg(epochs=1), progress=False)
    assert sizes == {16} and model.dropout.p == pytest.approx(0.2)  # res16, drop0.2 of TINY_TRAIN
    assert result.history[0]["image_size"] == 16 and result.epochs_run == 1


def test_tiny_network_learns_the_fake_set(tiny_model, cfg):
    splits = load_dataset("fake")
    result = fit(tiny_model(), splits, cfg(epochs=3, image_size=16), progress=False)
    assert result.val_accuracy > 0.3  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_result_other_seed_differs(small, tiny_model, cfg):
    c = cfg(epochs=2, image_size=12, randaugment=7, mixup=0.2)
    timings = ("epoch_time_s", "images_per_s")
    strip = lambda r: [{k: v for k, v in h.items() if k not in timings} for h in r.history]  # noqa: E731
    a = fit(tiny_model(), small, c, progress=False)
    b = fit(tiny_model(), small, c, progress=False)
    other = fit(tiny_model(), small, cfg(epochs=2, image_size=12, randaugment=7, mixup=0.2, seed=1), progress=False)
    assert strip(a) == strip(b)
    assert strip(a) != strip(other)


def test_pruning_exception_from_the_callback_propagates(small, tiny_model, cfg):
    calls = []

    def prune(epoch, metrics):
        calls.append(epoch)
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        fit(tiny_model(), small, cfg(epochs=3, image_size=8), on_epoch_end=prune, progress=False)
    assert calls == [1]


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x.mean((2, 3))) * float("nan")


def test_divergence_reports_the_epoch_then_raises(small, cfg, tmp_path):
    seen = []
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit(
            _NaNNet(),
            small,
            cfg(image_size=8),
            on_epoch_end=lambda e, m: seen.append(m["train_loss"]),
            checkpoint_path=tmp_path / "c.pt",
            progress=False,
        )
    assert len(seen) == 1 and seen[0] != seen[0]  # NaN
    assert not (tmp_path / "c.pt").exists()
