"""Inference on stored mammograms (DICOM or PNG) with boxes in the original pixel grid."""
import hashlib
import logging
import os
import re

import numpy as np
import torch
from detectron2.modeling import build_model

from ..data.dicom import read_mammogram
from ..data.image_io import DEFAULT_MAX_PIXELS, ImageReadError, is_dicom_path, read_image
from ..data.mapper import MammogramDatasetMapper
from ..data.preprocess import preprocess
from .checkpoint import load_model_weights

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")
_NAME = re.compile(r"^(?P<patient>.+)_(?P<lat>[LR])_(?P<view>CC|MLO)$", re.IGNORECASE)
# Smaller images hold no mammogram: the model would see a few pixels blown up to its input size.
MIN_IMAGE_SIDE = 32
UNKNOWN_PATIENT_PREFIX = "unknown:"


class SkippedImage(Exception):
    """An input that is not predicted; ``kind`` is a short category for counts, ``reason`` the full text."""

    def __init__(self, path, kind, reason):
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(f"{path}: {reason}")


def list_inputs(paths):
    """Files given directly, plus image files found (recursively, sorted) in folders; a file reached twice
    (a folder and a file in it) is listed once."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.lexists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if len(unique) < len(files):
        logger.warning("%d input file(s) given more than once, predicted once", len(files) - len(unique))
    return unique


def image_key(path) -> str:
    """A name unique to the file, for overlays and unknown patients: its stem and a hash of its full path
    (a/x.dcm and b/x.dcm differ)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}_{digest}"


def describe(path, max_pixels=DEFAULT_MAX_PIXELS):
    """(image, meta) of an input file. DICOM: from its header. Other files: from a name of the form
    <patient>_<L|R>_<CC|MLO>.png. A missing patient id becomes ``unknown:<image_key>`` (never shared
    by two files) with ``meta["unknown_patient"]`` True. Raises :class:`SkippedImage` for a file the
    readers refuse (not a regular file, more than ``max_pixels`` pixels, unreadable), one smaller than
    MIN_IMAGE_SIDE or a constant one."""
    path = str(path)
    try:
        if is_dicom_path(path):
            image, meta = read_mammogram(path, max_pixels=max_pixels)
        else:
            image = read_image(path, max_pixels=max_pixels)
            stem = os.path.splitext(os.path.basename(path))[0]
            m = _NAME.match(stem)
            meta = {"patient_id": m["patient"], "laterality": m["lat"].upper(), "view": m["view"].upper()} if m \
                else {"patient_id": "", "laterality": "", "view": ""}
    except ImageReadError as e:
        raise SkippedImage(path, e.kind, e.cause) from None
    meta = dict(meta)
    meta["unknown_patient"] = not meta.get("patient_id")
    if meta["unknown_patient"]:
        meta["patient_id"] = UNKNOWN_PATIENT_PREFIX + image_key(path)
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise SkippedImage(path, "too_small", f"{image.shape[1]} x {image.shape[0]} pixels, smaller than "
                                              f"{MIN_IMAGE_SIDE} pixels on a side: not a mammogram")
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise SkippedImage(path, "non_finite", "pixel values that are not finite numbers (NaN or infinity)")
    if not hi > lo:
        raise SkippedImage(path, "constant_image", f"every pixel is {lo:g}: nothing to detect")
    return image, meta


class MammoPredictor:
    """Like detectron2's DefaultPredictor, for single-channel mammograms: crop/flip per INPUT.CROP_TO_BREAST
    and INPUT.CANONICAL_FLIP, the test mapper's windowing and resize, then boxes mapped back to the
    original pixel grid.

    cfg.MODEL.WEIGHTS must hold every weight of the model (else :class:`~.checkpoint.WeightsError`);
    ``allow_random_init`` lets an empty MODEL.WEIGHTS through, for timing benchmarks only."""

    def __init__(self, cfg, *, allow_random_init=False):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if allow_random_init and not cfg.MODEL.WEIGHTS:
            logger.warning("MammoPredictor with random weights (allow_random_init): its boxes are noise")
        else:
            load_model_weights(self.model, self.cfg, purpose="predict")
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
