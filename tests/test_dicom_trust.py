"""What the DICOM outputs refuse to say: a report over two patients, references to invalid or shared UIDs, a
header of a file that changed since its pixels were predicted, boxes off the image; and the report written in
time linear in boxes, equal byte for byte to highdicom's own groups."""
import hashlib
import logging
import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, generate_uid

from mammo_tl.data.dicom_header import read_header_and_hash, uid_problem
from mammo_tl.outputs import dicom_sr
from mammo_tl.outputs.dicom import Algorithm, write_dicom_outputs
from tests.common import breast_phantom
from tests.dicom_fixtures import make_dicom
from tests.test_dicom_outputs import dcmtk

ALGORITHM = Algorithm("x/cfg.yaml", "0" * 64, 0.0)
ROWS, COLS = 200, 160  # breast_phantom's size


def _source(path, edit=None, **kw):
    """A DICOM made by make_dicom (Doe^Jane, born 19600101), then ``edit(ds)`` applied and saved again."""
    make_dicom(path, breast_phantom(), **kw)
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
    return path


def _record(path, boxes=((10.0, 20.0, 50.0, 60.0),), scores=None, sha256=True):
    r = {"file_name": str(path), "laterality": "L", "boxes": [list(b) for b in boxes],
         "scores": list(scores) if scores is not None else [0.5] * len(boxes)}
    if sha256:
        r["file_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return r


def _write(tmp_path, records):
    out = tmp_path / "dicom"
    out.mkdir(exist_ok=True)
    per_image, summary = write_dicom_outputs(str(out), [(r, f"n{i}") for i, r in enumerate(records)], ALGORITHM)
    return out, per_image, summary


def _files(out):
    return sorted(os.listdir(out))


# --- one report, one patient ---------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword, value", [("PatientName", "Roe^Richard"), ("PatientBirthDate", "19700202"),
                                            ("PatientSex", "M"), ("IssuerOfPatientID", "OTHER_HOSPITAL")])
@pytest.mark.parametrize("patient_id", ["", "P_00001"])
def test_a_study_of_two_patients_gets_no_report_but_its_presentation_states(tmp_path, caplog, keyword, value,
                                                                            patient_id):
    """Same StudyInstanceUID, PatientID equal (or empty in both): one other patient attribute differs."""
    study = generate_uid()
    a = _source(tmp_path / "a.dcm", study_uid=study, patient_id=patient_id)
    b = _source(tmp_path / "b.dcm", lambda ds: setattr(ds, keyword, value), study_uid=study, patient_id=patient_id,
                laterality="R")
    with caplog.at_level(logging.WARNING, logger="mammo_tl"):
        out, per_image, summary = _write(tmp_path, [_record(a), _record(b)])
    assert summary["reports"] == 0 and summary["studies_without_report"] == 1
    assert summary["studies_with_several_patients"] == 1 and summary["presentation_states"] == 2
    assert _files(out) == ["PR_n0.dcm", "PR_n1.dcm"]
    for path in (a, b):
        assert per_image[str(path)]["presentation_state"] in _files(out) and "report" not in per_image[str(path)]
        assert f"({keyword} differ)" in per_image[str(path)]["report_skipped"]
    # the warning names the files, never a patient's name or birth date
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert str(a) in warning and str(b) in warning and keyword in warning
    assert "Doe" not in warning and "Roe" not in warning and "1960" not in warning and "1970" not in warning


def test_a_study_of_one_patient_gets_one_report(tmp_path):
    """The control: equal patient modules (trailing spaces aside) give one report over both images."""
    study = generate_uid()
    a = _source(tmp_path / "a.dcm", study_uid=study, patient_id="")
    b = _source(tmp_path / "b.dcm", lambda ds: setattr(ds, "PatientName", "Doe^Jane "), study_uid=study,
                patient_id="", laterality="R")
    out, per_image, summary = _write(tmp_path, [_record(a), _record(b)])
    assert summary["reports"] == 1 and summary["images_in_reports"] == 2 and summary["studies_without_report"] == 0
    assert per_image[str(a)]["report"] == per_image[str(b)]["report"]
    assert _files(out) == ["PR_n0.dcm", "PR_n1.dcm", per_image[str(a)]["report"]]


# --- UIDs ----------------------------------------------------------------------------------------------------

UIDS = ["1.2.3", "0.1", "1.2.840.10008.5.1.4.1.1.1.2", "2.25." + "9" * 39, "1.2.03", "01.2", "1.2.", ".1", "1..2",
        "1.2.a", "1.2-3", "1.2 3", "1." + "1" * 63, "1." + "1" * 62]


