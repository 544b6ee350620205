"""Inference on stored mammograms (DICOM or PNG) with boxes in the original pixel grid. Reading the inputs,
and who, which breast and which view each shows, is mammo_tl.data.inputs."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.mapper import MammogramDatasetMapper
from ..data.preprocess import DecodeGeometry, MammoTransform, preprocess
from ..data.resolution import ResolutionRequest
from ..modeling.findings import cancer_findings

logger = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """An image ready for the model: ``tensor`` (C, H, W) and the ``transform`` from the stored pixel grid
    to the grid the model's boxes are given in (``transform.size``)."""

    tensor: torch.Tensor
    transform: MammoTransform

    def pin_memory(self) -> PreparedImage:
        """Called by torch's DataLoader (pin_memory=True), so the copy to the GPU can overlap the model."""
        return PreparedImage(self.tensor.pin_memory(), self.transform)


class InputPreparer:
    """Stored pixel grid -> :class:`PreparedImage`, without the model (so it runs in loader workers): crop and
    flip per INPUT.CROP_TO_BREAST / INPUT.CANONICAL_FLIP, resize, then the test mapper's windowing.

    With INPUT.RESIZE_MODE "fixed" the crop is area-averaged to INPUT.FIXED_SIZE by the function
    tools/prepare_dataset.py shrinks the training images with (bilinear interpolation from thousands of pixels
    would sample, not average), on the stored integer pixels; a JPEG 2000 input decoded at a reduced resolution
    (:attr:`resolution`, used by the predict loader) comes with its geometry. Boxes are mapped back through the
    crop's own grid."""

    def __init__(self, cfg):
        self.crop, self.flip = bool(cfg.INPUT.CROP_TO_BREAST), bool(cfg.INPUT.CANONICAL_FLIP)
        self.size = tuple(int(s) for s in cfg.INPUT.FIXED_SIZE) if cfg.INPUT.RESIZE_MODE == "fixed" else None
        self.mapper = MammogramDatasetMapper(cfg, is_train=False)
        # JPEG 2000 inputs decoded at the coarsest level that still covers the input size (fixed size only: with
        # "shortest_edge" the size depends on the crop, and the image is decoded in full)
        self.resolution = ResolutionRequest(self.size, self.crop) if self.size is not None else None

    def __call__(self, image: np.ndarray, geometry: DecodeGeometry | None = None) -> PreparedImage:
        """``geometry``: the image was decoded at a reduced resolution (meta["decode_geometry"] of the reader)."""
        if self.size is not None:
            # integers until the block means, at most twice the input size; the same pixels as
            # tools/prepare_dataset.py gives the training images
            out, transform = preprocess(image, size=self.size, crop=self.crop, canonical_flip=self.flip,
                                        geometry=geometry)
        else:
            out, transform = preprocess(image, size=None, crop=self.crop, canonical_flip=self.flip)
        tensor, _ = self.mapper.image_to_tensor(out)
        return PreparedImage(tensor, transform)


class MammoPredictor:
    """Like detectron2's DefaultPredictor, for single-channel mammograms: :class:`InputPreparer`'s crop,
    flip, resize and windowing, the model, then boxes mapped back to the original pixel grid.

    cfg.MODEL.WEIGHTS must hold every weight of the model (else :class:`~.checkpoint.WeightsError`);
    ``allow_random_init`` lets an empty MODEL.WEIGHTS through, for timing benchmarks only. ``amp``: the
    model runs under CUDA autocast (float16); cfg.MODEL.DEVICE must be a CUDA device."""

    def __init__(self, cfg, *, allow_random_init=False, amp=False):
        self.cfg = cfg.clone()
        self.amp = bool(amp)
        if self.amp and not str(cfg.MODEL.DEVICE).startswith("cuda"):
            raise ValueError(f"amp (mixed precision) runs on CUDA only; MODEL.DEVICE is {cfg.MODEL.DEVICE!r}")
        # detectron2's modeling is imported here, not at the top: an exported model (.export_runtime) uses this
        # module's PreparedImage without it
        from detectron2.modeling import build_model

        from .checkpoint import load_model_weights

        self.model = build_model(self.cfg)
        self.model.eval()
        if allow_random_init and not cfg.MODEL.WEIGHTS:
            logger.warning("MammoPredictor with random weights (allow_random_init): its boxes are noise")
        else:
            load_model_weights(self.model, self.cfg, purpose="predict")
        self.prepare = InputPreparer(self.cfg)

    def __call__(self, image):
        """image: the stored pixel grid (H, W) or a :class:`PreparedImage`. Returns (boxes (n, 4) in
        original pixels, scores (n,)) of the cancer class (a model trained with boxed benign findings also predicts
        those; they are not findings: mammo_tl.modeling.findings)."""
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray | PreparedImage]) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(boxes, scores)] for a list of images (pixel grids or :class:`PreparedImage`), run as one batch."""
        prepared = [im if isinstance(im, PreparedImage) else self.prepare(im) for im in images]
        inputs = [{"image": p.tensor, "height": p.transform.size[0], "width": p.transform.size[1]}
                  for p in prepared]
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            outputs = self.model(inputs)
        results = []
        for p, out in zip(prepared, outputs):
            inst = cancer_findings(out["instances"].to("cpu"))
            boxes = p.transform.inverse_boxes(inst.pred_boxes.tensor.float().numpy())
            h, w = p.transform.original_size
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            results.append((boxes, inst.scores.float().numpy().astype(np.float64)))
        return results
