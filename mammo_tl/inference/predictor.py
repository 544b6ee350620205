"""Inference on stored mammograms (DICOM or PNG) with boxes in the original pixel grid. Reading the inputs,
and who, which breast and which view each shows, is mammo_tl.data.inputs."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.modeling import build_model

from ..checkpoint import load_model_weights
from ..data.prepared import InputPreparer, PreparedImage
from ..modeling.findings import cancer_findings

logger = logging.getLogger(__name__)


class MammoPredictor:
    """Like detectron2's DefaultPredictor, for single-channel mammograms: :class:`InputPreparer`'s crop,
    flip, resize and windowing, the model, then boxes mapped back to the original pixel grid.

    cfg.MODEL.WEIGHTS must hold every weight of the model (else :class:`~mammo_tl.checkpoint.WeightsError`);
    ``allow_random_init`` lets an empty MODEL.WEIGHTS through, for timing benchmarks only. ``amp``: the
    model runs under CUDA autocast (float16); cfg.MODEL.DEVICE must be a CUDA device."""

    def __init__(self, cfg, *, allow_random_init=False, amp=False):
        self.cfg = cfg.clone()
        self.amp = bool(amp)
        if self.amp and not str(cfg.MODEL.DEVICE).startswith("cuda"):
            raise ValueError(f"amp (mixed precision) runs on CUDA only; MODEL.DEVICE is {cfg.MODEL.DEVICE!r}")
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
