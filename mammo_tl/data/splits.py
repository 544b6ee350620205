"""Patient-disjoint splits of dataset records: the paper's DDSM protocol, VinDr-Mammo's official split,
stratified k folds and a stratified random split.

A patient is positive when any of its images has a box. Every split is drawn from the patients (never
from images), deterministically from ``seed``, and is refused with :class:`DatasetError` when it cannot
give each side what it needs.

Patients are grouped by :func:`~mammo_tl.data.datasets.common.patient_key`: ids that differ only in case or white
space ("P001", "p001", "P001 ") are one patient and always land on one side (:func:`patient_id_variants` lists
them; tools/split_dataset.py reports them). The records keep their ids as written.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from .datasets.common import DatasetError, check_patient_disjoint, patient_id_variants, patient_key, save_records

__all__ = ["patient_id_variants", "patient_key", "kfold_split", "random_split", "official_split", "paper_ddsm_split"]

OFFICIAL_SPLITS = {"training": "train", "test": "test"}


def patient_labels(records: Iterable[dict]) -> dict[str, int]:
    """patient key (:func:`patient_key`) -> 1 when any of its images has a box, else 0."""
    labels = {}
    for r in records:
        key = patient_key(r["patient_id"])
        labels[key] = max(labels.get(key, 0), int(bool(r["annotations"])))
    return labels


def summarize(records: Sequence[dict]) -> dict[str, int]:
    """What a split holds: images, positive/negative images, patients, positive/negative patients."""
    labels = patient_labels(records)
    pos = sum(1 for r in records if r["annotations"])
    pos_patients = sum(labels.values())
    return {"images": len(records), "positive_images": pos, "negative_images": len(records) - pos,
            "patients": len(labels), "positive_patients": pos_patients,
            "negative_patients": len(labels) - pos_patients}


def describe(name: str, records: Sequence[dict]) -> str:
    s = summarize(records)
    return (f"{name}: {s['images']} images ({s['positive_images']} positive, {s['negative_images']} negative), "
            f"{s['patients']} patients ({s['positive_patients']} positive, {s['negative_patients']} negative)")


def _by_patient(records):
    out = {}
    for r in records:
        out.setdefault(patient_key(r["patient_id"]), []).append(r)
    return out


def _as_written(records):
    """patient key -> its first id as written (sorted): orders patients as their ids did before keys were
    normalised, so a seed draws the same split it always drew from ids spelled one way."""
    out = {}
    for r in records:
        key, pid = patient_key(r["patient_id"]), str(r["patient_id"])
        out[key] = min(out.get(key, pid), pid)
    return out


def _shuffled_patients(records, seed):
    """{1: positive patients, 0: negative patients}, each sorted then permuted by ``seed``."""
    rng = np.random.default_rng(seed)
    labels = patient_labels(records)
    written = _as_written(records)
    out = {}
    for label in (1, 0):
        patients = sorted((p for p, v in labels.items() if v == label), key=lambda p: written[p])
        out[label] = [patients[i] for i in rng.permutation(len(patients))]
    return out


def _select(records, patients):
    patients = set(patients)
    return [r for r in records if patient_key(r["patient_id"]) in patients]


def official_split(records: Iterable[dict], source: str = "records") -> tuple[list[dict], list[dict]]:
    """(train, test) from each record's ``split`` (VinDr-Mammo: "training" or "test"), refusing records
    without one and splits that share a patient."""
    sides = {"train": [], "test": []}
    for k, r in enumerate(records):
        value = r.get("split")
        if value not in OFFICIAL_SPLITS:
            what = r.get("image_id", r.get("file_name", f"record {k}"))
            if value is None:
                raise DatasetError(f"{source}: record {k} ({what}) has no 'split' key: the official split needs "
                                   f"records that carry it (VinDr-Mammo's converter writes 'training' or 'test')")
            raise DatasetError(f"{source}: record {k} ({what}) has split {value!r}, expected one of "
                               f"{sorted(OFFICIAL_SPLITS)}")
        sides[OFFICIAL_SPLITS[value]].append(r)
    for side, recs in sides.items():
        if not recs:
            raise DatasetError(f"{source}: no record with split {'training' if side == 'train' else 'test'!r}")
    check_patient_disjoint(sides)
    return sides["train"], sides["test"]


def kfold_split(records: Sequence[dict], folds: int, seed: int = 0) -> list[tuple[list[dict], list[dict]]]:
    """[(train, test)] for k = 0..folds-1: every patient in exactly one test fold, folds stratified by
    patient label (positive patients dealt to the folds in turn, then negative patients continuing the
    turn, so fold sizes differ by at most one patient)."""
    if folds < 2:
        raise DatasetError(f"kfold: --folds must be at least 2, got {folds}")
    shuffled = _shuffled_patients(records, seed)
    for label, name in ((1, "positive"), (0, "negative")):
        n = len(shuffled[label])
        if (label == 1 and n == 0) or 0 < n < folds:
            raise DatasetError(f"kfold: {folds} folds need at least {folds} {name} patients (one in each fold's "
                               f"test set); the records hold {n}")
    fold_of = {}
    turn = 0
    for label in (1, 0):
        for p in shuffled[label]:
            fold_of[p] = turn % folds
            turn += 1
    out = []
    for k in range(folds):
        test = [r for r in records if fold_of[patient_key(r["patient_id"])] == k]
        train = [r for r in records if fold_of[patient_key(r["patient_id"])] != k]
        check_patient_disjoint({"train": train, "test": test})
        out.append((train, test))
    return out


def random_split(records: Sequence[dict], test_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test): round(test_fraction x n) of the n positive patients, and likewise of the negative
    patients, go to the test side (halves round up)."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"random: --test-fraction must be between 0 and 1, got {test_fraction}")
    shuffled = _shuffled_patients(records, seed)
    if not shuffled[1]:
        raise DatasetError("random: the records hold no positive patient (no image with a box)")
    test_patients = []
    for label, name in ((1, "positive"), (0, "negative")):
        n = len(shuffled[label])
        k = math.floor(test_fraction * n + 0.5)
        if n and not 0 < k < n:
            raise DatasetError(f"random: a test fraction of {test_fraction} of {n} {name} patient(s) puts {k} in "
                               f"the test set, leaving {'it' if k == 0 else 'the training set'} without {name} "
                               f"patients; change --test-fraction or add {name} patients")
        test_patients += shuffled[label][:k]
    test = _select(records, test_patients)
    test_set = set(test_patients)
    train = [r for r in records if patient_key(r["patient_id"]) not in test_set]
    check_patient_disjoint({"train": train, "test": test})
    return train, test


def paper_ddsm_split(records: Sequence[dict], seed: int = 0, train: tuple[int, int] = (304, 296),
                     test: tuple[int, int] = (45, 55)) -> tuple[list[dict], list[dict]]:
    """Draw (train records, test records): ``train`` = (#malignant, #benign) images (paper: 304, 296) and
    ``test`` likewise (paper: 45, 55), by seed, with no patient on both sides.

    ``records``: CBIS-DDSM mass images (positive = has boxes, negative = benign with boxes removed).
    Patients are visited in a seeded random order; each patient's images go to the test side while it
    still needs images of their kinds, else to the training side; the quotas are then filled by seeded
    draws within each side.
    """
    rng = np.random.default_rng(seed)
    by_patient = _by_patient(records)
    written = _as_written(records)
    patients = sorted(by_patient, key=lambda p: written[p])
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


def split_paths(out_dir: str, folds: int | None = None) -> list[str]:
    """The records files a split into ``out_dir`` writes: train.json and test.json, or with ``folds`` those of
    fold<k>/ for every k < folds."""
    dirs = [out_dir] if folds is None else [os.path.join(out_dir, f"fold{k}") for k in range(folds)]
    return [os.path.join(d, f"{name}.json") for d in dirs for name in ("train", "test")]


def check_split_output(out_dir: str, folds: int | None = None, overwrite: bool = False) -> None:
    """Refuse (DatasetError) a split into ``out_dir`` where one is already written, unless ``overwrite``: runs
    trained on the old split (one to be resumed included) would silently see the new one, whose test patients
    may be the old one's training patients."""
    existing = [p for p in split_paths(out_dir, folds) if os.path.lexists(p)]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f", ... ({len(existing) - 4} more)" if len(existing) > 4 else "")
        raise DatasetError(f"{out_dir} already holds a split ({shown}): replacing it would change the data of every "
                           f"run trained on it (one resumed later would test on patients it trained on). Choose "
                           f"another --output, or pass --overwrite to replace it")


def write_split(out_dir: str, train: Iterable[dict], test: Iterable[dict]) -> list[str]:
    """Write out_dir/train.json and out_dir/test.json; returns their paths."""
    paths = []
    for name, recs in (("train", train), ("test", test)):
        path = os.path.join(out_dir, f"{name}.json")
        save_records(recs, path)
        paths.append(path)
    return paths
