"""Lesions (docs/phantom.md, section 4): malignant masses and benign look-alikes, their BI-RADS kinds and
shares, sizes and contrasts (:func:`draw_lesion`), their outlines and intensity profiles, and where they go."""
from __future__ import annotations

import math

import numpy as np

from .spec import SyntheticSpec

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
