"""PNG overlays: the image, shrunk to at most ``max_side`` pixels, with its boxes and scores drawn.

The drawing lives in :mod:`mammo_tl.drawing` (below the evaluation, whose report gallery draws the same
panels); this module gives predict its names and raises :class:`~mammo_tl.outputs.OutputError`, as every
writer of ``mammo_tl.outputs`` does."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..drawing import AMBER, DEFAULT_THRESHOLD, RED, DrawingError, draw_boxes, overlay_base, write_image
from . import OutputError

__all__ = ["AMBER", "DEFAULT_THRESHOLD", "RED", "draw_boxes", "draw_overlay", "overlay_base"]


def draw_overlay(base: np.ndarray, f: float, boxes: ArrayLike, scores: ArrayLike, path: str,
                 threshold: float | None = None) -> None:
    """Draw ``boxes`` (original pixels) and ``scores`` on ``base`` (from :func:`overlay_base`, scale ``f``)
    and write it to ``path``: red for a score above ``threshold`` (the operating point's; None: 0.5),
    amber otherwise. Raises :class:`~mammo_tl.outputs.OutputError` when it cannot be written."""
    try:
        write_image(draw_boxes(base, f, boxes, scores, threshold), path)
    except DrawingError as e:
        raise OutputError(str(e)) from None
