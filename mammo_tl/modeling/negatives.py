"""The model's one rule for which images of a batch are negative images."""
from __future__ import annotations

from detectron2.structures import Instances

from .findings import CANCER_CLASS


def negative_images(targets: list[Instances]) -> list[bool]:
    """True for each image whose ground truth holds no cancer box: a negative image. The paired mapper gives a
    negative record (no box of category 0, mammo_tl.data.is_negative) ``instances`` without a cancer, and
    detectron2 passes them on as the targets of the RPN and the ROI heads."""
    return [not bool((t.gt_classes == CANCER_CLASS).any()) if t.has("gt_classes") else len(t) == 0
            for t in targets]
