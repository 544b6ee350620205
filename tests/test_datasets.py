"""Converters on small trees in the real formats: records, boxes, and the error for each bad input."""
import json
import os

import numpy as np
import pytest
from detectron2.structures import BoxMode

from mammo_tl.data.datasets import (DatasetError, SkipReport, check_patient_disjoint, export_coco, load_cbis_ddsm,
                                    load_csv_dataset, load_inbreast, load_vindr_mammo)
from mammo_tl.data.datasets.cbis_ddsm import read_cbis_csv
from mammo_tl.data.prepare import prepare_dataset
from mammo_tl.data.splits import paper_ddsm_split
from tests.dataset_fixtures import H, W, make_cbis, make_inbreast, make_vindr


@pytest.fixture(scope="module")
def cbis(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cbis"))
    mass_csv, calc_csv, expected = make_cbis(root)
    return root, mass_csv, calc_csv, expected


def test_cbis_csv_quirks(cbis):
    _, mass_csv, calc_csv, _ = cbis
    raw = open(mass_csv, "rb").read()
    assert b"\r\n" in raw and b'.dcm\n"' in raw  # CRLF records, a quoted path ending in a newline
    kind, rows = read_cbis_csv(mass_csv)
    assert kind == "mass" and len(rows) == 5
    assert all(not r["ROI mask file path"].endswith("\n") for r in rows)
    assert rows[3]["breast density"] is None and rows[3]["mass margins"] is None  # NA
    kind, rows = read_cbis_csv(calc_csv)
    assert kind == "calc" and rows[0]["breast density"] == "0"


def test_cbis_records_and_boxes(cbis):
    root, mass_csv, calc_csv, expected = cbis
    report = SkipReport("cbis")
    records = load_cbis_ddsm(root, [mass_csv, calc_csv], report=report, progress=False)
    by_id = {r["image_id"]: r for r in records}
    assert set(by_id) == set(expected)
    for image_id, (patient, lat, view, boxes) in expected.items():
        r = by_id[image_id]
        assert (r["patient_id"], r["laterality"], r["view"]) == (patient, lat, view)
        assert (r["height"], r["width"]) == (H, W)
        assert [a["bbox"] for a in r["annotations"]] == boxes
        assert all(a["bbox_mode"] == BoxMode.XYXY_ABS and a["category_id"] == 0 for a in r["annotations"])
        assert r["file_name"].endswith((".dcm",)) and os.path.exists(r["file_name"])
    assert "manifest-123" in by_id["Mass-Training_P_00003_LEFT_MLO"]["file_name"]  # NBIA layout found
    # the all-zero mask is skipped with its reason, the rescaled mask reported
    assert [(w.split(" ")[0], r.split(":")[0]) for w, r in report.skipped] == [
        ("Mass-Training_P_00004_RIGHT_CC", "malignant abnormality 1")]
    assert "all-zero ROI mask" in report.skipped[0][1]
    assert report.notes["ROI mask size differs from its image: box rescaled"] == 1


def test_cbis_strict_errors(cbis, tmp_path):
    root, mass_csv, _, _ = cbis
    with pytest.raises(DatasetError, match="P_00004.*all-zero ROI mask"):
        load_cbis_ddsm(root, [mass_csv], strict=True, progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,breast_density,left or right breast,image view\r\nP_1,1,LEFT,CC\r\n")
    with pytest.raises(DatasetError, match="bad.csv: unknown column set.*missing"):
        load_cbis_ddsm(root, [str(bad)], progress=False)
    missing = tmp_path / "missing.csv"
    text = open(mass_csv).read().replace("Mass-Training_P_00001_LEFT_CC/", "Mass-Training_P_09999_LEFT_CC/", 1)
    missing.write_text(text)
    with pytest.raises(DatasetError, match="P_09999.*full mammogram not found"):
        load_cbis_ddsm(root, [str(missing)], strict=True, progress=False)


def test_vindr(tmp_path):
    make_vindr(str(tmp_path))
    report = SkipReport("vindr")
    records = load_vindr_mammo(str(tmp_path), split="training", report=report)
    by_id = {r["image_id"][0]: r for r in records}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert by_id["a"]["annotations"][0]["bbox"] == [10.5, 20.25, 30.0, 40.75]
    assert by_id["b"]["annotations"][0]["bbox"] == [0.0, 5.0, 18.0, 25.0]  # clipped at x = 0
    assert by_id["c"]["annotations"] == [] and by_id["d"]["annotations"] == []
    assert by_id["a"]["patient_id"] == "s" * 32 and by_id["a"]["laterality"] == "R"
    assert report.by_reason() == {"suspicious finding that is not a target (neither positive nor negative)": 1}
    assert report.notes["box clipped to the image"] == 1
    test = load_vindr_mammo(str(tmp_path), split="test")
    assert [r["image_id"][0] for r in test] == ["f"]
    os.remove(os.path.join(tmp_path, "images", "s" * 32, "a" * 32 + ".dicom"))
    with pytest.raises(DatasetError, match="a{32}.dicom.*DICOM file not found"):
        load_vindr_mammo(str(tmp_path), split="training", strict=True)


def test_inbreast(tmp_path):
    make_inbreast(str(tmp_path))
    report = SkipReport("inbreast")
    records = load_inbreast(str(tmp_path), report=report)
    by_id = {r["image_id"]: r for r in records}
    assert set(by_id) == {"20586908", "20586909"}
    assert by_id["20586908"]["annotations"][0]["bbox"] == [20.5, 30.25, 36.0, 46.0]
    assert len(by_id["20586908"]["annotations"]) == 1  # the calcification dot is not a target
    assert by_id["20586909"]["annotations"] == []  # BI-RADS 2: negative, annotation removed
    assert by_id["20586908"]["patient_id"] == "6c613a14b80a8591"
    assert sorted(report.by_reason()) == ["BI-RADS 5 without a Mass outline", "view 'FB' is not CC or MLO"]


def test_csv_import_and_errors(tmp_path):
    from tests.dicom_fixtures import make_dicom

    make_dicom(tmp_path / "a.dcm", np.ones((H, W), np.uint16))
    make_dicom(tmp_path / "b.dcm", np.ones((H, W), np.uint16))
    good = tmp_path / "data.csv"
    good.write_text("patient_id,path,laterality,view,label,boxes\n"
                    "p1,a.dcm,L,CC,1,1 2 10 12; 20 20 30 30\n"
                    "p2,b.dcm,RIGHT,mlo,0,\n")
    records = load_csv_dataset(str(good))
    assert [r["patient_id"] for r in records] == ["p1", "p2"]
    assert [a["bbox"] for a in records[0]["annotations"]] == [[1, 2, 10, 12], [20, 20, 30, 30]]
    assert (records[1]["laterality"], records[1]["view"], records[1]["annotations"]) == ("R", "MLO", [])

    def bad(text, match, strict=True):
        p = tmp_path / "bad.csv"
        p.write_text("patient_id,path,laterality,view,label,boxes\n" + text)
        with pytest.raises(DatasetError, match=match):
            load_csv_dataset(str(p), strict=strict)

    bad("p1,missing.dcm,L,CC,0,\n", "bad.csv row 1.*file not found")
    # a box with nothing inside the image (one that only extends past the edge is clipped)
    bad("p1,a.dcm,L,CC,1,70 2 100 12\n", "row 1.*outside the 60x80 image")
    bad("p1,a.dcm,L,CC,1,1 2 10\n", "row 1: box '1 2 10' has 3 numbers")
    bad("p1,a.dcm,L,CC,0,\np1,a.dcm,L,MLO,0,\n", "duplicate image")
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 50)
    bad("p1,garbage.dcm,L,CC,0,\n", "garbage.dcm.*unreadable")
    cols = tmp_path / "cols.csv"
    cols.write_text("patient,file\np1,a.dcm\n")
    with pytest.raises(DatasetError, match="cols.csv: unknown column set, missing column"):
        load_csv_dataset(str(cols))


def test_patient_split_check_names_patients():
    a = [{"patient_id": "p1"}, {"patient_id": "p2"}]
    b = [{"patient_id": "p2"}, {"patient_id": "p3"}]
    with pytest.raises(DatasetError, match=r"1 patient\(s\).*p2 \(test/train\)"):
        check_patient_disjoint({"train": a, "test": b})
    check_patient_disjoint({"train": a, "test": [{"patient_id": "p3"}]})


def test_paper_ddsm_split_counts_and_disjoint():
    rng = np.random.default_rng(0)
    records = []
    for p in range(500):
        for v in range(int(rng.integers(1, 4))):
            malignant = rng.random() < 0.5
            records.append({"patient_id": f"P_{p:05d}", "image_id": f"{p}_{v}",
                            "annotations": [{"bbox": [0, 0, 1, 1]}] if malignant else []})
    train, test = paper_ddsm_split(records, seed=3)
    assert (len(train), len(test)) == (600, 100)
    assert sum(1 for r in train if r["annotations"]) == 304 and sum(1 for r in test if r["annotations"]) == 45
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in test}
    again = paper_ddsm_split(records, seed=3)
    assert [r["image_id"] for r in again[1]] == [r["image_id"] for r in test]
    with pytest.raises(DatasetError, match="needs 304 malignant"):
        paper_ddsm_split(records[:50], seed=0)


