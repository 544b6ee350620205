"""Decoding only the pixels the model needs: which JPEG 2000 resolution level to decode a mammogram at.

A JPEG 2000 file holds its image at every power-of-two reduction. :class:`ResolutionRequest` picks the
coarsest level whose crop to the breast still has at least the model's input size on each side (but none
coarser than the level the crop is found at), so the preparation only ever shrinks, as it does from a full
decode. The crop is found on the image itself, so it goes in two steps:

1. decode at the level breast_bbox's own grid needs (every f-th stored pixel, f = max(H, W) // 512: the
   coarsest level 2**r <= f) and find the breast's box there, in stored pixels
   (:func:`~mammo_tl.data.preprocess.breast_bbox` with the decoded scale);
2. pick the coarsest level at which that box still spans at least ``oversample`` times the model's input plus
   one pixel; decode again only when it is finer than step 1's (else step 1's pixels are used as they are).
   When that is the full image, its crop is found on it, as without a request (step 1 was spent for nothing:
   a few per cent of a full decode).

Without cropping, one decode at the coarsest level whose whole image is large enough. The box and the scale
travel with the pixels as a :class:`~mammo_tl.data.preprocess.DecodeGeometry`, which
:func:`~mammo_tl.data.preprocess.preprocess` uses, so boxes map back to the stored image's pixels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .preprocess import DecodeGeometry, breast_bbox

# breast_bbox's grid: every f-th stored pixel with f = max(H, W) // BBOX_GRID
BBOX_GRID = 512
# The crop decoded spans at least this many times the model's input. 1: the coarsest level that never
# enlarges (the largest gain). 2 halves what differs from a full decode (the wavelet's low-pass filter
# overshoots at sharp borders, the area averaging of a last factor of 2 evens it out) but leaves most
# 512 x 512 crops of a 4672 x 2632 image at full size (docs/benchmarks.md, section 3).
DEFAULT_OVERSAMPLE = 1


@dataclass(frozen=True)
class ResolutionRequest:
    """What the preparation after decoding needs: the model's input ``size`` (height, width) after cropping,
    whether the image is cropped to the breast (``crop``), and how many times the size the decoded crop must
    span at least (``oversample``; 1 is the coarsest level that never enlarges)."""

    size: tuple[int, int]
    crop: bool = True
    oversample: int = DEFAULT_OVERSAMPLE

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(int(v) for v in self.size) < 1:
            raise ValueError(f"ResolutionRequest: size {self.size!r}, expected (height, width) of positive ints")
        if int(self.oversample) < 1:
            raise ValueError(f"ResolutionRequest: oversample {self.oversample!r}, expected an integer >= 1")

    def decode(self, decode_at: Callable[[int], np.ndarray], original_size: tuple[int, int],
               levels: Sequence[int]) -> tuple[np.ndarray, DecodeGeometry]:
        """(pixels, geometry): ``decode_at(r)`` is the stored image decoded without its r finest levels (every r of
        ``levels``, 0 included), ``original_size`` the stored (height, width)."""
        full_h, full_w = (int(v) for v in original_size)
        th, tw = (int(v) * self.oversample for v in self.size)
        levels = sorted({int(r) for r in levels} | {0})
        whole = [r for r in levels if full_h / (1 << r) - 1 >= th and full_w / (1 << r) - 1 >= tw]
        if not whole or max(whole) == 0:
            return decode_at(0), DecodeGeometry(1, (full_h, full_w))
        if not self.crop:
            r = max(whole)
            return decode_at(r), DecodeGeometry(1 << r, (full_h, full_w))
        f = max(1, max(full_h, full_w) // BBOX_GRID)
        r0 = max([r for r in levels if (1 << r) <= f])
        first = decode_at(r0)
        box = tuple(int(v) for v in breast_bbox(first, scale=1 << r0, original_size=(full_h, full_w)))
        ch, cw = box[3] - box[1], box[2] - box[0]
        r1 = max([r for r in levels if ch / (1 << r) - 1 >= th and cw / (1 << r) - 1 >= tw], default=0)
        if r1 >= r0:
            return first, DecodeGeometry(1 << r0, (full_h, full_w), box)
        del first
        if r1 == 0:  # decoded in full: the crop is found on the full image, exactly as without a request
            return decode_at(0), DecodeGeometry(1, (full_h, full_w))
        return decode_at(r1), DecodeGeometry(1 << r1, (full_h, full_w), box)
