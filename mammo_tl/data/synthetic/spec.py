"""What decides a phantom set (docs/phantom.md, section 1): the generator's version, the views, the protocols
and the paper's DDSM case mix, and :class:`SyntheticSpec`."""
from __future__ import annotations

import math
from dataclasses import dataclass

# Bump when the generator's output changes for the same spec, so cached sets are regenerated.
GENERATOR_VERSION = 3
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
# which breasts a case images and which hold look-alikes (the package docstring, docs/phantom.md section 1)
PROTOCOLS = ("screening", "ddsm")
# the paper's DDSM case mix (malignant, benign): training 304 : 296 cases, test 45 : 55
DDSM_TRAIN_MIX = (304, 296)
DDSM_TEST_MIX = (45, 55)
MAX_VALUE = 65535


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
    # "screening" or "ddsm" (PROTOCOLS; the package docstring): which breasts are imaged and hold look-alikes.
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
