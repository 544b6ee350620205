"""The model's one rule for which images of a batch are negative images."""
from __future__ import annotations

from detectron2.structures import Instances


def negative_images(targets: list[Instances]) -> list[bool]:
    """True for each image whose ground truth holds no box: a negative image. The paired mapper gives a
    negative record (``annotations: []``, mammo_tl.data.is_negative) empty ``instances``, and detectron2
    passes them on as the targets of the RPN and the ROI heads."""
    return [len(t) == 0 for t in targets]