@pytest.mark.parametrize("value", UIDS)
def test_uid_rules_agree_with_pydicom(value):
    assert (uid_problem(value) is None) == UID(value).is_valid


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
@pytest.mark.parametrize("value", ["1.2.03", "1.2.a", "1." + "1" * 70])
def test_an_invalid_source_uid_leaves_the_image_without_dicom_output(tmp_path, keyword, value):
    assert not UID(value).is_valid
    good = _source(tmp_path / "good.dcm")
    with pytest.warns(UserWarning, match="VR UI"):  # pydicom warns about the value it is asked to write
        bad = _source(tmp_path / "bad.dcm", lambda ds: setattr(ds, keyword, value))
    out, per_image, summary = _write(tmp_path, [_record(good), _record(bad)])
    assert per_image[str(bad)]["skipped"] == "invalid_uids"
    assert per_image[str(bad)]["reason"].startswith(f"its header's {keyword} is not a valid DICOM UID (")
    assert value not in per_image[str(bad)]["reason"]
    assert summary["without_dicom_output_by_reason"] == {"invalid_uids": 1}
    assert summary["presentation_states"] == 1 and _files(out) == ["PR_n0.dcm", per_image[str(good)]["report"]]


# --- duplicates ----------------------------------------------------------------------------------------------

def test_inputs_sharing_a_sop_instance_uid_get_no_output_and_the_report_repeats_no_uid(tmp_path, caplog):
    study, series = generate_uid(), generate_uid()
    a = _source(tmp_path / "a.dcm", study_uid=study, series_uid=series)
    copy = tmp_path / "copy_of_a.dcm"
    shutil.copy(a, copy)  # byte-identical
    sop = pydicom.dcmread(a).SOPInstanceUID
    other = _source(tmp_path / "other.dcm", lambda ds: setattr(ds, "SOPInstanceUID", sop), study_uid=study,
                    series_uid=series, laterality="R")  # another image under a's UID
    c = _source(tmp_path / "c.dcm", study_uid=study, series_uid=series, laterality="R")
    boxes = [(1.0, 2.0, 30.0, 40.0), (50.0, 60.0, 70.0, 80.0)]
    with caplog.at_level(logging.WARNING, logger="mammo_tl"):
        out, per_image, summary = _write(tmp_path, [_record(p, boxes) for p in (a, copy, other, c)])
    for path in (a, copy, other):
        assert per_image[str(path)]["skipped"] == "duplicate_sop_instance_uid"
        others = {str(p) for p in (a, copy, other)} - {str(path)}
        assert all(o in per_image[str(path)]["reason"] for o in others)
    assert summary["without_dicom_output_by_reason"] == {"duplicate_sop_instance_uid": 3}
    assert "3 image(s) share a SOPInstanceUID" in caplog.text
    assert _files(out) == sorted(["PR_n3.dcm", per_image[str(c)]["report"]])
    sr = hd.sr.srread(out / per_image[str(c)]["report"])
    assert [e[2] for e in sr.get_evidence()] == [pydicom.dcmread(c).SOPInstanceUID]
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2 and len({str(g.tracking_uid) for g in groups}) == 2


# --- the header is the predicted file's ----------------------------------------------------------------------

def test_read_header_and_hash_reads_the_file_once(tmp_path, monkeypatch):
    path = _source(tmp_path / "a.dcm")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    header, sha, size = read_header_and_hash(path)
    assert opened == [str(path)]
    data = path.read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert header.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID and "PixelData" not in header


def test_a_file_changed_since_predicted_gets_no_dicom_output(tmp_path):
    study = generate_uid()
    a = _source(tmp_path / "a.dcm", study_uid=study)
    b = _source(tmp_path / "b.dcm", study_uid=study, laterality="R")
    records = [_record(a), _record(b)]
    # b replaced after its prediction, by another patient's image of the same study
    _source(b, lambda ds: setattr(ds, "PatientName", "Roe^Richard"), study_uid=study, laterality="R")
    out, per_image, summary = _write(tmp_path, records)
    assert per_image[str(b)]["skipped"] == "changed_since_predicted"
    assert per_image[str(b)]["reason"].startswith("changed since predicted")
    assert summary["without_dicom_output_by_reason"] == {"changed_since_predicted": 1}
    assert summary["unverified_images"] == 0
    sr = hd.sr.srread(out / per_image[str(a)]["report"])
    assert [e[2] for e in sr.get_evidence()] == [pydicom.dcmread(a).SOPInstanceUID]
    assert str(sr.PatientName) == "Doe^Jane"


def test_records_without_a_hash_are_used_and_counted(tmp_path, caplog):
    a = _source(tmp_path / "a.dcm")
    with caplog.at_level(logging.WARNING, logger="mammo_tl"):
        _, _, summary = _write(tmp_path, [_record(a, sha256=False)])
    assert summary["unverified_images"] == 1 and summary["presentation_states"] == 1 and summary["reports"] == 1
    assert "1 image(s) have no file_sha256" in caplog.text


@pytest.mark.parametrize("box, inside", [((0.0, 0.0, COLS, ROWS), True), ((0.0, 0.0, COLS + 0.01, ROWS), False),
                                         ((0.0, 0.0, COLS + 0.5, ROWS), False), ((0.0, 0.0, 10.0, ROWS + 1), False),
                                         ((-1.0, 0.0, 10.0, 10.0), False), ((20.0, 0.0, 10.0, 10.0), False),
                                         ((float("nan"), 0.0, 10.0, 10.0), False)])
