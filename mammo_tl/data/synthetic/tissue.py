"""The breast's tissue and outline (docs/phantom.md, sections 2 and 3): intensities, density categories and
their glandular fractions, the power-law parenchyma, the outline with skin, nipple and pectoral muscle."""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

# --- tissue (intensities as fractions of the 16-bit range; docs/phantom.md) ---
BACKGROUND_LEVEL = 0.015  # outside the breast
FAT_LEVEL = 0.30  # adipose tissue
GLAND_LEVEL = 0.58  # fibroglandular tissue
PECTORAL_ADD = 0.15  # the pectoral muscle over the tissue (MLO)
SKIN_ADD = 0.05  # the skin line
TEXTURE_AMPLITUDE = 0.05  # of the power-law field, added to fat and gland alike
# width of the soft threshold from field to glandular map, in standard deviations of the field: wide
# enough to keep the 1/f^beta texture (a hard threshold would add edges, i.e. high frequencies)
GLAND_SOFTNESS = 0.7
PRIOR_WEIGHT = 1.0  # of the spatial prior (tissue behind the nipple), in standard deviations of the field
BETA_RANGE = (2.5, 3.5)  # power-law exponent of the parenchyma, drawn per patient, jittered per image
DENSITY_CATEGORIES = ("A", "B", "C", "D")
DENSITY_NAMES = {"A": "almost entirely fatty", "B": "scattered fibroglandular", "C": "heterogeneously dense",
                 "D": "extremely dense"}
# share of patients per category: C + D = 0.43 as measured in US screening (Sprague et al. 2014); the split
# within dense and non-dense is a choice
DENSITY_PREVALENCE = (0.10, 0.47, 0.36, 0.07)
# glandular fraction of the breast's interior per category: the quartiles of BI-RADS 4th edition (2003)
GLANDULAR_FRACTION = {"A": (0.03, 0.25), "B": (0.25, 0.50), "C": (0.50, 0.75), "D": (0.75, 0.95)}


@lru_cache(maxsize=8)
def _grid(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def power_law_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float, anisotropy: float = 1.0,
                    angle: float = 0.0, pad: int = 32) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^beta (f: radial frequency, stretched by ``anisotropy`` < 1
    along direction ``angle``: elongated structures), zero mean, unit standard deviation. Drawn on a grid
    larger by ``pad`` on each side and cropped, so opposite edges are not correlated."""
    h, w = shape
    hp, wp = h + 2 * pad, w + 2 * pad
    fy = np.fft.fftfreq(hp).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(wp).astype(np.float32)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    u, v = fx * c + fy * s, -fx * s + fy * c
    f = np.sqrt((u / anisotropy) ** 2 + v ** 2)
    f[0, 0] = 1.0
    amp = np.maximum(f, 1.0 / max(hp, wp)) ** (-beta / 2.0)
    amp[0, 0] = 0.0
    coeffs = (rng.standard_normal(amp.shape, dtype=np.float32)
              + 1j * rng.standard_normal(amp.shape, dtype=np.float32)) * amp
    noise = np.fft.irfft2(coeffs, s=(hp, wp))[pad:pad + h, pad:pad + w].astype(np.float32)
    noise -= noise.mean()
    return noise / (noise.std() + 1e-12)


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _anatomy(rng, h, w, view):
    """Breast (with nipple), skin distance, pectoral muscle and the parenchyma's spatial prior, for a right
    breast (chest wall on the left); the caller flips left breasts."""
    yy, xx = _grid(h, w)
    depth = w * rng.uniform(0.70, 0.88)
    half_height = h * rng.uniform(0.40, 0.46)
    cy = h * rng.uniform(0.47, 0.53)
    # the outline wobbles a little so no two breasts are alike
    wobble = 1.0 + 0.04 * np.sin(yy / h * rng.uniform(4, 8) + rng.uniform(0, 2 * np.pi))
    inside = (xx / (depth * wobble)) ** 2 + ((yy - cy) / half_height) ** 2 <= 1.0
    # nipple: a small bump in profile at the front of the breast
    ny = cy + rng.uniform(-0.06, 0.06) * half_height
    row = inside[round(ny)]
    nx = float(np.nonzero(row)[0].max()) if row.any() else depth
    nr = rng.uniform(3.0, 5.5)
    nipple = (xx - nx) ** 2 + (yy - ny) ** 2 <= nr ** 2
    mask = inside | nipple
    pectoral = np.zeros((h, w), np.float32)
    if view == "MLO":  # pectoral muscle: a bright, slightly convex triangle in the upper chest-wall corner
        a, b = w * rng.uniform(0.25, 0.40), h * rng.uniform(0.35, 0.50)
        t = (xx / a) ** 1.15 + (yy / b)
        pectoral = np.clip((1.0 - t) * min(a, b) / 2.0 + 0.5, 0, 1).astype(np.float32)
        mask = mask | (pectoral > 0.5)
    mask_u8 = mask.astype(np.uint8)
    # distance to the skin, counting the chest wall (image edge x = 0) as inside, not as skin
    padded = cv2.copyMakeBorder(mask_u8, 0, 0, 8, 0, cv2.BORDER_REPLICATE)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[:, 8:]
    # fibroglandular tissue gathers behind the nipple, away from the chest wall and the skin
    gx = nx * rng.uniform(0.40, 0.60)
    prior = -(((xx - gx) / (0.65 * nx)) ** 2 + ((yy - ny) / (0.85 * half_height)) ** 2)
    return dict(mask=mask, dist=dist, pectoral=pectoral, prior=prior.astype(np.float32))


def _parenchyma(rng, field_, prior, dist, pectoral, glandular_fraction):
    """Glandular map in [0, 1]: the power-law field plus the spatial prior, softly thresholded so that a
    fraction ``glandular_fraction`` of the breast's interior is glandular (> 0.5), fading to fat under the
    skin (the subcutaneous layer)."""
    subcut = rng.uniform(5.0, 10.0)
    f = field_ + rng.uniform(0.6, 1.0) * PRIOR_WEIGHT * prior
    interior = (dist > subcut) & (pectoral < 0.1)
    thr = float(np.quantile(f[interior], 1.0 - glandular_fraction)) if interior.any() else 0.0
    gland = 1.0 / (1.0 + np.exp(-(f - thr) / GLAND_SOFTNESS))
    gland *= _smoothstep(dist, 0.3 * subcut, subcut)
    return gland.astype(np.float32)
