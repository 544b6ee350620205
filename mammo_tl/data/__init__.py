from . import datasets  # noqa: F401  (registers the built-in data sets)
from .build import PairSampler, build_paired_train_loader, split_positive_negative
from .records import is_negative
from .mapper import MammogramDatasetMapper, PairedDatasetMapper, build_mammo_augmentation

__all__ = ["build_paired_train_loader", "split_positive_negative", "PairSampler", "MammogramDatasetMapper",
           "PairedDatasetMapper", "build_mammo_augmentation", "is_negative"]
