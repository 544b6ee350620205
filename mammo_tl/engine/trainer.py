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
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..compat import cpu_ddp
from ..data import MammogramDatasetMapper, build_paired_train_loader
from ..evaluation.evaluators import CancerCOCOEvaluator, PatientEvaluator
from ..evaluation.operating_points import FILE_NAME as OP_FILE_NAME
from ..evaluation.operating_points import OperatingPointError, load_operating_points
from ..checkpoint import MammoCheckpointer
from .hooks import VALIDATION_PREFIX, BestCheckpointHook, FinalTestHook, ValidationHook

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
            CancerCOCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder,
                                allow_cached_coco=False),
            PatientEvaluator(dataset_name, output_folder, threshold=p.THRESHOLD, bootstrap=p.BOOTSTRAP,
                             seed=cfg.SEED if cfg.SEED >= 0 else 0, operating_points=operating_points),
        ])

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module,
             evaluators: DatasetEvaluator | Sequence[DatasetEvaluator] | None = None,
             folder: str = "inference") -> OrderedDict:
        """detectron2's test(), plus the results written to OUTPUT_DIR/<folder>/eval_results.json (each test
        set's files in OUTPUT_DIR/<folder>/<set>/)."""
        if evaluators is None and folder != "inference":
            evaluators = [cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, folder, name))
                          for name in cfg.DATASETS.TEST]
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            path = os.path.join(cfg.OUTPUT_DIR, folder, "eval_results.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(results, f, indent=1, default=float)
        return results

    @classmethod
    def validate(cls, cfg: CfgNode, model: torch.nn.Module) -> dict[str, float]:
        """The validation sets' metrics for model selection and learning curves, as flat scalars
        "validation/[<set>/]<metric>": patient AUC, sensitivity and specificity at TEST.PATIENT.THRESHOLD,
        specificity at the highest threshold reaching sensitivity 0.9 on the same patients
        (``patient/specificity@sensitivity_0.9``), FROC CPM and the cancer class's COCO AP50 (``bbox/AP50``).
        No bootstrap; only detectron2's COCO files, in OUTPUT_DIR/validation/<set>/: what a learning curve needs."""
        from detectron2.evaluation import inference_on_dataset

        from ..evaluation.operating_points import choose_operating_points

        out = {}
        names = list(cfg.DATASETS.VALIDATION)
        for name in names:
            patient = PatientEvaluator(name, output_dir=None, threshold=cfg.TEST.PATIENT.THRESHOLD, bootstrap=0)
            # detectron2 converts the records to a COCO file in output_dir (and writes the latest boxes there)
            coco = CancerCOCOEvaluator(name, tasks=("bbox",), distributed=True, allow_cached_coco=False,
                                       output_dir=os.path.join(cfg.OUTPUT_DIR, VALIDATION_PREFIX, name))
            results = inference_on_dataset(model, cls.build_test_loader(cfg, name), DatasetEvaluators([coco, patient]))
            if not comm.is_main_process():
                continue
            prefix = f"{VALIDATION_PREFIX}/{name}/" if len(names) > 1 else f"{VALIDATION_PREFIX}/"
            flat = {"patient/auc": results["patient"]["auc"], "patient/sensitivity": results["patient"]["sensitivity"],
                    "patient/specificity": results["patient"]["specificity"], "froc/cpm": results["froc"]["cpm"],
                    "bbox/AP50": results.get("bbox", {}).get("AP50", float("nan"))}
            try:
                point = choose_operating_points(patient.patient_scores, patient.patient_labels, (0.9,), ())
                flat["patient/specificity@sensitivity_0.9"] = point["sensitivity_0.9"]["validation"]["specificity"]
            except (OperatingPointError, KeyError):  # one class only, or 0.9 unreachable
                flat["patient/specificity@sensitivity_0.9"] = float("nan")
            out.update({prefix + k: float(v) for k, v in flat.items()})
        return out

    def build_hooks(self) -> list[HookBase]:
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer just before calling build_hooks, which
        # hands it to the checkpoint hooks: swapped here, resume_or_load and every hook use the safe loader
        self.checkpointer = MammoCheckpointer.like(self.checkpointer, purpose="train",
                                                   trusted_pickle=self.cfg.MODEL.WEIGHTS_TRUSTED_PICKLE)
        ret = super().build_hooks()
        cfg = self.cfg
        if not cfg.DATASETS.VALIDATION:
            return ret  # detectron2's EvalHook: DATASETS.TEST once, after the last iteration (EVAL_PERIOD 0)
        # models are chosen on the validation sets: detectron2's EvalHook, which would read DATASETS.TEST during
        # training, gives way to validation, selection, and one test of the chosen and the final checkpoints
        names = list(cfg.DATASETS.VALIDATION)
        metric = f"{VALIDATION_PREFIX}/{names[0] + '/' if len(names) > 1 else ''}patient/{cfg.TEST.PATIENT.BEST_METRIC}"
        best = BestCheckpointHook(cfg.TEST.EVAL_PERIOD, self.checkpointer, metric)
        at = next(i for i, h in enumerate(ret) if isinstance(h, d2_hooks.EvalHook))
        ret[at:at + 1] = [ValidationHook(cfg.TEST.EVAL_PERIOD, lambda: self.validate(self.cfg, self.model),
                                         cfg.OUTPUT_DIR),
                          best, FinalTestHook(best, self._test_checkpoint, cfg.OUTPUT_DIR, names[0])]
        return ret

    def _test_checkpoint(self, weights: str | None, folder: str) -> OrderedDict:
        """DATASETS.TEST evaluated into OUTPUT_DIR/<folder>/ on the trained model (``weights`` None) or on a
        fresh model holding ``weights`` (the chosen checkpoint)."""
        if weights is None:
            return self.test(self.cfg, self.model, folder=folder)
        from ..checkpoint import load_model_weights

        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        model = self.build_model(cfg)
        load_model_weights(model, cfg, purpose="evaluate")
        return self.test(cfg, model, folder=folder)
