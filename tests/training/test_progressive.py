"""Progressive learning schedules: EfficientNetV2 Algorithm 1 with Table 6's values."""

from __future__ import annotations

import pytest

from nas.errors import NasError
from nas.training.progressive import PRESETS, ProgressiveSchedule, StageSettings, get_schedule

# EfficientNetV2 Table 6, stage by stage for M = 4: start and end are the paper's, the middle
# stages are the linear interpolation i / 3 (image size and RandAugment rounded to integers).
TABLE6 = {
    "s": [(128, 5, 0.0, 0.1), (185, 8, 0.0, 0.166667), (243, 12, 0.0, 0.233333), (300, 15, 0.0, 0.3)],
    "m": [(128, 5, 0.0, 0.1), (212, 10, 0.066667, 0.2), (296, 15, 0.133333, 0.3), (380, 20, 0.2, 0.4)],
    "l": [(128, 5, 0.0, 0.1), (212, 12, 0.133333, 0.233333), (296, 18, 0.266667, 0.366667), (380, 25, 0.4, 0.5)],
}


@pytest.mark.parametrize("name", ["s", "m", "l"])
def test_every_stage_matches_table6(name):
    sched = get_schedule(name)
    assert sched.stages == 4
    for i, (size, ra, mixup, dropout) in enumerate(TABLE6[name]):
        got = sched.stage(i)
        assert got.image_size == size and got.randaugment == ra
        assert got.mixup == pytest.approx(mixup, abs=1e-6)
        assert got.dropout == pytest.approx(dropout, abs=1e-6)


def test_preset_start_and_end_values_are_the_papers():
    assert (PRESETS["s"].size_start, PRESETS["s"].size_end) == (128, 300)
    assert (PRESETS["m"].randaugment_start, PRESETS["m"].randaugment_end) == (5, 20)
    assert (PRESETS["l"].mixup_start, PRESETS["l"].mixup_end) == (0.0, 0.4)
    assert (PRESETS["l"].dropout_start, PRESETS["l"].dropout_end) == (0.1, 0.5)


def test_epochs_form_m_contiguous_nearly_equal_chunks():
    sched = get_schedule("s")
    for epochs in (4, 5, 7, 10, 350):
        stages = [sched.stage_index(e, epochs) for e in range(epochs)]
        assert stages == sorted(stages) and set(stages) == {0, 1, 2, 3}
        counts = [stages.count(i) for i in range(4)]
        assert max(counts) - min(counts) <= 1 and sum(counts) == epochs
    assert sched.stage_for_epoch(0, 10) == sched.stage(0)
    assert sched.stage_for_epoch(9, 10) == sched.stage(3)


def test_fewer_epochs_than_stages_still_start_small_and_end_at_full_size():
    sched = get_schedule("m")
    assert [sched.stage_index(e, 2) for e in range(2)] == [0, 3]
    assert [sched.stage_index(e, 3) for e in range(3)] == [0, 2, 3]
    assert sched.stage_index(0, 1) == 3


def test_one_stage_trains_at_the_end_values():
    one = get_schedule("s", stages=1)
    assert one.stage(0) == StageSettings(300, 15, 0.0, 0.3)


def test_off_unknown_and_overrides():
    assert get_schedule("off") is None
    with pytest.raises(NasError, match="known: s, m, l, off"):
        get_schedule("xl")
    with pytest.raises(NasError, match="takes no overrides"):
        get_schedule("off", stages=3)
    sched = get_schedule("l", stages=3, size_start=16, size_end=32, dropout_end=0.45)
    assert [sched.stage(i).image_size for i in range(3)] == [16, 24, 32]
    assert sched.stage(2).dropout == pytest.approx(0.45)
    assert sched.stage(2).mixup == pytest.approx(0.4)


def test_size_end_alone_scales_the_start_with_the_presets_ratio():
    sched = get_schedule("s", size_end=32)
    assert (sched.size_start, sched.size_end) == (14, 32)  # 32 * 128 / 300 = 13.65
    assert sched.randaugment_end == 15 and sched.dropout_end == 0.3
    assert get_schedule("s").with_sizes(16, 24).stage(3).image_size == 24
    assert get_schedule("m").scaled_to(8).size_start == 8  # never below 8 px


@pytest.mark.parametrize(
    "change",
    [
        dict(dropout_end=1.0),
        dict(dropout_start=-0.1),
        dict(stages=0),
        dict(size_start=4),
        dict(randaugment_end=31),
        dict(mixup_end=float("nan")),
        dict(size_end=32.5),
        dict(stages=True),
    ],
)
def test_invalid_values_are_refused(change):
    with pytest.raises(NasError):
        PRESETS["s"].replace(**change)


def test_stage_index_out_of_range_is_refused():
    with pytest.raises(NasError):
        PRESETS["s"].stage(4)
    with pytest.raises(NasError):
        PRESETS["s"].stage_index(10, 10)


def test_dict_round_trip_and_unknown_fields():
    sched = get_schedule("m", size_end=64)
    assert ProgressiveSchedule.from_dict(sched.to_dict()) == sched
    with pytest.raises(NasError, match="unknown schedule field"):
        ProgressiveSchedule.from_dict({**sched.to_dict(), "sizes": 3})


def test_table_lists_every_stage_with_its_epochs():
    text = get_schedule("s").table(epochs=10)
    lines = text.splitlines()
    assert "image size" in lines[1] and "dropout" in lines[1]
    assert len(lines) == 2 + 4
    assert lines[2].split() == ["0", "1-3", "128", "5", "0", "0.1"]
    assert lines[5].split() == ["3", "9-10", "300", "15", "0", "0.3"]
