"""Mammogram preprocessing with a recorded, invertible transform: crop to the breast, optional flip to
one canonical side, resize. Any box predicted on the preprocessed image maps back to the original
(DICOM) pixel grid with :meth:`MammoTransform.inverse_boxes`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike


@dataclass
class MammoTransform:
    """original (H, W) -> crop [x1, y1, x2, y2) -> optional horizontal flip -> resize to (h, w)."""

    original_size: tuple[int, int]  # (height, width) of the stored pixel grid
    crop: tuple[int, int, int, int]  # x1, y1, x2, y2 in original pixels (x2, y2 exclusive)
    flip: bool
    size: tuple[int, int]  # (height, width) after resizing

    @property
    def scale(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.crop
        return self.size[1] / (x2 - x1), self.size[0] / (y2 - y1)

    def apply_boxes(self, boxes: ArrayLike) -> np.ndarray:
        """(n, 4) xyxy boxes in original pixels -> preprocessed image pixels."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        x1, y1, x2, _ = self.crop
        b[:, [0, 2]] -= x1
        b[:, [1, 3]] -= y1
        if self.flip:
            w = x2 - x1
            b[:, [0, 2]] = w - b[:, [2, 0]]
        sx, sy = self.scale
        b[:, [0, 2]] *= sx
        b[:, [1, 3]] *= sy
        return b

    def inverse_boxes(self, boxes: ArrayLike) -> np.ndarray:
        """(n, 4) xyxy boxes in preprocessed pixels -> original pixels."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        sx, sy = self.scale
        b[:, [0, 2]] /= sx
        b[:, [1, 3]] /= sy
        x1, y1, x2, _ = self.crop
        if self.flip:
            w = x2 - x1
            b[:, [0, 2]] = w - b[:, [2, 0]]
        b[:, [0, 2]] += x1
        b[:, [1, 3]] += y1
        return b

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> MammoTransform:
        return cls(tuple(d["original_size"]), tuple(d["crop"]), bool(d["flip"]), tuple(d["size"]))


def breast_bbox(image: np.ndarray, margin: float = 0.01) -> tuple[int, int, int, int]:
    """Bounding box [x1, y1, x2, y2) of the breast: the largest bright connected region (Otsu threshold on
    a downsampled copy), so film labels and markers outside the breast are dropped."""
    h, w = image.shape
    f = max(1, int(max(h, w) // 512))
    small = image[::f, ::f].astype(np.float32)
    lo, hi = float(small.min()), float(small.max())
    if hi <= lo:
        return 0, 0, w, h
    u8 = ((small - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    u8 = cv2.GaussianBlur(u8, (5, 5), 0)
    _, mask = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return 0, 0, w, h
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh = stats[k, :4]
    mx, my = int(margin * w), int(margin * h)
    return (max(0, x * f - mx), max(0, y * f - my), min(w, (x + bw) * f + mx), min(h, (y + bh) * f + my))


def faces_right(image: np.ndarray) -> bool:
    """True when the breast lies against the left image edge (chest wall left), judged by content."""
    cols = image.sum(axis=0, dtype=np.float64)
    half = len(cols) // 2
    return cols[:half].sum() >= cols[half:].sum()


def _block_grid(lo: int, hi: int, limit: int, out: int):
    """(k, lo, hi): the largest whole factor k <= (hi - lo) / out for which [lo, hi) can grow inside
    [0, limit) to a multiple of k pixels, and the grown interval (k = 1 when none can)."""
    n = hi - lo
    for k in range(n // out, 1, -1):
        grow = -n % k
        if grow <= limit - n:
            after = min(grow, limit - hi)
            return k, lo - (grow - after), hi + after
    return 1, lo, hi


def _block_mean(region: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """Mean over ky x kx blocks of a region whose sides are multiples of ky and kx, as float32: exact area
    averaging, one pass over the region (row sums of integers stay exact in float32 below 2**24)."""
    acc = region[0::ky].astype(np.float32)
    for j in range(1, ky):
        np.add(acc, region[j::ky], out=acc, casting="unsafe")
    if kx > 1:
        cols = acc[:, 0::kx].copy()
        for i in range(1, kx):
            np.add(cols, acc[:, i::kx], out=cols)
        acc = cols
    acc /= np.float32(ky * kx)
    return acc


def preprocess(image: np.ndarray, size: tuple[int, int] | None = None, crop: bool = True,
               canonical_flip: bool = False) -> tuple[np.ndarray, MammoTransform]:
    """Returns (preprocessed float32 image, MammoTransform).

    crop: crop to :func:`breast_bbox`. canonical_flip: mirror images whose chest wall is on the right so
    every breast faces the same way (chest wall left). size: (height, width) to resize to; None keeps the crop.

    Resizing is area averaging: whole blocks of pixels first (exact; the crop may grow by a few background
    pixels inside the image so that its sides are multiples of the block), then OpenCV's INTER_AREA for
    the remaining factor, usually below 2. The transform records the crop actually used, so boxes map
    exactly. Integer input (``read_mammogram(..., keep_integers=True)``) gives the same result as its
    float32 copy.
    """
    h, w = image.shape
    x1, y1, x2, y2 = breast_bbox(image) if crop else (0, 0, w, h)
    out_size = tuple(int(s) for s in size) if size else (y2 - y1, x2 - x1)
    if out_size == (y2 - y1, x2 - x1):
        out = image[y1:y2, x1:x2]
        flip = bool(canonical_flip and not faces_right(out))
    else:
        ky, y1, y2 = _block_grid(y1, y2, h, out_size[0])
        kx, x1, x2 = _block_grid(x1, x2, w, out_size[1])
        region = image[y1:y2, x1:x2]
        out = _block_mean(region, ky, kx) if ky * kx > 1 else region
        # judged on the block means: the same halves of the crop at a fraction of the cost
        flip = bool(canonical_flip and not faces_right(out))
        if out.shape != out_size:
            if out.dtype != np.float32:
                out = out.astype(np.float32)
            out = cv2.resize(out, (out_size[1], out_size[0]), interpolation=cv2.INTER_AREA)
    if flip:  # mirroring commutes with the resize, so it is done on the small image
        out = out[:, ::-1]
    t = MammoTransform((h, w), (int(x1), int(y1), int(x2), int(y2)), flip, out_size)
    return np.ascontiguousarray(out, dtype=np.float32), t
