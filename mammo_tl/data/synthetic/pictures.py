"""Pictures of the phantom: :func:`to_display` (one fixed window for every image) and :func:`contact_sheet`
(docs/images/phantom.png)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from .lesions import LOOKALIKE_KINDS, MALIGNANT_MARGINS, draw_lesion
from .render import Rendered, render_image
from .spec import MAX_VALUE, SyntheticSpec
from .tissue import DENSITY_CATEGORIES, DENSITY_NAMES, FAT_LEVEL, GLAND_LEVEL, GLANDULAR_FRACTION

MASS_COLOR = (40, 40, 230)  # BGR: red
LOOKALIKE_COLOR = (230, 200, 40)  # cyan-blue
CALCIFICATION_COLOR = (40, 210, 240)  # yellow


DISPLAY_WINDOW = (0.5 * FAT_LEVEL, GLAND_LEVEL + 0.15)


def to_display(image: np.ndarray, window: tuple[float, float] = DISPLAY_WINDOW) -> np.ndarray:
    """A 16-bit phantom as 8-bit BGR for looking at, through one fixed window (fractions of the 16-bit
    range) for every image, so that density categories look as different as they are."""
    lo, hi = window[0] * MAX_VALUE, window[1] * MAX_VALUE
    u8 = (np.clip((image.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)


def _label(img, text, org, scale=0.38, color=(255, 255, 255)):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _marked(out: Rendered) -> np.ndarray:
    """The image with malignant boxes (red, solid), look-alikes (blue ellipses) and speck clusters (yellow)."""
    img = to_display(out.image)
    for m in out.lookalikes:
        x1, y1, x2, y2 = m["box"]
        cv2.ellipse(img, (int((x1 + x2) / 2), int((y1 + y2) / 2)), (int((x2 - x1) / 2) + 3, int((y2 - y1) / 2) + 3),
                    0, 0, 360, LOOKALIKE_COLOR, 1, cv2.LINE_AA)
    for x1, y1, x2, y2 in out.calcification_boxes:
        cv2.rectangle(img, (int(x1) - 2, int(y1) - 2), (int(x2) + 2, int(y2) + 2), CALCIFICATION_COLOR, 1)
    for m in out.masses:
        x1, y1, x2, y2 = m["box"]
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), MASS_COLOR, 1)
    return img


def contact_sheet(path: str, spec: SyntheticSpec | None = None, seed: int = 0) -> str:
    """A picture of the phantom (docs/images/phantom.png): per density category A-D a positive CC view
    (malignant masses boxed in red; two margins) and a negative MLO view (look-alikes circled in blue,
    speck clusters in yellow), then close-ups of every malignant margin and look-alike kind, unmarked, all
    of the middle size and the top contrast, on fatty (A) tissue.
    Written as an 8-bit PNG; returns ``path``."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    tiles = []
    for k, density in enumerate(DENSITY_CATEGORIES):
        gf = float(np.mean(GLANDULAR_FRACTION[density]))
        margins = [MALIGNANT_MARGINS[k % 4], MALIGNANT_MARGINS[(k + 2) % 4]]
        pos = render_image(rng, spec, "R", "CC", [draw_lesion(rng, spec, True, m) for m in margins],
                           [draw_lesion(rng, spec, False)], 0, density, gf, 3.0)
        kinds = [LOOKALIKE_KINDS[(2 * k + j) % len(LOOKALIKE_KINDS)] for j in range(3)]
        neg = render_image(rng, spec, "L", "MLO", (), [draw_lesion(rng, spec, False, kd) for kd in kinds], 1,
                           density, gf, 3.0)
        for out, what in ((pos, "with cancer"), (neg, "negative")):
            img = _marked(out)
            _label(img, f"{density}: {DENSITY_NAMES[density]}", (4, 14))
            _label(img, f"{what}, beta {out.beta:.1f}", (4, 28))
            for m in (*out.masses, *out.lookalikes):
                x1, y1, x2, y2 = m["box"]
                _label(img, m["kind"].replace("_", " "), (int(x1), int(y2) + 12), 0.32,
                       (170, 170, 255) if m["class"] == "malignant" else (255, 230, 170))
            tiles.append(img)
    rows = [np.hstack(tiles[0::2]), np.hstack(tiles[1::2])]
    # close-ups: each kind once, on fatty (A) tissue, 2.4x
    crops, size = [], 2 * round(2.6 * spec.max_radius)
    gallery = [(True, m) for m in MALIGNANT_MARGINS] + [(False, kd) for kd in LOOKALIKE_KINDS] + [(None, "specks")]
    for malignant, kind in gallery:
        lesions = [] if malignant is None else [draw_lesion(rng, spec, malignant, kind)]
        lesions = [dict(les, radius=0.5 * (spec.min_radius + spec.max_radius), contrast=spec.max_contrast)
                   for les in lesions]
        out = render_image(rng, spec, "R", "CC", lesions if malignant else (), lesions if malignant is False else (),
                           int(malignant is None), "A", 0.15, 3.0)
        boxes = [m["box"] for m in (*out.masses, *out.lookalikes)] or out.calcification_boxes
        x1, y1, x2, y2 = boxes[0]
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        x0, y0 = min(max(cx - size // 2, 0), w - size), min(max(cy - size // 2, 0), h - size)
        crop = cv2.resize(to_display(out.image)[y0:y0 + size, x0:x0 + size], (0, 0), fx=2.4, fy=2.4,
                          interpolation=cv2.INTER_CUBIC)
        name = ("malignant " if malignant else "benign " if malignant is False else "") + kind.replace("_", " ")
        _label(crop, name, (3, crop.shape[0] - 6), 0.38,
               (170, 170, 255) if malignant else (255, 230, 170) if malignant is False else (150, 230, 250))
        crops.append(crop)
    per_row = max(1, rows[0].shape[1] // crops[0].shape[1])
    blank = np.zeros_like(crops[0])
    for i in range(0, len(crops), per_row):
        chunk = crops[i:i + per_row] + [blank] * (per_row - len(crops[i:i + per_row]))
        strip = np.hstack(chunk)
        pad = rows[0].shape[1] - strip.shape[1]
        rows.append(cv2.copyMakeBorder(strip, 2, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT, value=0))
    sheet = np.vstack(rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}")
    return path
