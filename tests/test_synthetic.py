"""The synthetic mammograms: deterministic, well-formed, and holding the look-alikes the paper is about
(the phantom's generative model itself: tests/test_phantom.py)."""
import csv
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic

SPEC = dict(num_positive_patients=3, num_negative_patients=3, height=192, width=160,
            min_radius=9.0, max_radius=13.0)


def _digest(root):
    h = hashlib.sha256()
    for name in sorted(os.listdir(os.path.join(root, "images"))):
        with open(os.path.join(root, "images", name), "rb") as f:
            h.update(f.read())
    with open(os.path.join(root, "annotations.json"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    generate(root, SyntheticSpec(seed=5, write_dicom=True, **SPEC), progress=False)
    return root


def test_deterministic_by_seed(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(str(tmp_path / name), SyntheticSpec(seed=seed, **SPEC), progress=False)
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    assert _digest(str(tmp_path / "a")) != _digest(str(tmp_path / "c"))


def test_records_are_well_formed(synth):
    records = load_synthetic(synth)
    with open(os.path.join(synth, "patients.csv")) as f:
        patients = {r["patient_id"]: r for r in csv.DictReader(f)}
    assert len(patients) == 6
    assert sum(int(p["label"]) for p in patients.values()) == 3
    ids = [r["image_id"] for r in records]
    assert len(set(ids)) == len(ids)
    per_patient = {}
    for r in records:
        per_patient.setdefault(r["patient_id"], []).append(r)
        img = cv2.imread(r["file_name"], cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (r["height"], r["width"])
        assert r["laterality"] in ("L", "R") and r["view"] in ("CC", "MLO")
        for a in r["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
            assert a["category_id"] == 0
    for pid, recs in per_patient.items():
        assert 2 <= len(recs) <= 4
        assert len({(r["laterality"], r["view"]) for r in recs}) == len(recs)
        has_mass = any(r["annotations"] for r in recs)
        assert has_mass == (patients[pid]["label"] == "1")
        assert int(patients[pid]["num_images"]) == len(recs)
    for r in records:
        if r["annotations"]:
            assert 1 <= len(r["annotations"]) <= 2


def test_negatives_are_unannotated_and_hold_lookalikes(synth):
    with open(os.path.join(synth, "annotations.json")) as f:
        coco = json.load(f)
    annotated = {a["image_id"] for a in coco["annotations"]}
    negatives = [im for im in coco["images"] if im["id"] not in annotated]
    assert negatives
    brighter = []
    for im in coco["images"]:
        assert len(im["lookalike_kinds"]) == len(im["lookalike_boxes"])
        assert len(im["lookalike_boxes"]) <= 1
        img = cv2.imread(os.path.join(synth, im["file_name"]), cv2.IMREAD_UNCHANGED).astype(np.float32)
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        for x1, y1, x2, y2 in im["lookalike_boxes"]:
            cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, np.sqrt((x2 - x1) * (y2 - y1)) / 2
            d = np.hypot(xx - cx, yy - cy)
            assert img[int(cy), int(cx)] > 0.1 * 65535  # inside the breast
            ring = img[(d > 1.6 * r) & (d < 2.6 * r) & (img > 0.05 * 65535)]
            brighter.append(img[d < 0.5 * r].mean() > np.median(ring))
    # every breast holds a look-alike with probability 0.5 (SyntheticSpec.lookalike_prob), healthy or not
    with_lookalike = [bool(im["lookalike_boxes"]) for im in coco["images"]]
    assert 0.3 < np.mean(with_lookalike) < 0.7, np.mean(with_lookalike)
    assert any(bool(im["lookalike_boxes"]) for im in negatives)
    # a look-alike is denser than the tissue around it, though masking and texture hide some
    assert np.mean(brighter) >= 0.75, np.mean(brighter)
    for r in load_synthetic(synth):
        if r["image_id"] not in annotated:
            assert r["annotations"] == []


def test_dicom_copy_carries_the_tags(synth):
    import pydicom

    rec = load_synthetic(synth)[0]
    dcm = rec["file_name"][:-4] + ".dcm"
    ds = pydicom.dcmread(dcm)
    assert ds.Modality == "MG"
    assert ds.PatientID == rec["patient_id"]
    assert ds.ImageLaterality == rec["laterality"]
    assert ds.ViewPosition == rec["view"]
    png = cv2.imread(rec["file_name"], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(ds.pixel_array, png)


def test_missing_set_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_synthetic.py"):
        load_synthetic(str(tmp_path / "nothing"))
