"""Mammogram preprocessing with a recorded, invertible transform: crop to the breast, optional flip to
one canonical side, resize. Any box predicted on the preprocessed image maps back to the original
(DICOM) pixel grid with :meth:`MammoTransform.inverse_boxes`.

An image decoded at a reduced resolution (JPEG 2000, :mod:`mammo_tl.data.resolution`) comes with its
:class:`DecodeGeometry`; :func:`preprocess` then finds the crop on the breast_bbox grid of the full image, works
on the reduced pixels, and records the crop in the full image's pixels, so boxes map back as for a full decode.
Integer pixels stay integers through the crop and the block averaging: floats start at the block means."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class DecodeGeometry:
    """How a decoded pixel grid relates to the stored image: pixel ``i`` of a grid decoded at ``scale`` = 2**r
    is the stored image's pixel ``scale * i`` low-pass filtered (JPEG 2000's resolution level r), so it covers
    the stored pixels [scale * i - (scale - 1) / 2, scale * i + (scale + 1) / 2). ``crop``: the breast's box
    (x1, y1, x2, y2) in stored pixels, when it was found while choosing the level."""

    scale: int
    original_size: tuple[int, int]  # (height, width) of the stored image
    crop: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict:
        return {"scale": self.scale, "original_size": list(self.original_size),
                "crop": list(self.crop) if self.crop is not None else None}


@dataclass
class MammoTransform:
    """original (H, W) -> crop [x1, y1, x2, y2) -> optional horizontal flip -> resize to (h, w)."""

    original_size: tuple[int, int]  # (height, width) of the stored pixel grid
    # x1, y1, x2, y2 in original pixels (x2, y2 exclusive): integers, or half-integers after a reduced decode
    # (the area the prepared image covers; it may reach (scale - 1) / 2 pixels past the image's edges)
    crop: tuple[float, float, float, float]
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


def breast_bbox(image: np.ndarray, margin: float = 0.01,
                scale: int = 1, original_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Bounding box [x1, y1, x2, y2) of the breast: the largest bright connected region (Otsu threshold on
    a downsampled copy), so film labels and markers outside the breast are dropped.

    The copy samples every f-th pixel of the stored image, f = max(H, W) // 512. For an image decoded at
    ``scale`` (:class:`DecodeGeometry`) from a stored image of ``original_size``, the same stored positions are
    taken from the nearest decoded pixels, and the box is in stored pixels on the same grid, so it matches a
    full decode's up to pixels near the threshold."""
    h, w = image.shape if original_size is None else (int(original_size[0]), int(original_size[1]))
    f = max(1, int(max(h, w) // 512))
    if scale == 1:
        small = image[::f, ::f].astype(np.float32)
    else:
        rows = np.minimum(np.rint(np.arange(0, h, f) / scale).astype(np.int64), image.shape[0] - 1)
        cols = np.minimum(np.rint(np.arange(0, w, f) / scale).astype(np.int64), image.shape[1] - 1)
        small = image[rows[:, None], cols[None, :]].astype(np.float32)
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
    averaging, one pass over the region. Integer pixels are summed as integers (exact), and only the block
    sums become floats."""
    integer = np.issubdtype(region.dtype, np.integer) and region.dtype.itemsize <= 2
    acc = region[0::ky].astype(np.int64 if integer and region.dtype.kind == "i" else
                                np.uint32 if integer else np.float32)
    for j in range(1, ky):
        np.add(acc, region[j::ky], out=acc, casting="unsafe")
    if kx > 1:
        cols = acc[:, 0::kx].copy()
        for i in range(1, kx):
            np.add(cols, acc[:, i::kx], out=cols)
        acc = cols
    if integer:
        return (acc / float(ky * kx)).astype(np.float32)  # float64 quotient: exact sums, one rounding
    acc /= np.float32(ky * kx)
    return acc


def _reduced_window(lo: float, hi: float, scale: int, limit: int) -> tuple[int, int]:
    """The decoded pixels [a, b) whose footprints (see :class:`DecodeGeometry`) best cover the stored pixels
    [lo, hi): the nearest footprint edges, at least one pixel."""
    c = (scale - 1) / 2
    a = min(max(0, int(np.floor((lo + c) / scale + 0.5))), limit - 1)
    b = min(max(a + 1, int(np.floor((hi + c) / scale + 0.5))), limit)
    return a, b


def preprocess(image: np.ndarray, size: tuple[int, int] | None = None, crop: bool = True,
               canonical_flip: bool = False,
               geometry: DecodeGeometry | None = None) -> tuple[np.ndarray, MammoTransform]:
    """Returns (preprocessed float32 image, MammoTransform).

    crop: crop to :func:`breast_bbox`. canonical_flip: mirror images whose chest wall is on the right so
    every breast faces the same way (chest wall left). size: (height, width) to resize to; None keeps the crop.

    Resizing is area averaging: whole blocks of pixels first (exact; the crop may grow by a few background
    pixels inside the image so that its sides are multiples of the block), then OpenCV's INTER_AREA for
    the remaining factor, usually below 2. The transform records the crop actually used, so boxes map
    exactly. Integer input (``read_mammogram(..., keep_integers=True)``) gives the same result as its
    float32 copy, and is converted to float only at the block means.

    ``geometry``: ``image`` was decoded at ``geometry.scale`` (a reduced JPEG 2000 decode, with ``size`` given).
    The crop is ``geometry.crop`` (or :func:`breast_bbox` on the stored image's grid), taken as the decoded
    pixels whose footprints cover it best; the transform's crop is those footprints in stored pixels
    (half-integers), its ``original_size`` the stored image's.
    """
    if geometry is not None and geometry.scale != 1:
        return _preprocess_reduced(image, size, crop, canonical_flip, geometry)
    h, w = image.shape
    if geometry is not None and geometry.crop is not None and crop:
        x1, y1, x2, y2 = geometry.crop
    else:
        x1, y1, x2, y2 = breast_bbox(image) if crop else (0, 0, w, h)
    out_size = tuple(int(s) for s in size) if size else (y2 - y1, x2 - x1)
    if out_size == (y2 - y1, x2 - x1):
        out = image[y1:y2, x1:x2]
        flip = bool(canonical_flip and not faces_right(out))
    else:
        ky, y1, y2 = _block_grid(y1, y2, h, out_size[0])
        kx, x1, x2 = _block_grid(x1, x2, w, out_size[1])
        out = _resize_area(image[y1:y2, x1:x2], ky, kx, out_size)
        # judged on the block means: the same halves of the crop at a fraction of the cost
        flip = bool(canonical_flip and not faces_right(out))
    if flip:  # mirroring commutes with the resize, so it is done on the small image
        out = out[:, ::-1]
    t = MammoTransform((h, w), (int(x1), int(y1), int(x2), int(y2)), flip, out_size)
    return np.ascontiguousarray(out, dtype=np.float32), t


def _resize_area(region, ky, kx, out_size):
    out = _block_mean(region, ky, kx) if ky * kx > 1 else region
    if out.shape != out_size:
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        out = cv2.resize(out, (out_size[1], out_size[0]), interpolation=cv2.INTER_AREA)
    return out


def _preprocess_reduced(image, size, crop, canonical_flip, geometry):
    if not size:
        raise ValueError("preprocess: an image decoded at a reduced resolution needs the output size")
    s = int(geometry.scale)
    full_h, full_w = (int(v) for v in geometry.original_size)
    h, w = image.shape
    if not crop:
        box = (0, 0, full_w, full_h)
    elif geometry.crop is not None:
        box = geometry.crop
    else:
        box = breast_bbox(image, scale=s, original_size=(full_h, full_w))
    a, b = _reduced_window(box[0], box[2], s, w)
    c, d = _reduced_window(box[1], box[3], s, h)
    out_size = tuple(int(v) for v in size)
    if out_size == (d - c, b - a):
        out = image[c:d, a:b]
    else:
        ky, c, d = _block_grid(c, d, h, out_size[0])
        kx, a, b = _block_grid(a, b, w, out_size[1])
        out = _resize_area(image[c:d, a:b], ky, kx, out_size)
    flip = bool(canonical_flip and not faces_right(out))
    if flip:
        out = out[:, ::-1]
    shift = (s - 1) / 2
    t = MammoTransform((full_h, full_w), (s * a - shift, s * c - shift, s * b - shift, s * d - shift), flip, out_size)
    return np.ascontiguousarray(out, dtype=np.float32), t
