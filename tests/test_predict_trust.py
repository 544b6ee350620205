"""tools/predict.py's output folders can be trusted: results keyed by the content of the files predicted,
--overwrite removing only what predict wrote, one writer per folder, a study's report covering every image
predicted for it; and the minor cases of the same review (laterality contradicted by the header, CSV cells
read as formulas, FIFOs as option files, an output folder inside the input folder)."""
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mammo_tl.data import image_io
from mammo_tl.data.inputs import describe
from mammo_tl.inference.command import PredictError, run_predict
from mammo_tl.inference.predictor import MammoPredictor
from mammo_tl.files import FolderLock
from mammo_tl.outputs.tables import csv_cell, patients_csv
from tests.common import REPO, breast_phantom
from tests.dicom_fixtures import make_dicom
from tests.test_weights import tiny_config_file

OPTS = ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "3"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config_file(tmp_path_factory)


def _png(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), breast_phantom(seed=seed))
    return str(path)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _jsonl(out):
    return [json.loads(line) for line in open(out / "predictions.jsonl")]


@pytest.fixture
def model_calls(monkeypatch):
    """The images the model is asked to predict, by their height (each input below has its own)."""
    calls = []
    real = MammoPredictor.predict_batch

    def counted(self, images):
        calls.extend(im.transform.original_size[0] for im in images)
        return real(self, images)

    monkeypatch.setattr(MammoPredictor, "predict_batch", counted)
    return calls


# --- item 3: results keyed by content ---------------------------------------------------------------------------

def test_records_carry_the_content_they_were_predicted_from(tmp_path, config):
    src = tmp_path / "in"
    png = _png(src / "P1_L_CC.png", 1)  # creates the folder
    dcm = make_dicom(src / "P2.dcm", breast_phantom(seed=2), patient_id="P2")
    preds, _ = run_predict(config, [str(src)], str(tmp_path / "out"), OPTS, workers=0)
    for p in preds:
        st = os.stat(p["file_name"])
        assert (p["file_size"], p["file_mtime_ns"], p["file_sha256"]) == (st.st_size, st.st_mtime_ns,
                                                                         _sha(p["file_name"]))
    assert sorted(p["file_name"] for p in preds) == sorted([png, str(dcm)])


