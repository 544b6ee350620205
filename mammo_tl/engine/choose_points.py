"""Operating points of a trained model, chosen on a validation set (tools/operating_points.py)."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset

from ..config import get_mammo_tl_cfg
from ..data.datasets.common import register_json_datasets
from ..evaluation.evaluators import PatientEvaluator
from ..evaluation.operating_points import OperatingPointError, choose_operating_points, write_operating_points
from ..checkpoint import load_model_weights
from .trainer import Trainer

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)


def build_cfg(config_file: str | os.PathLike, opts: Sequence[str] = ()) -> CfgNode:
    """The config as train_net.py builds it, without writing anything to OUTPUT_DIR."""
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    register_json_datasets(cfg.DATASETS.REGISTER_JSON)
    return cfg


def choose_points(cfg: CfgNode, dataset: str, sensitivities: Sequence[float] = (0.90, 0.95),
                  specificities: Sequence[float] = (0.90,), output: str | None = None) -> tuple[str, dict[str, Any]]:
    """Run the model of cfg.MODEL.WEIGHTS on ``dataset`` (validation: refused when it is, or shares patients
    with, one of cfg.DATASETS.TEST), choose the operating points on its patients and write them beside the
    weights (or to ``output``). Returns (path, points)."""
    if not (cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS)):
        raise OperatingPointError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}: operating points are stored beside, and "
                                  "keyed by, a local weights file (a trained model's model_final.pth)")
    if dataset in cfg.DATASETS.TEST:
        raise OperatingPointError(f"{dataset!r} is in DATASETS.TEST: operating points are chosen on a validation "
                                  "set, never on the test set they are reported on")
    if dataset not in DatasetCatalog:
        raise OperatingPointError(f"dataset {dataset!r} is not registered (add it to DATASETS.REGISTER_JSON)")
    patients = {str(r["patient_id"]) for r in DatasetCatalog.get(dataset)}
    for name in cfg.DATASETS.TEST:
        shared = patients & {str(r["patient_id"]) for r in DatasetCatalog.get(name)}
        if shared:
            raise OperatingPointError(f"validation set {dataset!r} shares {len(shared)} patient(s) with the test set "
                                      f"{name!r}, e.g. {sorted(shared)[:5]}: choose points on patients the test "
                                      "never sees")
    model = Trainer.build_model(cfg)
    load_model_weights(model, cfg, purpose="evaluate")
    evaluator = PatientEvaluator(dataset, output_dir=None, threshold=cfg.TEST.PATIENT.THRESHOLD, bootstrap=0)
    inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)
    points = choose_operating_points(evaluator.patient_scores, evaluator.patient_labels, sensitivities,
                                     specificities)
    path = write_operating_points(points, cfg.MODEL.WEIGHTS, dataset, len(evaluator.patient_labels), path=output)
    logger.info("operating points chosen on %s (%d patients) written to %s", dataset,
                len(evaluator.patient_labels), path)
    return path, points
