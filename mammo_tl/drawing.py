"""Boxes and scores drawn on an image, shrunk to at most ``max_side`` pixels: the overlays predict writes
(:mod:`mammo_tl.outputs.overlay`) and the panels of a report's gallery (:mod:`mammo_tl.evaluation.gallery`).

On the bottom floor (it imports nothing of mammo_tl), so both can use it. :func:`overlay_base` shrinks the
image where it is decoded (a loader worker), so only a small 8-bit copy travels to the process that draws the
boxes once the model has answered."""
from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

RED, AMBER = (0, 0, 255), (0, 200, 255)  # OpenCV's BGR order
# Without an operating point, boxes above the paper's threshold are drawn red.
DEFAULT_THRESHOLD = 0.5


class DrawingError(OSError):
    """A drawn image that cannot be written; the message names the file and the cause."""


def overlay_base(image: np.ndarray, lo: float | None = None, hi: float | None = None,
                 max_side: int = 1024) -> tuple[np.ndarray, float]:
    """(8-bit BGR image at most ``max_side`` pixels on a side, scale factor from ``image``'s pixels).
    ``lo``/``hi``: the image's value range, when already known."""
    lo = float(image.min()) if lo is None else float(lo)
    hi = float(image.max()) if hi is None else float(hi)
    f = min(1.0, max_side / max(image.shape))
    size = (max(1, int(image.shape[1] * f)), max(1, int(image.shape[0] * f)))
    if f < 1.0:
        if image.dtype not in (np.uint8, np.uint16, np.int16, np.float32):  # the types cv2.resize takes
            image = image.astype(np.float32)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    u8 = np.clip((image.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR), f


def draw_boxes(base: np.ndarray, f: float, boxes: ArrayLike, scores: ArrayLike,
               threshold: float | None = None) -> np.ndarray:
    """A copy of ``base`` (from :func:`overlay_base`, scale ``f``) with ``boxes`` (original pixels) and
    ``scores`` drawn: red for a score above ``threshold`` (the operating point's; None: 0.5), amber otherwise."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    rgb = base.copy()
    for (x1, y1, x2, y2), s in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * f, scores):
        color = RED if s > threshold else AMBER
        cv2.rectangle(rgb, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(rgb, f"{s:.2f}", (int(x1), max(12, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1)
    return rgb


def write_image(image: np.ndarray, path: str) -> None:
    """Write ``image`` to ``path`` (format from its extension); :class:`DrawingError` when it cannot be."""
    try:
        ok = cv2.imwrite(path, image)
    except cv2.error as e:
        raise DrawingError(f"{path}: overlay cannot be written ({e})") from None
    if not ok:  # OpenCV reports a failed write only through its return value
        raise DrawingError(f"{path}: overlay cannot be written (OpenCV's imwrite failed: folder missing or "
                           f"unwritable, or disk full)")


def draw_overlay(base: np.ndarray, f: float, boxes: ArrayLike, scores: ArrayLike, path: str,
                 threshold: float | None = None) -> None:
    """:func:`draw_boxes` written to ``path``; :class:`DrawingError` when it cannot be written."""
    write_image(draw_boxes(base, f, boxes, scores, threshold), path)
