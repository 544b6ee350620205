"""Registration of the synthetic mammogram sets (mammo_tl.data.synthetic) by name.

Sets live under ``$MAMMO_TL_DATASETS/synthetic/<split>`` (default ``./datasets``) and are generated,
deterministically, the first time they are asked for.
"""
from __future__ import annotations

import logging
import os
import threading

from detectron2.data import DatasetCatalog

from ..records import BENIGN_CLASS_NAME, CLASS_NAMES, box_annotation, validate_records
from ..synthetic import (DDSM_TEST_MIX, DDSM_TRAIN_MIX, SyntheticSpec, case_mix, generate, load_phantom_truth,
                         load_synthetic, matches_spec)
from .common import register_records

logger = logging.getLogger(__name__)

# name -> spec. The test set has >= 100 negative and 50 positive patients, enough for a specificity
# difference of 0.10 to stand outside the bootstrap noise.
BUILTIN_SYNTHETIC = {
    "mammo_synth_train": SyntheticSpec(num_positive_patients=100, num_negative_patients=100, seed=0),
    "mammo_synth_test": SyntheticSpec(num_positive_patients=50, num_negative_patients=100, seed=1),
    # patients disjoint from both (the seed is in every patient id): where operating points are chosen
    "mammo_synth_val": SyntheticSpec(num_positive_patients=30, num_negative_patients=60, seed=2),
}


def _ddsm(total, mix, seed):
    pos, neg = case_mix(total, mix)
    return SyntheticSpec(num_positive_patients=pos, num_negative_patients=neg, seed=seed, protocol="ddsm")


# The same phantom under the paper's DDSM protocol (malignant and benign cases, one breast of two views each;
# mammo_tl.data.synthetic): the paper's case mix, training 304 : 296 (152 : 148 of 300 cases, 600 images),
# test and validation 45 : 55 (90 : 110 of 200 cases; 45 : 55 of 100). Seeds of their own: no patient id is
# shared with a screening set.
BUILTIN_SYNTHETIC.update({
    "mammo_synth_ddsm_train": _ddsm(300, DDSM_TRAIN_MIX, seed=20),
    "mammo_synth_ddsm_test": _ddsm(200, DDSM_TEST_MIX, seed=21),
    "mammo_synth_ddsm_val": _ddsm(100, DDSM_TEST_MIX, seed=22),
})
# The same images with every benign look-alike boxed as a second class, "benign" (category 1), from the phantom's
# truth: the look-alikes of the benign cases' images and the incidental ones of the malignant cases' images. Full
# supervision of the look-alikes, the ceiling a method learning from unannotated negative images is read against
# (configs/synthetic_ddsm/o_benign_annotated.yaml). Name -> the set whose images it annotates.
BENIGN_BOXED = {"mammo_synth_ddsm_train_benign_boxed": "mammo_synth_ddsm_train"}
_lock = threading.Lock()


def load_with_benign_boxes(root: str) -> list[dict]:
    """:func:`~mammo_tl.data.synthetic.load_synthetic`'s records of the set in ``root``, each look-alike of the
    phantom's truth added as a box of category 1 (benign) beside the cancers' boxes."""
    records = load_synthetic(root)
    truth = load_phantom_truth(root)
    for r in records:
        r["annotations"] = r["annotations"] + [dict(box_annotation(b), category_id=CLASS_NAMES.index(BENIGN_CLASS_NAME))
                                               for b in truth[r["image_id"]]["lookalike_boxes"]]
    return validate_records(records, os.path.join(root, "annotations.json") + " (look-alikes boxed as benign)")


def synthetic_root(name: str) -> str:
    base = os.environ.get("MAMMO_TL_DATASETS", "datasets")
    return os.path.join(base, "synthetic", name.replace("mammo_synth_", ""))


def register_synthetic(name: str, root: str, spec: SyntheticSpec | None = None, benign_boxes: bool = False) -> None:
    """Register ``name`` for the set in ``root``; with ``spec``, generate it there when missing or made
    from another spec (another protocol included) or generator version. ``benign_boxes``: the look-alikes boxed as
    a second class (:func:`load_with_benign_boxes`)."""

    def load() -> list[dict]:
        if spec is not None and not matches_spec(root, spec):
            with _lock:
                if not matches_spec(root, spec):
                    if os.path.exists(os.path.join(root, "annotations.json")):
                        logger.warning("%s: %s holds a set made from another spec, protocol or generator version: "
                                       "generating it again", name, root)
                        os.remove(os.path.join(root, "annotations.json"))
                    logger.info("Generating synthetic set %s in %s", name, root)
                    generate(root, spec)
        return load_with_benign_boxes(root) if benign_boxes else load_synthetic(root)

    register_records(name, load, class_names=CLASS_NAMES if benign_boxes else None, root=root)


def register_builtin() -> None:
    for name, spec in BUILTIN_SYNTHETIC.items():
        if name not in DatasetCatalog:
            register_synthetic(name, synthetic_root(name), spec)
    for name, images in BENIGN_BOXED.items():
        if name not in DatasetCatalog:
            register_synthetic(name, synthetic_root(images), BUILTIN_SYNTHETIC[images], benign_boxes=True)


register_builtin()
