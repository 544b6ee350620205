"""Images prepared for the model: :class:`InputPreparer` turns a stored pixel grid into a :class:`PreparedImage`
(crop, flip, resize, windowing) without the model, so loader workers, the predictor
(mammo_tl.inference.predictor) and an exported model's runtime (mammo_tl.export.runtime) share one preparation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .mapper import MammogramDatasetMapper
from .preprocess import DecodeGeometry, MammoTransform, preprocess
from .resolution import ResolutionRequest


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