def test_resume_predicts_a_replaced_file_again(tmp_path, config, model_calls, capsys):
    """The severe case: a file replaced after a killed run was reported as 'already predicted' with the old
    image's boxes. Now only unchanged files are reused; the replaced one is predicted again and counted."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"P{i}_L_CC.png"), breast_phantom(seed=i, h=200 + 8 * i))
    run_predict(config, [str(src)], str(out), OPTS, workers=0, min_score=0.0)
    assert sorted(model_calls) == [200, 208, 216]
    # P1 becomes another image (another size, so its old boxes would not even fit); P2 is touched only
    cv2.imwrite(str(src / "P1_L_CC.png"), breast_phantom(seed=9, h=240))
    os.utime(src / "P2_L_CC.png", ns=(1, 1_000_000_000))
    model_calls.clear()
    capsys.readouterr()
    preds, _ = run_predict(config, [str(src)], str(out), OPTS, workers=0, min_score=0.0, resume=True)
    assert sorted(model_calls) == [216, 240]  # P1 (changed content), P2 (changed time); P0 reused
    assert "1 of 3 input(s) already predicted" in capsys.readouterr().out
    by_name = {os.path.basename(p["file_name"]): p for p in preds}
    p1 = by_name["P1_L_CC.png"]
    assert (p1["file_sha256"], p1["file_size"]) == (_sha(src / "P1_L_CC.png"), os.path.getsize(src / "P1_L_CC.png"))
    assert all(0 <= b[1] <= b[3] <= 240 for b in p1["boxes"])
    summary = json.load(open(out / "summary.json"))
    assert (summary["from_previous_run"], summary["changed_since_previous_run"]) == (1, 2)
    # predictions.json holds one result per file, the new one for P1
    assert [p["file_name"] for p in preds].count(str(src / "P1_L_CC.png")) == 1


def test_a_record_without_content_key_is_predicted_again(tmp_path, config, model_calls):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png", 0)
    run_predict(config, [str(src)], str(out), OPTS, workers=0)
    lines = _jsonl(out)
    for r in lines:  # as an older version wrote them
        for k in ("file_size", "file_mtime_ns", "file_sha256"):
            del r[k]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    model_calls.clear()
    run_predict(config, [str(src)], str(out), OPTS, workers=0, resume=True)
    assert len(model_calls) == 1
    assert json.load(open(out / "summary.json"))["changed_since_previous_run"] == 1


def test_a_file_changed_after_it_was_predicted_is_counted(tmp_path, config, monkeypatch, caplog):
    src = tmp_path / "in"
    first = _png(src / "P0_L_CC.png", 0)
    _png(src / "P1_L_CC.png", 1)
    real = MammoPredictor.__call__

    def predict_then_touch(self, image):
        os.utime(first, ns=(1, 2_000_000_000))  # P0 was predicted first: it changes afterwards
        return real(self, image)

    monkeypatch.setattr(MammoPredictor, "__call__", predict_then_touch)
    with caplog.at_level(logging.WARNING):
        preds, _ = run_predict(config, [str(src)], str(tmp_path / "out"), OPTS, workers=0)
    assert json.load(open(tmp_path / "out" / "summary.json"))["changed_after_prediction"] == 1
    assert "1 image(s) changed after they were predicted" in caplog.text and first in caplog.text
    assert preds[0]["file_mtime_ns"] != 2_000_000_000


def test_a_dicom_file_written_while_it_is_decoded_is_not_mixed(tmp_path, monkeypatch):
    """The file is read once: pixels, header and hash all describe the bytes read, even when another image lands
    in the file while they are decoded."""
    import pydicom

    path = make_dicom(tmp_path / "x.dcm", breast_phantom(seed=1), patient_id="FIRST")
    expected = _sha(path)
    real_read, real_dcmread = image_io.read_dicom, pydicom.dcmread

    def read_then_change(p, **kw):
        result = real_read(p, **kw)
        make_dicom(p, breast_phantom(seed=5), patient_id="OTHER")  # another image lands meanwhile
        return result

    def dcmread_from_memory_only(source, *a, **k):
        assert not isinstance(source, (str, os.PathLike)), "the DICOM file was opened a second time"
        return real_dcmread(source, *a, **k)

    monkeypatch.setattr(image_io, "read_dicom", read_then_change)
    monkeypatch.setattr(pydicom, "dcmread", dcmread_from_memory_only)
    image, meta = describe(str(path))
    assert meta["file_sha256"] == expected != _sha(path)  # the bytes decoded, not the file as it is now
    assert meta["patient_id"] == "FIRST"
    np.testing.assert_array_equal(image, breast_phantom(seed=1))


def test_a_png_is_decoded_from_the_bytes_it_is_keyed_by(tmp_path, monkeypatch):
    path = _png(tmp_path / "P1_L_CC.png", 1)
    expected = _sha(path)
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("read from the file a second time"))
    image, meta = describe(path)
    assert meta["file_sha256"] == expected and meta["file_size"] == os.path.getsize(path)
    np.testing.assert_array_equal(image, breast_phantom(seed=1))


# --- a study across runs: one --output owns a --dicom-out ---------------------------------------------------------

def _study(src, n, study_uid):
    src.mkdir(parents=True, exist_ok=True)
    return [make_dicom(src / f"img{i}.dcm", breast_phantom(seed=i), patient_id="P_00001", study_uid=study_uid,
                       laterality="LR"[i % 2]) for i in range(n)]


def _sr_images(dicom):
    (sr,) = [n for n in os.listdir(dicom) if n.startswith("SR_")]
    ds = pydicom.dcmread(dicom / sr)
    return {item.ReferencedSOPInstanceUID for series in ds.CurrentRequestedProcedureEvidenceSequence
            for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}


def test_a_study_predicted_in_two_runs_gets_one_report_covering_both(tmp_path, config):
    study = generate_uid()
    src = tmp_path / "in"
    images = _study(src, 3, study)
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
    shutil.copy(images[0], first / "img0.dcm")
    shutil.copy(images[1], first / "img1.dcm")
    shutil.copy(images[2], second / "img2.dcm")
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    run_predict(config, [str(first)], str(out), OPTS, min_score=0.0, dicom_out=str(dicom), workers=0)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in images]
    assert _sr_images(dicom) == set(uids[:2])
    # the severe case: a second run with its own --output replaced the study's report with one of its image only
    for kw in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(PredictError, match=rf"--dicom-out .*dicom belongs to --output {out}.*--resume"):
            run_predict(config, [str(second)], str(tmp_path / "out2"), OPTS, min_score=0.0, dicom_out=str(dicom),
                        **kw)
    assert _sr_images(dicom) == set(uids[:2])
    # the same --output, resumed with a part of its inputs: refused, its report would lose the others
    with pytest.raises(PredictError, match=r"--resume with --dicom-out: 2 image\(s\) predicted in .* are not among "
                                           r"the inputs now"):
        run_predict(config, [str(second)], str(out), OPTS, min_score=0.0, dicom_out=str(dicom), resume=True)
    # with every input: one report, all three images
    run_predict(config, [str(first), str(second)], str(out), OPTS, min_score=0.0, dicom_out=str(dicom),
                resume=True)
    assert _sr_images(dicom) == set(uids)
    manifest = json.load(open(dicom / "manifest.json"))
    assert manifest["output"] == os.path.realpath(out)
    assert {n: _sha(dicom / n) for n in os.listdir(dicom) if n.endswith(".dcm")} == manifest["files"]


# --- item 4: --overwrite removes only what predict wrote ----------------------------------------------------------

def test_overwrite_leaves_what_predict_did_not_write(tmp_path, config, caplog):
    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "a.dcm", breast_phantom(seed=1), patient_id="P1")
    make_dicom(src / "b.dcm", breast_phantom(seed=2), patient_id="P2", laterality="R")
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    run_predict(config, [str(src)], str(out), OPTS, overlay=True, dicom_out=str(dicom), workers=0)
    ours_dicom = sorted(n for n in os.listdir(dicom) if n.endswith(".dcm"))
    assert len(ours_dicom) == 4  # two presentation states, two reports
    radiologist = dicom / "SR_radiologist_report.dcm"
    shutil.copy(dicom / ours_dicom[-1], radiologist)  # named as ours, and a valid SR
    user_png = out / "overlays" / "my_notes.png"
    cv2.imwrite(str(user_png), np.zeros((8, 8), np.uint8))
    overlays = sorted(n for n in os.listdir(out / "overlays") if n != "my_notes.png")
    edited = out / "overlays" / overlays[0]
    cv2.imwrite(str(edited), np.full((8, 8), 255, np.uint8))  # ours, changed since: left, named
    with caplog.at_level(logging.WARNING):
        run_predict(config, [str(src / "a.dcm")], str(out), OPTS, overlay=True, dicom_out=str(dicom),
                    overwrite=True, workers=0)
    assert radiologist.exists() and user_png.exists() and edited.exists()
    warned = caplog.text
    assert "SR_radiologist_report.dcm" in warned and "my_notes.png" in warned and overlays[0] in warned
    # the previous run's other files went; the new run wrote its own
    assert not (out / "overlays" / overlays[1]).exists()
    preds = json.load(open(out / "predictions.json"))
    assert [os.path.basename(p["file_name"]) for p in preds] == ["a.dcm"]
    assert sorted(os.listdir(dicom)) == sorted([preds[0]["dicom"]["presentation_state"],
                                                preds[0]["dicom"]["report"], "manifest.json",
                                                "SR_radiologist_report.dcm"])


def test_overwrite_refuses_to_replace_files_it_did_not_write(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png", 0)
    run_predict(config, [str(src)], str(out), OPTS, workers=0)
    (out / "summary.json").write_text('{"my": "notes"}')  # changed since predict wrote it
    with pytest.raises(PredictError, match=r"--overwrite: .*out holds summary\.json, which this tool did not write "
                                           r"or which changed since"):
        run_predict(config, [str(src)], str(out), OPTS, overwrite=True, workers=0)
    assert (out / "summary.json").read_text() == '{"my": "notes"}' and (out / "predictions.json").exists()


class _Killed(BaseException):
    pass


def test_overwrite_after_a_killed_run_removes_its_log_and_overlays(tmp_path, config, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        _png(src / f"P{i}_L_CC.png", i)
    real, calls = MammoPredictor.__call__, []

    def dies_on_third(self, image):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed()
        return real(self, image)

    monkeypatch.setattr(MammoPredictor, "__call__", dies_on_third)
    with pytest.raises(_Killed):
        run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0)
    monkeypatch.setattr(MammoPredictor, "__call__", real)
    assert len(os.listdir(out / "overlays")) == 2 and json.load(open(out / "manifest.json"))["files"] == {
        "run.json": _sha(out / "run.json"), "predictions.jsonl": None}
    run_predict(config, [str(src / "P0_L_CC.png")], str(out), OPTS, overwrite=True, workers=0)
    assert sorted(os.listdir(out)) == ["manifest.json", "patients.csv", "predictions.json", "predictions.jsonl",
                                       "run.json", "skipped.json", "summary.json"]
    assert len(_jsonl(out)) == 1


# --- item 5: one writer per output --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_predict_into_a_locked_folder_is_refused(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png", 0)
    with FolderLock(str(out), "a test holding the folder"):
        with pytest.raises(PredictError, match=rf"--output .*out is in use by a test holding the folder \(pid "
                                               rf"{os.getpid()} on "):
            run_predict(config, [str(src)], str(out), OPTS, workers=0)
        dicom = tmp_path / "dicom"
        with FolderLock(str(dicom), "another test"), \
                pytest.raises(PredictError, match=r"--dicom-out .*dicom is in use by another test"):
            run_predict(config, [str(src)], str(tmp_path / "out2"), OPTS, dicom_out=str(dicom), workers=0)
        # the command line, as a second process: exit status 1, the holder named
        r = subprocess.run([sys.executable, "tools/predict.py", "--config-file", config, "--input", str(src),
                            "--output", str(out), *OPTS], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 1, r.stderr[-2000:]
        assert f"is in use by a test holding the folder (pid {os.getpid()}" in r.stderr
    assert not (out / "predictions.json").exists()
    run_predict(config, [str(src)], str(out), OPTS, workers=0)  # released: the folder is free again
    assert not (out / ".mammo_tl.lock").exists()


# --- minor cases --------------------------------------------------------------------------------------------------

def _csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def test_patients_laterality_contradicted_by_the_header_is_stated_nowhere(tmp_path, config):
    src = tmp_path / "in"
    src.mkdir()
    study = generate_uid()
    make_dicom(src / "right.dcm", breast_phantom(seed=1), patient_id="P1", laterality="R", study_uid=study)
    make_dicom(src / "agrees.dcm", breast_phantom(seed=2), patient_id="P1", laterality="L", study_uid=study)
    patients = _csv(tmp_path / "patients.csv", [["file", "patient_id", "laterality"], ["in/right.dcm", "Q1", "L"],
                                                ["in/agrees.dcm", "Q1", "L"]])
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    preds, _ = run_predict(config, [str(src)], str(out), OPTS, patients=patients, dicom_out=str(dicom),
                           min_score=0.0, workers=0)
    by_name = {os.path.basename(p["file_name"]): p for p in preds}
    right = by_name["right.dcm"]
    assert (right["laterality"], right["source"]["laterality"]) == ("", "conflict")
    assert right["laterality_conflict"] == {"patients_csv": "L", "dicom:ImageLaterality": "R"}
    assert (by_name["agrees.dcm"]["laterality"], "laterality_conflict" in by_name["agrees.dcm"]) == ("L", False)
    summary = json.load(open(out / "summary.json"))
    assert (summary["laterality_conflicts"], summary["unknown_laterality"]) == (1, 1)
    # the report's finding sites: Left (SNOMED 7771000) for the image that agrees, no side for the other
    sr = pydicom.dcmread(dicom / right["dicom"]["report"])
    uid = {n: str(pydicom.dcmread(src / n, stop_before_pixels=True).SOPInstanceUID) for n in by_name}
    sides = {}
    for group in _measurement_groups(sr):
        refs, codes_in = set(), set()
        _walk(group, refs, codes_in)
        for ref in refs:
            sides.setdefault(ref, set()).update(codes_in & {"7771000", "24028007"})
    assert sides == {uid["agrees.dcm"]: {"7771000"}, uid["right.dcm"]: set()}


def _measurement_groups(ds):
    for item in ds.get("ContentSequence", []):
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "CONTAINER" and name and name[0].CodeValue == "125007":
            yield item
        else:
            yield from _measurement_groups(item)


def _walk(item, refs, codes_in):
    for seq in ("ReferencedSOPSequence",):
        for ref in item.get(seq, []):
            refs.add(str(ref.ReferencedSOPInstanceUID))
    for code in item.get("ConceptCodeSequence", []):
        codes_in.add(str(code.CodeValue))
    for child in item.get("ContentSequence", []):
        _walk(child, refs, codes_in)


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_read_as_formulas_are_quoted(start):
    assert csv_cell(start + "1+1") == "'" + start + "1+1" and csv_cell("P1") == "P1" and csv_cell("a=b") == "a=b"
    text = patients_csv([{"patient_id": start + "cmd|' /C calc'!A0", "score": 0.5}])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [["patient_id", "score"], ["'" + start + "cmd|' /C calc'!A0", "0.500000"]]


def test_patients_ids_are_neutralised_in_patients_csv_and_kept_in_json(tmp_path, config):
    src = tmp_path / "in"
    _png(src / "a.png", 1)
    patients = _csv(tmp_path / "patients.csv", [["file", "patient_id"], ["in/a.png", '=HYPERLINK("http://x")']])
    preds, _ = run_predict(config, [str(src)], str(tmp_path / "out"), OPTS, patients=patients, workers=0)
    assert preds[0]["patient_id"] == '=HYPERLINK("http://x")'
    rows = list(csv.DictReader(open(tmp_path / "out" / "patients.csv", newline="")))
    assert rows[0]["patient_id"] == '\'=HYPERLINK("http://x")'


def test_option_files_that_are_fifos_are_refused(tmp_path, config):
    src = tmp_path / "in"
    _png(src / "a.png", 1)
    fifo = tmp_path / "patients.csv"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(PredictError, match=r"--patients .*patients\.csv: not a regular file \(a FIFO or pipe\)"):
        run_predict(config, [str(src)], str(tmp_path / "out"), OPTS, patients=str(fifo))
    from mammo_tl.evaluation.operating_points import OperatingPointError, load_operating_points

    with pytest.raises(OperatingPointError, match=r"patients\.csv: not a regular file"):
        load_operating_points(str(fifo))


def test_an_output_folder_inside_the_input_folder_is_not_predicted(tmp_path, config, caplog):
    src = tmp_path / "in"
    _png(src / "P0_L_CC.png", 0)
    _png(src / "P1_L_CC.png", 1)
    out = src / "out"
    run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0)
    assert len(os.listdir(out / "overlays")) == 2
    with caplog.at_level(logging.WARNING):
        preds, _ = run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0, resume=True)
    assert [os.path.basename(p["file_name"]) for p in preds] == ["P0_L_CC.png", "P1_L_CC.png"]
    summary = json.load(open(out / "summary.json"))
    assert (summary["inputs"], summary["inputs_in_output_folders"]) == (2, 2)
    assert "2 image file(s) inside the output folders" in caplog.text


def _with_patient(path, **attrs):
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)


def test_one_patient_id_from_two_issuers_is_two_patients(tmp_path, config):
    """Two hospitals' patient 12345 (IssuerOfPatientID HOSP_A / HOSP_B, different names) are two rows of
    patients.csv with their own scores, and their own recall decisions, counted in summary.json."""
    from mammo_tl.outputs.tables import build

    src = tmp_path / "in"
    src.mkdir()
    for name, seed, issuer, who in (("a1.dcm", 1, "HOSP_A", "Doe^Jane"), ("a2.dcm", 2, "HOSP_A", "Doe^Jane"),
                                    ("b.dcm", 3, "HOSP_B", "Roe^Richard")):
        make_dicom(src / name, breast_phantom(seed=seed), patient_id="12345", laterality="L")
        _with_patient(src / name, IssuerOfPatientID=issuer, PatientName=who)
    out = tmp_path / "out"
    preds, _ = run_predict(config, [str(src)], str(out), OPTS, min_score=0.0, workers=0)
    by_name = {os.path.basename(p["file_name"]): p for p in preds}
    assert {n: (p["patient_id"], p["issuer_of_patient_id"]) for n, p in by_name.items()} == {
        "a1.dcm": ("12345", "HOSP_A"), "a2.dcm": ("12345", "HOSP_A"), "b.dcm": ("12345", "HOSP_B")}
    score_a = max(by_name["a1.dcm"]["max_score"], by_name["a2.dcm"]["max_score"])
    score_b = by_name["b.dcm"]["max_score"]
    assert open(out / "patients.csv").read() == (f"patient_id,issuer_of_patient_id,score\n12345,HOSP_A,{score_a:.6f}\n"
                                                 f"12345,HOSP_B,{score_b:.6f}\n")
    summary = json.load(open(out / "summary.json"))
    assert (summary["patients"], summary["patient_ids_with_several_issuers"]) == (2, 1)

    # recall decisions: the HOSP_A patient's high score does not recall HOSP_B's patient
    def rec(name, issuer, score):
        return {"file_name": name, "status": "predicted", "patient_id": "12345", "issuer_of_patient_id": issuer,
                "unknown_patient": False, "laterality": "L", "view": "CC", "boxes": [[0, 0, 1, 1]],
                "scores": [score], "max_score": score}

    t = build(["a", "b"], {"a": rec("a", "HOSP_A", 0.9), "b": rec("b", "HOSP_B", 0.1)}, threshold=0.5)
    assert [(p["issuer_of_patient_id"], p["decision"], p["L_decision"]) for p in t["patients"]] == [
        ("HOSP_A", "recall", "recall"), ("HOSP_B", "no recall", "no recall")]
    assert [e["patient_decision"] for e in t["predictions"]] == ["recall", "no recall"]


def test_patients_csv_contradicting_the_header_patient_id_is_flagged_never_merged(tmp_path, config):
    """A --patients row filing x.dcm (header PatientID P1) under P2: the image is a patient of its own (neither P1
    nor P2's images), named in predictions.json and counted, as a laterality conflict is; a row agreeing with the
    header up to case and spaces is no conflict."""
    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "x.dcm", breast_phantom(seed=1), patient_id="P1", laterality="L")
    make_dicom(src / "y.dcm", breast_phantom(seed=2), patient_id="P2", laterality="R")
    patients = _csv(tmp_path / "patients.csv", [["file", "patient_id"], ["in/x.dcm", "P2"], ["in/y.dcm", "p2 "]])
    out = tmp_path / "out"
    preds, _ = run_predict(config, [str(src)], str(out), OPTS, patients=patients, min_score=0.0, workers=0)
    by_name = {os.path.basename(p["file_name"]): p for p in preds}
    x, y = by_name["x.dcm"], by_name["y.dcm"]
    assert x["patient_conflict"] == {"patients_csv": "P2", "dicom:PatientID": "P1"}
    assert x["source"]["patient_id"] == "conflict" and x["patient_id"].startswith("unknown:")
    assert (y["patient_id"], y["source"]["patient_id"], "patient_conflict" in y) == ("p2", "patients_csv", False)
    summary = json.load(open(out / "summary.json"))
    assert (summary["patient_conflicts"], summary["patients"], summary["unknown_patient"]) == (1, 2, 1)
    rows = list(csv.reader(open(out / "patients.csv")))
    assert sorted(r[0] for r in rows[1:]) == sorted([x["patient_id"], "p2"])
    assert float({r[0]: r[1] for r in rows[1:]}["p2"]) == pytest.approx(y["max_score"], abs=1e-6)
