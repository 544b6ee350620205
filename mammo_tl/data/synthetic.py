"""Synthetic mammograms: the built-in data set, deterministic by seed. The generative model, its parameters
and the published measurements they follow are documented in docs/phantom.md.

Each patient has 2 to 4 views (CC/MLO of the left and/or right breast) and a breast density category
(ACR BI-RADS A-D) with a glandular fraction of the breast. An image is a 16-bit phantom: a breast outline
with skin line, nipple and (MLO) pectoral muscle; parenchyma drawn from power-law noise (power spectrum
~ 1/f^beta, beta in 2.5-3.5 per image), thresholded softly to the patient's glandular fraction. Lesions
are drawn per breast (the same masses in every view of that breast, placed anew in each):

* a positive patient has one breast with 1 or 2 *malignant masses*, each annotated with a box: margins
  spiculated, indistinct, microlobulated or (a fraction ``circumscribed_fraction``) circumscribed;
* every other breast is negative (``annotations: []``);
* *benign look-alikes* are never annotated (the suspected targets the method is about): oval, round,
  lobulated and obscured masses, cysts with a dark halo, intramammary lymph nodes with a fatty hilum;
* any breast may hold a cluster of bright specks (calcification-like distractors, never annotated).

Which breasts are imaged and which hold look-alikes is the set's *protocol* (``SyntheticSpec.protocol``):

* ``screening`` (generator version 3 as it was): 2 to 4 views per patient; every breast, with cancer or
  not, holds a look-alike with probability ``lookalike_prob``, so how many look-alikes a breast holds says
  nothing about cancer; the negative patients are healthy women.
* ``ddsm`` (the paper's public experiment, DDSM's malignant and benign cases): a case images one breast, CC
  and MLO. A positive (malignant) case's breast holds its 1 or 2 cancers and a look-alike with probability
  ``malignant_lookalike_prob``; a negative (benign) case's breast holds 1 or 2 look-alikes and no cancer,
  so every negative image holds a suspected target.

Sizes and contrasts of both classes come from the same ranges; the glandular tissue masks part of a lesion's
contrast (``masking``), so lesions show less in dense breasts.

Written as 16-bit PNG (and optionally DICOM, modality MG) with ``annotations.json`` (COCO style, with
``patient_id``, ``laterality`` and ``view`` on every image, and the phantom's truth: ``density``, ``beta``,
``glandular_fraction``, ``mass_margins``, ``lookalike_boxes``, ``lookalike_kinds``, ``calcification_boxes``
and ``lesions``) and ``patients.csv``. Loaded (:func:`load_synthetic`), its records have the shape every
converter's records have (validated by the same ``validate_records``), so training and evaluation take one
path for both; the phantom's truth is read with :func:`load_phantom_truth`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .records import box_annotation, export_coco, validate_records

if TYPE_CHECKING:
    from pydicom.dataset import FileDataset

logger = logging.getLogger(__name__)

# Bump when the generator's output changes for the same spec, so cached sets are regenerated.
GENERATOR_VERSION = 3
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
# which breasts a case images and which hold look-alikes (module docstring, docs/phantom.md section 1)
PROTOCOLS = ("screening", "ddsm")
# the paper's DDSM case mix (malignant, benign): training 304 : 296 cases, test 45 : 55
DDSM_TRAIN_MIX = (304, 296)
DDSM_TEST_MIX = (45, 55)
MAX_VALUE = 65535

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

# --- lesions: BI-RADS kinds and their shares (choices; docs/phantom.md) ---
MALIGNANT_MARGINS = ("spiculated", "indistinct", "microlobulated", "circumscribed")
# of the non-circumscribed malignant masses (circumscribed: SyntheticSpec.circumscribed_fraction)
MALIGNANT_SHARES = (0.60, 0.25, 0.15)
LOOKALIKE_KINDS = ("oval", "round", "lobulated", "obscured", "cyst", "lymph_node")
LOOKALIKE_SHARES = (0.25, 0.10, 0.15, 0.20, 0.15, 0.15)
# BI-RADS (shape, margin) of each kind; a malignant mass's shape is drawn where two are listed
KIND_DESCRIPTORS = {
    "spiculated": (("irregular",), "spiculated"), "indistinct": (("irregular", "oval"), "indistinct"),
    "microlobulated": (("oval", "irregular"), "microlobulated"), "circumscribed": (("oval", "round"), "circumscribed"),
    "oval": (("oval",), "circumscribed"), "round": (("round",), "circumscribed"),
    "lobulated": (("oval",), "circumscribed"), "obscured": (("oval",), "obscured"),
    "cyst": (("round",), "circumscribed"), "lymph_node": (("oval",), "circumscribed"),
}


@dataclass
class SyntheticSpec:
    """Everything that decides a synthetic data set; ``seed`` makes it reproducible."""

    num_positive_patients: int = 50
    num_negative_patients: int = 50
    seed: int = 0
    height: int = 320
    width: int = 256
    # equivalent radius (sqrt of the half-axes' product) of masses and look-alikes, in pixels of this image
    # size; both classes draw from this one range (lymph nodes from its lower 3/4)
    min_radius: float = 9.0
    max_radius: float = 16.0
    # peak contrast of a lesion over fatty tissue, as a fraction of the 16-bit range (see
    # class_contrast_shift). Over glandular tissue a lesion shows (1 - masking) of it.
    min_contrast: float = 0.12
    max_contrast: float = 0.30
    masking: float = 0.6
    # share of malignant masses with circumscribed margins (shaped like the benign oval/round look-alikes)
    circumscribed_fraction: float = 0.15
    # malignant contrasts come from the upper (1 - class_contrast_shift) of [min_contrast, max_contrast],
    # benign ones from the lower: overlapping ranges, cancers denser on average
    class_contrast_shift: float = 0.3
    # chance that a breast holds a benign look-alike, the same for every breast (healthy ones and the one with
    # cancer; the baseline sees those in positive images as background)
    lookalike_prob: float = 0.5
    # chance that a breast holds a cluster of bright specks (calcification-like, never annotated)
    calcification_prob: float = 0.3
    # standard deviation of the white (quantum) noise, as a fraction of the 16-bit range
    quantum_noise: float = 0.008
    write_dicom: bool = False
    # "screening" or "ddsm" (PROTOCOLS; module docstring): which breasts are imaged and hold look-alikes.
    # Under "ddsm" the positive patients are malignant cases and the negative ones benign cases.
    protocol: str = "screening"
    # "ddsm" only: chance that a malignant case's breast also holds a look-alike (docs/phantom.md, section 1)
    malignant_lookalike_prob: float = 0.1

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"SyntheticSpec.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        for name in ("lookalike_prob", "malignant_lookalike_prob", "calcification_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticSpec.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")


def case_mix(total: int, mix: tuple[int, int]) -> tuple[int, int]:
    """``total`` patients split as the ratio ``mix`` (positive, negative), the positive count rounded to the
    nearest integer: e.g. ``case_mix(200, DDSM_TEST_MIX) == (90, 110)``."""
    if total < 0 or min(mix) < 0 or sum(mix) == 0:
        raise ValueError(f"case_mix: need total >= 0 and a mix of non-negative counts, got {total}, {mix}")
    positive = math.floor(total * mix[0] / sum(mix) + 0.5)
    return positive, total - positive


# ------------------------------------------------------------------------------------------------ tissue


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


# ----------------------------------------------------------------------------------------------- lesions


def draw_lesion(rng: np.random.Generator, spec: SyntheticSpec, malignant: bool, kind: str | None = None) -> dict:
    """A lesion's kind, BI-RADS shape and margin, size and contrast, and the seed of its outline (the same
    outline in every view of the breast). ``kind`` forces one (a malignant margin or a look-alike kind)."""
    if kind is None:
        if malignant:
            if rng.random() < spec.circumscribed_fraction:
                kind = "circumscribed"
            else:
                kind = MALIGNANT_MARGINS[int(rng.choice(3, p=MALIGNANT_SHARES))]
        else:
            kind = LOOKALIKE_KINDS[int(rng.choice(len(LOOKALIKE_KINDS), p=LOOKALIKE_SHARES))]
    valid = MALIGNANT_MARGINS if malignant else LOOKALIKE_KINDS
    if kind not in valid:
        raise ValueError(f"{'malignant' if malignant else 'look-alike'} kind {kind!r} is not one of {valid}")
    shapes, margin = KIND_DESCRIPTORS[kind]
    shape = shapes[int(rng.integers(len(shapes)))]
    lo, hi = spec.min_radius, spec.max_radius
    if kind == "lymph_node":  # intramammary nodes are mostly small
        hi = lo + 0.75 * (hi - lo)
    return {"class": "malignant" if malignant else "benign", "kind": kind, "shape": shape, "margin": margin,
            "radius": float(rng.uniform(lo, hi)), "contrast": float(rng.uniform(*_contrast_range(spec, malignant))),
            "seed": int(rng.integers(2 ** 31))}


def _contrast_range(spec: SyntheticSpec, malignant: bool):
    lo, hi = spec.min_contrast, spec.max_contrast
    shift = spec.class_contrast_shift * (hi - lo)
    return (lo + shift, hi) if malignant else (lo, hi - shift)


def _outline_params(les):
    """Outline of a lesion, from its own seed: half-axes (in units of its radius), harmonics of the outline,
    edge width in pixels (per sector for obscured margins), spicules, halo, hilum."""
    g = np.random.default_rng(les["seed"])
    kind, r = les["kind"], les["radius"]
    p = dict(axes=(1.0, 1.0), harmonics=[], edge=g.uniform(0.7, 1.2), sector=None, dome=True, spicules=[],
             halo=None, hilum=None)
    if les["shape"] == "round":
        p["axes"] = (1.0, g.uniform(0.9, 1.0))
    elif les["shape"] == "oval":
        p["axes"] = (1.0, g.uniform(0.65, 0.9) if kind != "lymph_node" else g.uniform(0.55, 0.8))
    else:  # irregular: a few low harmonics with large amplitude
        p["axes"] = (1.0, g.uniform(0.8, 1.0))
        p["harmonics"] = [(k, g.uniform(0.05, 0.13), g.uniform(0, 2 * np.pi)) for k in range(2, 6)]
    if kind == "spiculated":
        n = int(g.integers(8, 17))
        p["spicules"] = [(g.uniform(0, 2 * np.pi), r * g.uniform(1.2, 2.5), g.uniform(0.55, 0.85), g.uniform(0.8, 1.2))
                         for _ in range(n)]
    elif kind == "indistinct":
        p["edge"] = r * g.uniform(0.30, 0.50)
    elif kind == "microlobulated":
        ks = g.choice(np.arange(6, 12), size=3, replace=False)
        p["harmonics"] = p["harmonics"] + [(int(k), g.uniform(0.06, 0.10), g.uniform(0, 2 * np.pi)) for k in ks]
    elif kind == "lobulated":  # gently lobulated: 2 or 3 broad undulations
        p["harmonics"] = [(k, g.uniform(0.05, 0.10), g.uniform(0, 2 * np.pi)) for k in (2, 3)[:int(g.integers(1, 3))]]
    elif kind == "obscured":  # part of the margin hidden by overlying tissue
        p["sector"] = (g.uniform(0, 2 * np.pi), g.uniform(np.radians(50), np.radians(110)), r * g.uniform(0.25, 0.40))
    elif kind == "cyst":  # uniform fluid, sharp edge, thin radiolucent halo
        p["edge"], p["dome"] = g.uniform(0.6, 0.9), False
        p["halo"] = (g.uniform(0.25, 0.5), g.uniform(1.0, 2.0))
    elif kind == "lymph_node":  # reniform, with a fatty (radiolucent) hilum notch on one side
        p["hilum"] = (1.0 if g.random() < 0.5 else -1.0, g.uniform(0.30, 0.45))
    return p


def _lesion_patch(les, params, cx, cy, rot, scale, h, w):
    """A lesion's intensity profile on a patch around (cx, cy): (y0, x0, profile, body) with body the mass
    itself in [0, 1] (its box: body > 0.25) and profile body, spicules, halo and hilum together."""
    r = les["radius"] * scale
    half = math.ceil(2.7 * r) + 3
    x0, y0 = max(int(cx) - half, 0), max(int(cy) - half, 0)
    x1, y1 = min(int(cx) + half + 1, w), min(int(cy) + half + 1, h)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(rot), math.sin(rot)
    ax, bx = params["axes"]
    norm = math.sqrt(ax * bx)
    a, b = r * ax / norm, r * bx / norm
    u, v = dx * c + dy * s, -dx * s + dy * c
    un, vn = u / a, v / b
    rr = np.sqrt(un ** 2 + vn ** 2)
    th = np.arctan2(vn, un)
    mod = np.ones_like(th)
    for k, amp, ph in params["harmonics"]:
        mod += amp * np.cos(k * th + ph)
    rr = rr / mod
    d = (rr - 1.0) * r  # approximate signed distance to the outline, outside > 0
    edge = params["edge"]
    if params["sector"] is not None:
        centre, width, blur = params["sector"]
        wgt = np.clip((np.cos(th - centre) - math.cos(width)) / (1 - math.cos(width)), 0, 1)
        edge = edge + (blur - edge) * wgt
    body = 0.5 * (1.0 - np.tanh(d / (0.5 * edge)))
    if params["dome"]:
        body *= 0.8 + 0.2 * np.sqrt(np.clip(1.0 - rr ** 2, 0, 1))
    profile = body
    if params["spicules"]:
        spic = np.zeros_like(body)
        for ang, length, amp, width in params["spicules"]:
            ca, sa = math.cos(ang + rot), math.sin(ang + rot)
            t = dx * ca + dy * sa
            perp = -dx * sa + dy * ca
            start, stop = 0.5 * r, r + length
            along = np.clip((t - start) / (stop - start), 0, None)
            line = amp * np.clip(1.0 - along, 0, 1) ** 0.5 * np.exp(-0.5 * (perp / width) ** 2) * (t > start)
            np.maximum(spic, line, out=spic)
        profile = np.maximum(body, spic)
    if params["halo"] is not None:
        depth, hw = params["halo"]
        profile = profile - depth * np.exp(-0.5 * ((d - hw) / (0.6 * hw)) ** 2) * (d > -0.5)
    if params["hilum"] is not None:
        side, hr = params["hilum"]
        dist_h = np.sqrt(u ** 2 + (v - side * 0.9 * b) ** 2)
        notch = np.clip((hr * b - dist_h) / 1.5 + 0.5, 0, 1)
        profile = profile * (1.0 - 1.15 * notch)
    return y0, x0, profile.astype(np.float32), body


def _place(rng, free_dist, radius, taken, margin):
    """A lesion centre at least ``margin`` inside the allowed area (``free_dist``: distance to its edge),
    away from other lesions; ``taken``: (x, y, r) of those placed."""
    ys, xs = np.nonzero(free_dist > margin)
    if len(xs) == 0:
        ys, xs = np.nonzero(free_dist >= free_dist.max())
        if free_dist.max() <= 2:
            raise RuntimeError("synthetic breast too small for a lesion; increase height/width")
    for _ in range(100):
        i = int(rng.integers(len(xs)))
        cx, cy = float(xs[i]), float(ys[i])
        if all((cx - x) ** 2 + (cy - y) ** 2 > (2.8 * max(radius, r)) ** 2 for x, y, r in taken):
            break
    return cx + float(rng.uniform(-0.5, 0.5)), cy + float(rng.uniform(-0.5, 0.5))


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


def write_dicom(path: str | os.PathLike, image: np.ndarray, patient_id: str, laterality: str, view: str) -> None:
    """Minimal uncompressed MONOCHROME2 mammogram DICOM (modality MG) with pydicom."""
    mammogram_dataset(path, image, patient_id, laterality, view).save_as(str(path), enforce_file_format=True)


def mammogram_dataset(path: str | os.PathLike, image: np.ndarray, patient_id: str, laterality: str,
                      view: str) -> FileDataset:
    """The pydicom dataset :func:`write_dicom` saves: 16-bit MONOCHROME2, explicit VR little endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
    return ds


