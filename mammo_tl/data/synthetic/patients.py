"""Patients and cases (docs/phantom.md, section 1): which views are imaged, the density, and which breast holds
which lesions, under the ``screening`` protocol (:func:`draw_patient`) and the ``ddsm`` one
(:func:`draw_ddsm_case`)."""
from __future__ import annotations

import numpy as np

from .lesions import draw_lesion
from .spec import VIEWS, SyntheticSpec
from .tissue import BETA_RANGE, DENSITY_CATEGORIES, DENSITY_PREVALENCE, GLANDULAR_FRACTION


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
