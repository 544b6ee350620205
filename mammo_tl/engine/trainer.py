"""Trainer(DefaultTrainer): mammogram loaders, the paired loader, Adam, evaluators."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..compat import cpu_ddp
from ..data import MammogramDatasetMapper, build_paired_train_loader
from ..evaluation.evaluators import PatientEvaluator
from ..evaluation.operating_points import FILE_NAME as OP_FILE_NAME
from ..evaluation.operating_points import OperatingPointError, load_operating_points
from .checkpoint import MammoCheckpointer
from .hooks import BestCheckpointHook

if TYPE_CHECKING:
    from detectron2.config import CfgNode
    from detectron2.engine import HookBase
    from detectron2.evaluation import DatasetEvaluator


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
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


def operating_points_of(cfg: CfgNode) -> dict[str, dict]:
    """TEST.PATIENT.OPERATING_POINTS resolved for --eval-only: name -> point, checked against MODEL.WEIGHTS;
    {} for none. (Never during training: the points belong to the weights they were chosen for.)"""
    key = cfg.TEST.PATIENT.OPERATING_POINTS
    weights = cfg.MODEL.WEIGHTS
    local = bool(weights) and os.path.isfile(weights)
    if key == "auto":
        key = os.path.join(os.path.dirname(os.path.abspath(weights)), OP_FILE_NAME) if local else ""
        if not key or not os.path.exists(key):
            return {}
    if not key:
        return {}
    if not local:
        raise OperatingPointError(f"TEST.PATIENT.OPERATING_POINTS {key}: operating points belong to the weights "
                                  f"they were chosen for, but MODEL.WEIGHTS {weights!r} is not a local file")
    return load_operating_points(key, weights)["points"]


def build_train_loader(cfg: CfgNode) -> torch.utils.data.DataLoader:
    """The paired loader when DATALOADER.PAIRED.ENABLED, else detectron2's loader (which drops
    negative images unless DATALOADER.FILTER_EMPTY_ANNOTATIONS is False)."""
    mapper = MammogramDatasetMapper(cfg, is_train=True)
    if cfg.DATALOADER.PAIRED.ENABLED:
        return build_paired_train_loader(cfg, mapper)
    return build_detection_train_loader(cfg, mapper=mapper)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        with cpu_ddp():  # DefaultTrainer.__init__ wraps the model for DDP under launch, CPU included
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> torch.utils.data.DataLoader:
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> torch.utils.data.DataLoader:
        return build_detection_test_loader(cfg, dataset_name, mapper=MammogramDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None,
                        operating_points: Mapping[str, dict] | None = None) -> DatasetEvaluators:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # COCOEvaluator records the COCO file it converts to as metadata "json_file" and reads any such file
        # as-is later. mammo_tl's datasets never set it, so a value here is an earlier conversion, possibly
        # in another output folder or of other records: convert again from the records.
        metadata = MetadataCatalog.get(dataset_name)
        if hasattr(metadata, "json_file"):
            delattr(metadata, "json_file")
        p = cfg.TEST.PATIENT
        return DatasetEvaluators([
            # never a cached COCO file: it would hold the previous run's test set if the records changed
            COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder,
                          allow_cached_coco=False),
            PatientEvaluator(dataset_name, output_folder, threshold=p.THRESHOLD, bootstrap=p.BOOTSTRAP,
                             seed=cfg.SEED if cfg.SEED >= 0 else 0, operating_points=operating_points),
        ])

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module,
             evaluators: DatasetEvaluator | Sequence[DatasetEvaluator] | None = None) -> OrderedDict:
        """detectron2's test(), plus the results written to OUTPUT_DIR/inference/eval_results.json."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, "inference", "eval_results.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(results, f, indent=1, default=float)
        return results

    def build_hooks(self) -> list[HookBase]:
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer just before calling build_hooks, which
        # hands it to the checkpoint hooks: swapped here, resume_or_load and every hook use the safe loader
        self.checkpointer = MammoCheckpointer.like(self.checkpointer, purpose="train",
                                                   trusted_pickle=self.cfg.MODEL.WEIGHTS_TRUSTED_PICKLE)
        ret = super().build_hooks()
        cfg = self.cfg
        if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST:
            metric = f"patient/{cfg.TEST.PATIENT.BEST_METRIC}"
            if len(cfg.DATASETS.TEST) > 1:
                metric = f"{cfg.DATASETS.TEST[0]}/{metric}"
            at = next(i for i, h in enumerate(ret) if isinstance(h, d2_hooks.EvalHook))
            ret.insert(at + 1, BestCheckpointHook(cfg.TEST.EVAL_PERIOD, self.checkpointer, metric))
        return ret