def _patient_views(rng):
    """2 to 4 of the four standard views; a breast imaged at all has its CC view."""
    n = int(rng.integers(2, 5))
    if n == 4:
        return list(VIEWS)
    if n == 2:
        side = "LR"[int(rng.integers(2))]
        return [(side, "CC"), (side, "MLO")] if rng.random() < 0.6 else [("L", "CC"), ("R", "CC")]
    drop = int(rng.integers(4))
    return [v for i, v in enumerate(VIEWS) if i != drop]


def draw_patient(rng: np.random.Generator, spec: SyntheticSpec,
                 label: int) -> tuple[list[tuple[str, str]], str, float, float, dict[str, dict]]:
    """A patient's views, density category, glandular fraction, power-law exponent and, per imaged breast,
    its lesions: ``(views, density, glandular_fraction, beta, breasts)`` with breasts: laterality ->
    dict(masses, lookalikes, calcifications)."""
    views = _patient_views(rng)
    sick_side = views[int(rng.integers(len(views)))][0] if label else None
    density = DENSITY_CATEGORIES[int(rng.choice(4, p=DENSITY_PREVALENCE))]
    gf = float(rng.uniform(*GLANDULAR_FRACTION[density]))
    beta = float(rng.uniform(*BETA_RANGE))
    breasts = {}
    for side in sorted({lat for lat, _ in views}):
        masses = [draw_lesion(rng, spec, True) for _ in range(int(rng.integers(1, 3)))] if side == sick_side else []
        looks = [draw_lesion(rng, spec, False) for _ in range(int(rng.random() < spec.lookalike_prob))]
        calcifications = int(rng.random() < spec.calcification_prob)
        breasts[side] = dict(masses=masses, lookalikes=looks, calcifications=calcifications)
    return views, density, gf, beta, breasts


