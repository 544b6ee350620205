"""Which of a model's boxes are findings. Category 0 is the cancer; a model trained with a second class (boxed
benign findings, mammo_tl.data.records.CLASS_NAMES) also predicts boxes of that class, and those are not findings:
every patient score, evaluation and prediction output is made from the cancer-class boxes alone, so a model with
two classes is compared with one-class models on the same terms."""
from __future__ import annotations

from detectron2.structures import Instances

CANCER_CLASS = 0


def cancer_findings(instances: Instances) -> Instances:
    """``instances`` (a model's predictions for one image) restricted to the cancer class; unchanged when it
    has no ``pred_classes`` or holds only that class."""
    if not instances.has("pred_classes"):
        return instances
    keep = instances.pred_classes == CANCER_CLASS
    return instances if bool(keep.all()) else instances[keep]
