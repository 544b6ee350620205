"""PatientEvaluator: per-patient and per-breast metrics, ROC and FROC curves, per-patient CSV; CancerCOCOEvaluator:
COCO AP of the cancer class. Both score a model by its cancer-class boxes alone (mammo_tl.modeling.findings)."""
from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm

from ..data.records import CLASS_NAMES, is_negative
from ..modeling.findings import CANCER_CLASS, cancer_findings
from ..files import atomic_write_json
from ..data.datasets.common import patient_key
from .metrics import froc, patient_metrics
from .operating_points import metrics_at_points
from .plots import plot_froc, plot_roc

logger = logging.getLogger(__name__)


def labels_from_records(records: Iterable[Mapping],
                        key: Sequence[str] = ("patient_id",)) -> tuple[dict[str, int], dict[Any, str]]:
    """Group id -> 1 when any of its images has a box, else 0; also image id -> group id. Patient ids are
    grouped as the splits group them (:func:`~mammo_tl.data.datasets.common.patient_key`: case, repeated and
    surrounding white space ignored), so "P001" and "p001 " are one patient, named by its first spelling."""
    labels, group_of, spelling = {}, {}, {}
    for r in records:
        missing = [k for k in key if k not in r]
        if missing:
            raise KeyError(f"dataset record {r.get('file_name')!r} lacks {missing}: patient-level evaluation "
                           "needs patient_id (and laterality for per-breast metrics) on every record")
        g = "/".join(spelling.setdefault(patient_key(r[k]), str(r[k])) if k == "patient_id" else str(r[k])
                     for k in key)
        group_of[r["image_id"]] = g
        labels[g] = max(labels.get(g, 0), int(not is_negative(r)))
    return labels, group_of


def group_scores(image_scores: Mapping[Any, float], group_of: Mapping[Any, str],
                 groups: Iterable[str]) -> dict[str, float]:
    """Highest image score per group; 0 for a group none of whose images has a box."""
    out = dict.fromkeys(groups, 0.0)
    for image_id, s in image_scores.items():
        g = group_of[image_id]
        out[g] = max(out[g], s)
    return out


def check_cancer_boxes_only(dataset_name: str) -> None:
    """Refuse an evaluation set whose records hold boxes of another class than the cancer: its COCO AP would
    count them as cancers. Boxed benign findings belong in training sets."""
    for r in DatasetCatalog.get(dataset_name):
        other = [a for a in r["annotations"] if a.get("category_id", CANCER_CLASS) != CANCER_CLASS]
        if other:
            raise ValueError(f"dataset {dataset_name!r}, image {r.get('file_name')!r}: {len(other)} box(es) of "
                             f"category {other[0]['category_id']} ({CLASS_NAMES[other[0]['category_id']]}): an "
                             f"evaluation set holds cancer boxes (category 0) only; benign boxes are for training")


class CancerCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator on the cancer class: a model's boxes of other classes
    (mammo_tl.modeling.findings) are left out before COCO AP is computed, so AP50 means the same for a model with
    one class and one with two. The evaluated set must hold cancer boxes only (:func:`check_cancer_boxes_only`)."""

    def __init__(self, dataset_name: str, *args: Any, **kwargs: Any) -> None:
        check_cancer_boxes_only(dataset_name)
        super().__init__(dataset_name, *args, **kwargs)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        super().process(inputs, [{**o, "instances": cancer_findings(o["instances"])} if "instances" in o else o
                                 for o in outputs])


class PatientEvaluator(DatasetEvaluator):
    """Per-patient (and per-breast) AUC, sensitivity, specificity, accuracy and lesion-level FROC.

    A patient's score is its highest box score over all its images (0 when none); it is predicted
    positive when that score is above ``threshold`` (paper: 0.5). Labels come from the dataset records:
    a patient is positive when any of its images has a box. Gathers predictions from all ranks; rank 0
    computes and writes ``patients.csv``, ``roc.png/csv``, ``froc.png/csv``, ``patient_metrics.json`` and
    ``images.json`` (image -> patient, file, size, ground-truth boxes) to ``output_dir``. With
    ``operating_points`` (name -> {"threshold": t, ...}, chosen on a validation set by tools/operating_points.py)
    the patient metrics at each are reported too, as ``patient@<name>``. After evaluate(), ``patient_scores``
    and ``patient_labels`` hold what the patient metrics were computed from.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, threshold: float = 0.5,
                 bootstrap: int = 1000, seed: int = 0, operating_points: Mapping[str, dict] | None = None) -> None:
        self.dataset_name = dataset_name
        self.operating_points = dict(operating_points or {})
        self.patient_scores, self.patient_labels = None, None
        self.output_dir = output_dir
        self.threshold = threshold
        self.bootstrap = bootstrap
        self.seed = seed
        self._predictions = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            inst = cancer_findings(out["instances"].to("cpu"))
            self._predictions.append({
                "image_id": inp["image_id"],
                "boxes": inst.pred_boxes.tensor.numpy().astype(np.float64),
                "scores": inst.scores.numpy().astype(np.float64),
            })

    def evaluate(self) -> dict:
        predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        predictions = {p["image_id"]: p for p in itertools.chain(*predictions)}
        records = DatasetCatalog.get(self.dataset_name)
        missing = [r["image_id"] for r in records if r["image_id"] not in predictions]
        if missing:
            raise RuntimeError(f"{self.dataset_name}: no prediction for {len(missing)} image(s), e.g. {missing[:5]}")
        image_scores = {i: float(p["scores"].max()) if len(p["scores"]) else 0.0 for i, p in predictions.items()}
        results = OrderedDict()
        for level, key in (("patient", ("patient_id",)), ("breast", ("patient_id", "laterality"))):
            labels, group_of = labels_from_records(records, key)
            scores = group_scores(image_scores, group_of, labels)
            m = patient_metrics(scores, labels, self.threshold, self.bootstrap, self.seed)
            results[level] = {k: m[k] for k in ("auc", "sensitivity", "specificity", "accuracy")}
            results[level].update({k: float(m[k]) for k in ("tp", "fp", "tn", "fn", "num_patients")})
            for k, (lo, hi) in m.get("ci", {}).items():
                results[level][f"{k}_ci_low"], results[level][f"{k}_ci_high"] = lo, hi
            if level == "patient":
                patient_labels, patient_scores = labels, scores
        gt = {r["image_id"]: np.array([a["bbox"] for a in r["annotations"]
                                       if a.get("category_id", CANCER_CLASS) == CANCER_CLASS],
                                      dtype=np.float64).reshape(-1, 4)
              for r in records}
        fr = froc(gt, {i: p["boxes"] for i, p in predictions.items()},
                  {i: p["scores"] for i, p in predictions.items()})
        results["froc"] = {f"sens@{r:g}": s for r, s in zip(fr["fp_rates"], fr["sensitivity"])}
        results["froc"]["cpm"] = fr["cpm"]
        self.patient_scores, self.patient_labels = patient_scores, patient_labels
        for name, m in metrics_at_points(patient_scores, patient_labels, self.operating_points, self.bootstrap,
                                         self.seed).items():
            r = results[f"patient@{name}"] = {k: float(m[k]) for k in ("threshold", "sensitivity", "specificity",
                                                                        "accuracy", "tp", "fp", "tn", "fn")}
            for k, (lo, hi) in m.get("ci", {}).items():
                if k != "auc":
                    r[f"{k}_ci_low"], r[f"{k}_ci_high"] = lo, hi
        if self.output_dir:
            self._write(patient_labels, patient_scores, fr, results)
            self._write_images(records, gt)
        return results

    def _write_images(self, records, gt):
        """``images.json``: each test image's patient, file (absolute, as the loader opened it), size and
        ground-truth boxes (xyxy), so a report can draw a run's boxes (COCOEvaluator's
        coco_instances_results.json) on the images of chosen patients."""
        atomic_write_json([{"image_id": r["image_id"], "patient_id": r["patient_id"],
                            "file_name": os.path.abspath(r["file_name"]), "height": r.get("height"),
                            "width": r.get("width"), "boxes": gt[r["image_id"]].tolist()} for r in records],
                          os.path.join(self.output_dir, "images.json"), default=str)

    def _write(self, labels, scores, fr, results):
        os.makedirs(self.output_dir, exist_ok=True)
        ids = sorted(labels, key=str)
        with open(os.path.join(self.output_dir, "patients.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["patient_id", "label", "score"])
            w.writerows((i, labels[i], repr(float(scores[i]))) for i in ids)  # exact: reports threshold it again
        y = np.array([labels[i] for i in ids])
        s = np.array([scores[i] for i in ids])
        plot_roc({"model": (y, s)}, os.path.join(self.output_dir, "roc.png"))
        plot_froc({"model": fr}, os.path.join(self.output_dir, "froc.png"))
        with open(os.path.join(self.output_dir, "patient_metrics.json"), "w") as f:
            json.dump({"results": results, "froc": fr, "threshold": self.threshold,
                       "operating_points": self.operating_points}, f, indent=1)
        logger.info("Patient-level results for %s written to %s", self.dataset_name, self.output_dir)