def draw_ddsm_case(rng: np.random.Generator, spec: SyntheticSpec,
                   label: int) -> tuple[list[tuple[str, str]], str, float, float, dict[str, dict]]:
    """A case of the ``ddsm`` protocol, as :func:`draw_patient` returns a patient: one breast (left or right),
    its CC and MLO views. Malignant (``label`` 1): 1 or 2 cancers and a look-alike with probability
    ``malignant_lookalike_prob``; benign (0): 1 or 2 look-alikes, no cancer."""
    side = "LR"[int(rng.integers(2))]
    views = [(side, "CC"), (side, "MLO")]
    density = DENSITY_CATEGORIES[int(rng.choice(4, p=DENSITY_PREVALENCE))]
    gf = float(rng.uniform(*GLANDULAR_FRACTION[density]))
    beta = float(rng.uniform(*BETA_RANGE))
    if label:
        masses = [draw_lesion(rng, spec, True) for _ in range(int(rng.integers(1, 3)))]
        looks = [draw_lesion(rng, spec, False) for _ in range(int(rng.random() < spec.malignant_lookalike_prob))]
    else:
        masses = []
        looks = [draw_lesion(rng, spec, False) for _ in range(int(rng.integers(1, 3)))]
    calcifications = int(rng.random() < spec.calcification_prob)
    return views, density, gf, beta, {side: dict(masses=masses, lookalikes=looks, calcifications=calcifications)}


