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

The package follows docs/phantom.md's sections, one file each: ``spec.py`` (the generator's version, views,
protocols, the DDSM case mix, :class:`SyntheticSpec`; section 1), ``patients.py`` (views, density and lesions per
patient or case; section 1), ``tissue.py`` (density and tissue, the breast outline; sections 2 and 3),
``lesions.py`` (section 4), ``render.py`` (one image from all of these), ``sets.py`` (what a set holds: writing it,
optional DICOM, loading it back; section 5) and ``pictures.py`` (the contact sheet). They import numpy, OpenCV,
pydicom (DICOM only, inside functions), detectron2 (loading only) and tqdm, and of mammo_tl only
``mammo_tl.data.records`` and ``mammo_tl.files``: nothing above ``data/``. The names below are the package's
public face; the rest is reached through its module.
"""
from .lesions import LOOKALIKE_KINDS, MALIGNANT_MARGINS, draw_lesion
from .patients import draw_ddsm_case, draw_patient
from .pictures import contact_sheet
from .render import render_image
from .sets import generate, load_phantom_truth, load_synthetic, mammogram_dataset, matches_spec, write_dicom
from .spec import (DDSM_TEST_MIX, DDSM_TRAIN_MIX, GENERATOR_VERSION, MAX_VALUE, PROTOCOLS, SyntheticSpec,
                   case_mix)
from .tissue import BETA_RANGE, DENSITY_CATEGORIES, FAT_LEVEL, GLAND_LEVEL, GLANDULAR_FRACTION, power_law_noise

__all__ = [
    "GENERATOR_VERSION", "PROTOCOLS", "DDSM_TRAIN_MIX", "DDSM_TEST_MIX", "MAX_VALUE", "SyntheticSpec", "case_mix",
    "draw_patient", "draw_ddsm_case",
    "BETA_RANGE", "DENSITY_CATEGORIES", "FAT_LEVEL", "GLAND_LEVEL", "GLANDULAR_FRACTION", "power_law_noise",
    "LOOKALIKE_KINDS", "MALIGNANT_MARGINS", "draw_lesion",
    "render_image",
    "generate", "matches_spec", "load_synthetic", "load_phantom_truth", "write_dicom", "mammogram_dataset",
    "contact_sheet",
]