def test_coco_export_round_trip(cbis, tmp_path):
    root, mass_csv, calc_csv, _ = cbis
    records = load_cbis_ddsm(root, [mass_csv, calc_csv], progress=False)
    path = export_coco(records, str(tmp_path / "coco.json"))
    from pycocotools.coco import COCO

    coco = COCO(path)
    assert len(coco.getImgIds()) == len(records)
    for k, r in enumerate(records):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[k + 1]))
        got = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                     for a in anns)
        assert got == sorted(a["bbox"] for a in r["annotations"])


def test_prepare_caches_resized_boxes_and_resumes(cbis, tmp_path):
    root, mass_csv, calc_csv, _ = cbis
    records = load_cbis_ddsm(root, [mass_csv, calc_csv], progress=False)
    records.append(dict(records[0], image_id="broken", file_name=os.path.join(str(tmp_path), "nope.dcm")))
    out = str(tmp_path / "prep")
    prepared, report = prepare_dataset(records, out, size=(40, 30), crop=False, flip=False, workers=2, progress=False)
    assert (report["inputs"], report["used"], report["skipped"]) == (5, 4, 1)
    assert report["skipped_items"][0]["image_id"] == "broken" and "not found" in report["skipped_items"][0]["reason"]
    by_id = {r["image_id"]: r for r in prepared}
    # P_00001's box (15, 10, 30, 20) in an 80 x 60 image, resized to 40 x 30: halved
    assert by_id["Mass-Training_P_00001_LEFT_CC"]["annotations"][0]["bbox"] == pytest.approx([7.5, 5, 15, 10])
    p1 = by_id["Mass-Training_P_00001_LEFT_CC"]
    assert (p1["height"], p1["width"]) == (40, 30)
    import cv2

    img = cv2.imread(by_id["Mass-Training_P_00001_LEFT_CC"]["file_name"], cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (40, 30)
    _, report2 = prepare_dataset(records, out, size=(40, 30), crop=False, workers=1, progress=False)
    assert report2["cached"] == 4 and report2["prepared"] == 0
    assert json.load(open(os.path.join(out, "records.json")))[0]["transform"]["size"] == [40, 30]
