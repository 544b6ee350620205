"""Patient-disjoint splits, including the paper's DDSM protocol from CBIS-DDSM mass cases."""
import numpy as np

from .datasets.common import DatasetError, check_patient_disjoint


def paper_ddsm_split(records, seed=0, train=(304, 296), test=(45, 55)):
    """Draw (train records, test records): ``train`` = (#malignant, #benign) images (paper: 304, 296) and
    ``test`` likewise (paper: 45, 55), by seed, with no patient on both sides.

    ``records``: CBIS-DDSM mass images (positive = has boxes, negative = benign with boxes removed).
    Patients are visited in a seeded random order; each patient's images go to the test side while it
    still needs images of their kinds, else to the training side; the quotas are then filled by seeded
    draws within each side.
    """
    rng = np.random.default_rng(seed)
    by_patient = {}
    for r in records:
        by_patient.setdefault(r["patient_id"], []).append(r)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    need = {"test": list(test), "train": list(train)}
    pools = {"test": ([], []), "train": ([], [])}
    for p in patients:
        imgs = by_patient[p]
        pos = [r for r in imgs if r["annotations"]]
        neg = [r for r in imgs if not r["annotations"]]
        missing_pos, missing_neg = _still_needed(need["test"], pools["test"])
        side = "test" if (pos and missing_pos > 0) or (neg and missing_neg > 0) else "train"
        pools[side][0].extend(pos)
        pools[side][1].extend(neg)
    out = {}
    for side in ("train", "test"):
        chosen = []
        for kind, (n, pool) in enumerate(zip(need[side], pools[side])):
            if len(pool) < n:
                raise DatasetError(f"paper split: {side} needs {n} {'malignant' if kind == 0 else 'benign'} "
                                   f"images, only {len(pool)} available patient-disjointly")
            idx = rng.choice(len(pool), size=n, replace=False)
            chosen += [pool[i] for i in sorted(idx)]
        out[side] = chosen
    check_patient_disjoint(out)
    return out["train"], out["test"]


def _still_needed(quota, pools):
    return [q - len(p) for q, p in zip(quota, pools)]
