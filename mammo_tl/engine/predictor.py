"""Inference on stored mammograms (DICOM or PNG) with boxes in the original pixel grid."""
import logging
import os
import re

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..data.dicom import read_mammogram
from ..data.image_io import is_dicom_path, read_image
from ..data.mapper import MammogramDatasetMapper
from ..data.preprocess import preprocess

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")
_NAME = re.compile(r"^(?P<patient>.+)_(?P<lat>[LR])_(?P<view>CC|MLO)$", re.IGNORECASE)


def list_inputs(paths):
    """Files given directly, plus image files found (recursively, sorted) in folders."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.exists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    return files


def describe(path):
    """(image, meta) of an input file. DICOM: from its header. Other files: from a name of the form
    <patient>_<L|R>_<CC|MLO>.png, else patient_id = the file's stem and no laterality/view."""
    if is_dicom_path(path):
        return read_mammogram(path)
    image = read_image(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _NAME.match(stem)
    meta = {"patient_id": m["patient"], "laterality": m["lat"].upper(), "view": m["view"].upper()} if m else \
        {"patient_id": stem, "laterality": "", "view": ""}
    return image, meta


class MammoPredictor:
    """Like detectron2's DefaultPredictor, for single-channel mammograms: crop/flip per INPUT.CROP_TO_BREAST
    and INPUT.CANONICAL_FLIP, the test mapper's windowing and resize, then boxes mapped back to the
    original pixel grid."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.mapper = MammogramDatasetMapper(self.cfg, is_train=False)

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        """image: the stored pixel grid (H, W). Returns (boxes (n, 4) in original pixels, scores (n,))."""
        prepared, transform = preprocess(image, size=None, crop=self.cfg.INPUT.CROP_TO_BREAST,
                                         canonical_flip=self.cfg.INPUT.CANONICAL_FLIP)
        tensor, _ = self.mapper.image_to_tensor(prepared)
        h, w = prepared.shape
        out = self.model([{"image": tensor, "height": h, "width": w}])[0]["instances"].to("cpu")
        boxes = transform.inverse_boxes(out.pred_boxes.tensor.numpy())
        return boxes, out.scores.numpy().astype(np.float64)
