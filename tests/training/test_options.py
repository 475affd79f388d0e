"""What a user asks of a run, resolved to a training config: the schedule fitted to the target size,
fixed-size training, and flags of one kind refused with the other."""

from __future__ import annotations

import pytest

from nas.errors import NasError
from nas.training.options import TrainOptions, training_config


def test_a_schedule_beyond_the_target_size_is_scaled_to_end_there():
    small = training_config(TrainOptions("a"), target=32)  # digits: 4 x 8 px
    assert (small.progressive.size_start, small.progressive.size_end, small.eval_image_size) == (14, 32, 32)
    large = training_config(TrainOptions("a"), target=384)  # Table 6's 128 -> 300 px fits under 384
    assert (large.progressive.size_start, large.progressive.size_end, large.eval_image_size) == (128, 300, 300)
    given = training_config(TrainOptions("a", image_size_end=20, eval_image_size=24), target=32)
    assert (given.progressive.size_start, given.progressive.size_end, given.eval_image_size) == (9, 20, 24)


def test_fixed_size_training_trains_at_the_target_unless_told():
    off = training_config(TrainOptions("a", progressive="off"), target=32)
    assert off.progressive is None and off.image_size == off.eval_image_size == 32
    assert (off.randaugment, off.mixup, off.dropout) == (0.0, 0.0, None)
    told = training_config(TrainOptions("a", progressive="off", image_size=24, mixup=0.2), target=32)
    assert (told.image_size, told.eval_image_size, told.mixup) == (24, 24, 0.2)


@pytest.mark.parametrize(
    "options, flag",
    [
        (TrainOptions("a", image_size=24), "--image-size set(s) fixed-size training"),
        (TrainOptions("a", dropout=0.1, mixup=0.2), "--mixup, --dropout set(s) fixed-size training"),
        (TrainOptions("a", progressive="off", stages=3), "--stages set(s) a progressive schedule"),
        (TrainOptions("a", progressive="off", randaugment_end=9), "--randaugment-end set(s) a progressive"),
    ],
)
def test_flags_of_the_other_kind_of_training_are_refused(options, flag):
    with pytest.raises(NasError, match=flag.replace("(", r"\(").replace(")", r"\)")):
        training_config(options, target=32)
