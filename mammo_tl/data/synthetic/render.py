"""One phantom image (:func:`render_image`): tissue, lesions and speck clusters, skin, thickness and noise, with
its truth (:class:`Rendered`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .lesions import _lesion_patch, _outline_params, _place
from .spec import MAX_VALUE, SyntheticSpec
from .tissue import (BACKGROUND_LEVEL, FAT_LEVEL, GLAND_LEVEL, GLANDULAR_FRACTION, PECTORAL_ADD, SKIN_ADD,
                     TEXTURE_AMPLITUDE, _anatomy, _grid, _parenchyma, power_law_noise)


@dataclass
class Rendered:
    """One synthetic mammogram and its truth (boxes as [x1, y1, x2, y2] in pixels)."""

    image: np.ndarray  # uint16
    masses: list[dict]  # per malignant mass: its draw_lesion dict plus box, centre
    lookalikes: list[dict]  # per look-alike: the same
    calcification_boxes: list[list]
    density: str
    glandular_fraction: float
    beta: float

    @property
    def mass_boxes(self) -> list[list[float]]:
        return [m["box"] for m in self.masses]

    @property
    def lookalike_boxes(self) -> list[list[float]]:
        return [m["box"] for m in self.lookalikes]


def render_image(rng: np.random.Generator, spec: SyntheticSpec, laterality: str, view: str,
                 masses: Sequence[dict] = (), lookalikes: Sequence[dict] = (), calcifications: int = 0,
                 density: str = "B", glandular_fraction: float | None = None, beta: float = 3.0,
                 draw_lesions: bool = True) -> Rendered:
    """One synthetic mammogram holding ``masses`` and ``lookalikes`` (dicts of :func:`draw_lesion`) and
    ``calcifications`` speck clusters. With ``draw_lesions`` False everything is drawn (the same random
    numbers) but the lesions are left out of the pixels: the tissue alone, for tests."""
    h, w = spec.height, spec.width
    if glandular_fraction is None:
        glandular_fraction = float(np.mean(GLANDULAR_FRACTION[density]))
    an = _anatomy(rng, h, w, view)
    field_ = power_law_noise(rng, (h, w), beta, anisotropy=rng.uniform(0.6, 0.85),
                             angle=rng.uniform(-0.35, 0.35) + (0.4 if view == "MLO" else 0.0))
    gland = _parenchyma(rng, field_, an["prior"], an["dist"], an["pectoral"], glandular_fraction)
    mask, dist, pectoral = an["mask"], an["dist"], an["pectoral"]
    if laterality == "L":  # left breasts face left: chest wall on the right
        mask, dist, pectoral, gland = (np.ascontiguousarray(a[:, ::-1]) for a in (mask, dist, pectoral, gland))
    if laterality == "L":
        field_ = np.ascontiguousarray(field_[:, ::-1])
    # the glandular map makes the density; a little of the field itself runs through fat and gland alike
    # (ligaments, vessels, ducts), so that fatty breasts have texture too
    att = FAT_LEVEL + (GLAND_LEVEL - FAT_LEVEL) * gland + TEXTURE_AMPLITUDE * field_ + PECTORAL_ADD * pectoral

    # lesions go well inside the breast and off the pectoral muscle
    pect_u8 = (pectoral > 0.05).astype(np.uint8)
    off_pect = cv2.distanceTransform(1 - pect_u8, cv2.DIST_L2, 5) if pect_u8.any() else np.full((h, w), 1e6, np.float32)
    yy, xx = _grid(h, w)
    free = np.minimum(np.minimum(dist, off_pect), np.minimum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy)))
    taken, placed = [], {"malignant": [], "benign": []}
    for les in (*masses, *lookalikes):
        params = _outline_params(les)
        scale = float(rng.uniform(0.92, 1.08))  # the projection differs a little between views
        r = les["radius"] * scale
        reach = 2.4 * r if params["spicules"] else 1.3 * r
        cx, cy = _place(rng, free, r, taken, margin=reach + 3)
        taken.append((cx, cy, r))
        rot = float(rng.uniform(0, 2 * np.pi))
        y0, x0, profile, body = _lesion_patch(les, params, cx, cy, rot, scale, h, w)
        ys, xs = np.nonzero(body > 0.25)
        box = [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)]
        if draw_lesions:
            ph, pw = profile.shape
            g = gland[y0:y0 + ph, x0:x0 + pw]
            att[y0:y0 + ph, x0:x0 + pw] += les["contrast"] * profile * (1.0 - spec.masking * g)
        placed[les["class"]].append(dict(les, box=box, center=[cx, cy], scale=scale))
    calc_boxes = []
    for _ in range(calcifications):
        rc = float(rng.uniform(3.0, 7.0))
        cx, cy = _place(rng, free, rc, taken, margin=rc + 6)
        taken.append((cx, cy, rc))
        n = int(rng.integers(4, 13))
        ang, rad = rng.uniform(0, 2 * np.pi, n), rc * np.sqrt(rng.uniform(0, 1, n))
        px, py = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        sig = rng.uniform(0.5, 0.9, n)
        amp = rng.uniform(1.0, 2.0, n) * spec.max_contrast
        x0, y0 = int(max(px.min() - 4, 0)), int(max(py.min() - 4, 0))
        x1, y1 = int(min(px.max() + 5, w)), int(min(py.max() + 5, h))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        specks = np.zeros_like(xx)
        for k in range(n):
            specks += amp[k] * np.exp(-0.5 * ((xx - px[k]) ** 2 + (yy - py[k]) ** 2) / sig[k] ** 2)
        if draw_lesions:
            att[y0:y1, x0:x1] += specks
        calc_boxes.append([float(np.floor(px.min() - 2 * sig.max())), float(np.floor(py.min() - 2 * sig.max())),
                           float(np.ceil(px.max() + 2 * sig.max())), float(np.ceil(py.max() + 2 * sig.max()))])

    # thinner compressed breast towards the skin: darker periphery; a thin bright skin line
    thickness = 0.55 + 0.45 * np.sqrt(1.0 - (1.0 - np.clip(dist / rng.uniform(10.0, 18.0), 0, 1)) ** 2)
    img = att * thickness + SKIN_ADD * np.exp(-0.5 * ((dist - 1.0) / 0.9) ** 2)
    edge = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.7)
    img = img * edge + BACKGROUND_LEVEL * (1.0 - edge)
    img = img + spec.quantum_noise * rng.standard_normal((h, w), dtype=np.float32)
    img = (np.clip(img, 0, 1) * MAX_VALUE).astype(np.uint16)
    return Rendered(img, placed["malignant"], placed["benign"], calc_boxes, density, float(glandular_fraction),
                    float(beta))
