"""Trainer(DefaultTrainer): mammogram loaders, the paired loader, Adam, evaluators."""
import os

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..compat import patch_cpu_ddp
from ..data import MammogramDatasetMapper, build_paired_train_loader

patch_cpu_ddp()


def build_optimizer(cfg, model):
    """SOLVER.OPTIMIZER: "ADAM" (the paper) or "SGD" (detectron2's own builder)."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return DefaultTrainer.build_optimizer(cfg, model)
    if name != "ADAM":
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAM' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.ADAM_BETAS),
                                 weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    return maybe_add_gradient_clipping(cfg, optimizer)


def build_train_loader(cfg):
    """The paired loader when DATALOADER.PAIRED.ENABLED, else detectron2's loader (which drops
    negative images unless DATALOADER.FILTER_EMPTY_ANNOTATIONS is False)."""
    mapper = MammogramDatasetMapper(cfg, is_train=True)
    if cfg.DATALOADER.PAIRED.ENABLED:
        return build_paired_train_loader(cfg, mapper)
    return build_detection_train_loader(cfg, mapper=mapper)


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=MammogramDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluators = [COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder)]
        return DatasetEvaluators(evaluators)