LESION_KEYS = ("class", "kind", "shape", "margin", "radius", "contrast", "box", "center")


def generate(root: str, spec: SyntheticSpec | None = None, progress: bool = True) -> dict[str, str]:
    """Write a synthetic data set under ``root``; returns the paths of annotations.json and patients.csv.

    Deterministic: the same spec gives byte-identical images and annotations. The spec, its protocol included,
    is recorded in annotations.json (``info.spec``); a ``screening`` set's files are those generator version 3
    wrote before protocols existed, byte for byte, but for the two new keys of ``info.spec``.
    """
    from tqdm import tqdm

    spec = spec or SyntheticSpec()
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    labels = [1] * spec.num_positive_patients + [0] * spec.num_negative_patients
    rng.shuffle(labels)
    records, truth, patients = [], [], []
    draw = draw_ddsm_case if spec.protocol == "ddsm" else draw_patient
    bar = tqdm(total=len(labels), desc=f"synthetic mammograms -> {root}", unit="patient", disable=not progress)
    for p, label in enumerate(labels):
        patient_id = f"SYN{spec.seed:03d}_{p:05d}"
        views, density, gf, beta, breasts = draw(rng, spec, label)
        lo, hi = GLANDULAR_FRACTION[density]
        for laterality, view in views:
            b = breasts[laterality]
            # the two breasts and two views of a woman differ a little in texture and density
            img_beta = float(np.clip(beta + rng.normal(0, 0.08), *BETA_RANGE))
            img_gf = float(np.clip(gf + rng.normal(0, 0.02), lo, hi))
            out = render_image(rng, spec, laterality, view, b["masses"], b["lookalikes"], b["calcifications"],
                               density, img_gf, img_beta)
            image_id = len(records) + 1
            stem = f"{patient_id}_{laterality}_{view}"
            file_name = os.path.join("images", stem + ".png")
            cv2.imwrite(os.path.join(root, file_name), out.image)
            if spec.write_dicom:
                write_dicom(os.path.join(root, "images", stem + ".dcm"), out.image, patient_id, laterality, view)
            records.append(dict(file_name=file_name, height=spec.height, width=spec.width, image_id=image_id,
                                patient_id=patient_id, laterality=laterality, view=view,
                                lookalike_boxes=out.lookalike_boxes,
                                annotations=[box_annotation(m["box"]) for m in out.masses]))
            truth.append(dict(density=density, glandular_fraction=round(img_gf, 4), beta=round(img_beta, 4),
                              mass_margins=[m["margin"] for m in out.masses],
                              lookalike_kinds=[m["kind"] for m in out.lookalikes],
                              calcification_boxes=out.calcification_boxes,
                              lesions=[{k: m[k] for k in LESION_KEYS} for m in (*out.masses, *out.lookalikes)]))
        patients.append(dict(patient_id=patient_id, label=label, num_images=len(views), density=density))
        bar.update(1)
    bar.close()
    csv_path = os.path.join(root, "patients.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "label", "num_images", "density"])
        writer.writeheader()
        writer.writerows(patients)
    # COCO via the one exporter, then the phantom's truth per image; written last and atomically: its
    # presence means a complete set (see matches_spec)
    from ..files import atomic_write_json

    ann_path = os.path.join(root, "annotations.json")
    base = export_coco(records, os.path.join(root, ".annotations.coco.json"),
                       info=dict(description="mammo_tl synthetic mammograms", spec=asdict(spec),
                                 generator_version=GENERATOR_VERSION))
    with open(base) as f:
        coco = json.load(f)
    os.remove(base)
    for im, extra in zip(coco["images"], truth):
        im.update(extra)
    atomic_write_json(coco, ann_path)
    logger.info("synthetic set %s (%s protocol): %d patients (%d positive), %d images, %d masses", root,
                spec.protocol, len(patients), sum(labels), len(records),
                sum(len(r["annotations"]) for r in records))
    return {"annotations": ann_path, "patients": csv_path}


def matches_spec(root: str, spec: SyntheticSpec) -> bool:
    """True when ``root`` holds a complete set generated from ``spec`` (its protocol included) by this generator
    version; a set made under another protocol, or by a generator that recorded none, does not match."""
    try:
        with open(os.path.join(root, "annotations.json")) as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("spec") == asdict(spec) and info.get("generator_version") == GENERATOR_VERSION


def _read_annotations(root):
    ann_path = os.path.join(root, "annotations.json")
    if not os.path.exists(ann_path):
        raise FileNotFoundError(f"{ann_path} not found: generate the set first "
                                f"(python tools/make_synthetic.py --output {root})")
    with open(ann_path) as f:
        return ann_path, json.load(f)


def load_synthetic(root: str) -> list[dict]:
    """detectron2 dataset dicts of a set written by :func:`generate` (boxes in XYXY_ABS). The phantom's
    truth (density, look-alikes, lesion kinds) is left out, as for every data set: :func:`load_phantom_truth`."""
    from detectron2.structures import BoxMode

    ann_path, coco = _read_annotations(root)
    by_image = {}
    for a in coco["annotations"]:
        x, y, bw, bh = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            {"bbox": [x, y, x + bw, y + bh], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0})
    records = [dict(file_name=os.path.join(root, im["file_name"]), height=im["height"], width=im["width"],
                    image_id=im["id"], patient_id=im["patient_id"], laterality=im["laterality"], view=im["view"],
                    annotations=by_image.get(im["id"], []))
               for im in coco["images"]]
    return validate_records(records, ann_path)


TRUTH_KEYS = ("density", "glandular_fraction", "beta", "mass_margins", "lookalike_boxes", "lookalike_kinds",
              "calcification_boxes", "lesions")


def load_phantom_truth(root: str) -> dict[int, dict]:
    """image_id (as :func:`load_synthetic` gives it) -> the phantom's truth for that image: patient_id,
    density, glandular_fraction, beta, mass_margins, lookalike_boxes, lookalike_kinds, calcification_boxes and
    lesions (class, kind, shape, margin, radius, contrast, box, center per mass and look-alike)."""
    ann_path, coco = _read_annotations(root)
    out = {}
    for im in coco["images"]:
        missing = [k for k in TRUTH_KEYS if k not in im]
        if missing:
            raise ValueError(f"{ann_path}: image {im['id']} has no {missing}: made by an older generator; "
                             "generate the set again")
        out[im["id"]] = dict({k: im[k] for k in TRUTH_KEYS}, patient_id=im["patient_id"])
    return out


# --------------------------------------------------------------------------------------------- pictures

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
