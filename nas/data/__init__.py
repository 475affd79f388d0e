"""Data: the data sets (:mod:`nas.data.sets`), what happens to a batch on the device
(:mod:`nas.data.augment`) and the batches a training run consumes (:mod:`nas.data.batches`)."""

from nas.data.augment import (
    MEAN,
    STD,
    BatchRandAugment,
    check_mixup,
    check_randaugment,
    make_mixup,
    make_randaugment,
    normalise,
    resize,
)
from nas.data.batches import Batches, Epoch, make_batches, make_loader
from nas.data.sets import (
    DATASETS,
    DEFAULT_DATA_DIR,
    Splits,
    TensorImages,
    check_dataset_name,
    load_dataset,
    probe,
    split_indices,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "MEAN",
    "STD",
    "BatchRandAugment",
    "Batches",
    "Epoch",
    "Splits",
    "TensorImages",
    "check_dataset_name",
    "check_mixup",
    "check_randaugment",
    "load_dataset",
    "make_batches",
    "make_loader",
    "make_mixup",
    "make_randaugment",
    "normalise",
    "probe",
    "resize",
    "split_indices",
]