def test_boxes_outside_the_image_are_never_written(tmp_path, box, inside):
    a = _source(tmp_path / "a.dcm")
    assert (pydicom.dcmread(a).Rows, pydicom.dcmread(a).Columns) == (ROWS, COLS)
    out, per_image, summary = _write(tmp_path, [_record(a, [(5.0, 5.0, 9.0, 9.0), box])])
    if inside:
        assert summary["presentation_states"] == 1 and summary["images_without_dicom_output"] == 0
    else:
        assert per_image[str(a)] == {"skipped": "boxes_outside_image",
                                     "reason": f"1 of its 2 box(es) lie outside its {ROWS} x {COLS} pixels (Rows x "
                                               "Columns): they do not describe this image"}
        assert _files(out) == []


# --- the report's speed and its bytes ------------------------------------------------------------------------

def _boxes(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, COLS - 20, n), rng.uniform(0, ROWS - 20, n)
    return (np.round(np.stack([x, y, x + rng.uniform(1, 20, n), y + rng.uniform(1, 20, n)], 1), 2).tolist(),
            np.round(rng.uniform(0, 1, n), 5).tolist())


def _study(tmp_path, counts):
    study = generate_uid()
    records = []
    for i, n in enumerate(counts):
        path = _source(tmp_path / f"i{i}.dcm", study_uid=study, laterality="LR"[i % 2])
        boxes, scores = _boxes(n, i)
        records.append({**_record(path, boxes, scores), "laterality": "LR"[i % 2] if i < 3 else ""})
    return [(pydicom.dcmread(r["file_name"], stop_before_pixels=True), r) for r in records]


def _report_bytes(tmp_path, images, name):
    ds = dicom_sr.measurement_report(images, ALGORITHM, "1.2.3", 1)
    for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
        if keyword in ds:  # when it was made: the only thing two reports of the same content differ in
            setattr(ds, keyword, "20260101" if keyword.endswith("Date") else "120000")
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "20260101120000"
    ds.save_as(tmp_path / name, enforce_file_format=True)
    return (tmp_path / name).read_bytes()


def test_the_report_equals_highdicoms_own_groups_byte_for_byte(tmp_path, monkeypatch):
    """Images with 7, 0, 1, 2 and 5 boxes (left, right, unknown side): the groups encoded from the first box's
    are those highdicom builds for every box, and DCMTK and highdicom read the report back."""
    images = _study(tmp_path, [7, 0, 1, 2, 5])
    fast = _report_bytes(tmp_path, images, "fast.dcm")
    monkeypatch.setattr(dicom_sr._Layout, "of", classmethod(lambda cls, image, encodings: None))
    assert _report_bytes(tmp_path, images, "highdicom.dcm") == fast
    sr = hd.sr.srread(tmp_path / "fast.dcm")
    found = sorted((str(g.roi.ContentSequence[0].referenced_sop_instance_uid), g.get_measurements()[0].value,
                    tuple(float(v) for v in g.roi.value.flatten()[:4]))
                   for g in sr.content.get_planar_roi_measurement_groups())
    expected = sorted((str(h.SOPInstanceUID), s, tuple(float(np.float32(v)) for v in (b[0], b[1], b[2], b[1])))
                      for h, r in images for b, s in zip(r["boxes"], r["scores"]))
    assert found == expected and len(found) == 15
    assert len(sr.content.get_image_measurement_groups()) == 0  # the image without a box has no group
    r = subprocess.run([dcmtk("dsrdump"), str(tmp_path / "fast.dcm")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("Measurement Group") == 15
    r = subprocess.run([dcmtk("dcmdump"), "+E", str(tmp_path / "fast.dcm")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("boxes", [10, 60])
def test_highdicom_builds_three_groups_per_image_whatever_its_boxes(tmp_path, monkeypatch, boxes):
    """The cost that grew with boxes (a highdicom group, its re-parsing and its encoding per box) is bounded:
    highdicom builds the first, second and last box's groups; the others are encoded from the first."""
    built = []
    real = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    monkeypatch.setattr(hd.sr, "PlanarROIMeasurementsAndQualitativeEvaluations",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    images = _study(tmp_path, [boxes, boxes])
    ds = dicom_sr.measurement_report(images, ALGORITHM, "1.2.3", 1)
    assert len(built) == 2 * 4  # the report's first group, then the layout's first, second and last
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert len(hd.sr.srread(tmp_path / "sr.dcm").content.get_planar_roi_measurement_groups()) == 2 * boxes


def test_the_benchmark_runs_at_the_smallest_size(tmp_path, monkeypatch, capsys):
    """docs/guarantees.md's `python bench/dicom_outputs.py`, with its options, at 2 and 3 boxes."""
    import json
    import runpy

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(repo, "bench", "dicom_outputs.py")
    monkeypatch.setattr("sys.argv", ["bench/dicom_outputs.py", "--boxes", "2", "3", "--profile", "2", "--json",
                                     str(tmp_path / "b.json")])
    monkeypatch.syspath_prepend(os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
    results = json.load(open(tmp_path / "b.json"))["results"]
    assert [r["boxes"] for r in results] == [2, 3] and all(r["cpu_seconds"] > 0 for r in results)
    assert "| boxes | seconds | CPU seconds |" in capsys.readouterr().out
