"""The paired train loader: every batch holds N positive and N negative images.

Positives and negatives come from two infinitely shuffled streams (detectron2 TrainingSamplers, each
with its own seed), zipped pair by pair, so a batch can never hold only one kind. Under detectron2's
``launch`` each TrainingSampler yields a disjoint slice of its stream to every rank, so each rank gets
its own pairs; within a rank, dataloader workers take whole pairs in turn.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import ToIterableDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from torch.utils.data import Sampler

from .mapper import MammogramDatasetMapper, PairedDatasetMapper
from .records import is_negative

logger = logging.getLogger(__name__)


def split_positive_negative(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(positives, negatives) of a list of dataset records, by whether a record holds a cancer box
    (:func:`~mammo_tl.data.records.is_negative`)."""
    positives, negatives = [], []
    for r in records:
        (negatives if is_negative(r) else positives).append(r)
    return positives, negatives


class PairSampler(Sampler):
    """Yields (positive index, negative index) forever from two independent TrainingSamplers."""

    def __init__(self, num_positives: int, num_negatives: int, positive_seed: int | None = None,
                 negative_seed: int | None = None) -> None:
        self.positives = TrainingSampler(num_positives, shuffle=True, seed=positive_seed)
        self.negatives = TrainingSampler(num_negatives, shuffle=True, seed=negative_seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from zip(self.positives, self.negatives)


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, positives, negatives, pair_mapper):
        self.positives = DatasetFromList(positives, copy=False)
        self.negatives = DatasetFromList(negatives, copy=False)
        self.pair_mapper = pair_mapper

    def __getitem__(self, index):
        i, j = index
        return self.pair_mapper((self.positives[i], self.negatives[j]))


def _collate_pairs(batch):
    """[(p1, n1), (p2, n2), ...] -> [p1, p2, ..., n1, n2, ...]: the i-th positive pairs the i-th negative."""
    return [p for p, _ in batch] + [n for _, n in batch]


def pairs_per_rank(cfg: CfgNode) -> int:
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % (2 * world) != 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} must be a multiple of 2 x #processes ({2 * world}) "
                         "with DATALOADER.PAIRED.ENABLED: each process gets N positive + N negative images")
    return total // world // 2


def build_paired_train_loader(cfg: CfgNode,
                              mapper: Callable[[dict], dict] | None = None) -> torch.utils.data.DataLoader:
    """A loader of lists [N positives..., N negatives...] from the records of cfg.DATASETS.TRAIN."""
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    positives, negatives = split_positive_negative(records)
    if not positives or not negatives:
        raise ValueError(f"DATALOADER.PAIRED needs positive and negative images in DATASETS.TRAIN="
                         f"{list(cfg.DATASETS.TRAIN)}; found {len(positives)} positive and {len(negatives)} "
                         "negative (records with annotations: [])")
    logger.info("Paired loader: %d positive and %d negative training images", len(positives), len(negatives))
    n = pairs_per_rank(cfg)
    seeds = [s if s >= 0 else None for s in (cfg.DATALOADER.PAIRED.POSITIVE_SEED, cfg.DATALOADER.PAIRED.NEGATIVE_SEED)]
    sampler = PairSampler(len(positives), len(negatives), *seeds)
    image_mapper = mapper or MammogramDatasetMapper(cfg, is_train=True)
    dataset = ToIterableDataset(_PairDataset(positives, negatives, PairedDatasetMapper(image_mapper)),
                                sampler, shard_chunk_size=n)
    return torch.utils.data.DataLoader(
        dataset, batch_size=n, drop_last=True, num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_collate_pairs, worker_init_fn=worker_init_reset_seed,
        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
    )
