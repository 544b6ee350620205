"""tools/predict.py --dicom-out: presentation states and TID 1500 reports read back with pydicom, highdicom
and DCMTK; every box, score and reference round-trips exactly against predictions.json and the sources."""
import hashlib
import json
import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import RLELossless, generate_uid

from mammo_tl import __version__
from mammo_tl.data.synthetic import write_dicom
from mammo_tl.inference.command import PredictError, run_predict
from mammo_tl.outputs.dicom import Algorithm, write_dicom_outputs
from tests.common import breast_phantom
from tests.dicom_fixtures import make_dicom
from tests.pacs import require
from tests.test_weights import tiny_config_file, tiny_weights

GSPS_CLASS, SR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.34"
OPTS = ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "3"]
PATIENT = ("PatientName", "PatientID", "PatientBirthDate")  # what make_dicom's identifying sources hold


def dcmtk(tool):
    """The DCMTK tool's path; a clear failure under CI (which installs DCMTK), a skip elsewhere."""
    return require(tool, "dcmtk")


def _float32(values):
    return [float(np.float32(v)) for v in values]


def _rectangle(box):
    x1, y1, x2, y2 = box
    return _float32([x1, y1, x2, y1, x2, y2, x1, y2, x1, y1])


def _objects(folder):
    """The presentation states and reports in ``folder`` (predict may keep a manifest beside them)."""
    return sorted(n for n in os.listdir(folder) if n.endswith(".dcm"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_out")
    src = root / "in"
    src.mkdir()
    study_a, series_a, study_b = generate_uid(), generate_uid(), generate_uid()
    sources = {
        "a_lcc.dcm": make_dicom(src / "a_lcc.dcm", breast_phantom(seed=1), study_uid=study_a, series_uid=series_a,
                                window=(3000, 6000)),
        "a_rcc.dcm": make_dicom(src / "a_rcc.dcm", breast_phantom(seed=2), study_uid=study_a, series_uid=series_a,
                                laterality="R", photometric="MONOCHROME1"),
        "b_rle.dcm": make_dicom(src / "b_rle.dcm", breast_phantom(seed=3), patient_id="P_00002", study_uid=study_b,
                                syntax=RLELossless),
    }
    write_dicom(src / "no_uids.dcm", breast_phantom(seed=4), "P_00003", "L", "MLO")  # no study or series UID
    import cv2

    cv2.imwrite(str(src / "P_00004_L_CC.png"), breast_phantom(seed=5))
    out, dicom = root / "out", root / "out" / "dicom"
    preds, _ = run_predict(tiny_config_file(tmp_path_factory), [str(src)], str(out), OPTS, min_score=0.0,
                           dicom_out=str(dicom))
    return {"src": src, "out": out, "dicom": dicom, "sources": {k: pydicom.dcmread(v) for k, v in sources.items()},
            "preds": {os.path.basename(p["file_name"]): p for p in preds},
            "summary": json.load(open(out / "summary.json")), "weights": tiny_weights(tmp_path_factory)}


def test_inputs_without_study_references_are_predicted_and_counted(run):
    preds, summary = run["preds"], run["summary"]
    assert sorted(preds) == ["P_00004_L_CC.png", "a_lcc.dcm", "a_rcc.dcm", "b_rle.dcm", "no_uids.dcm"]
    dicom = dict(summary["dicom"])
    # the 3 DICOMs with UIDs are checked against the sha256 predict records of each file it decodes
    assert dicom.pop("unverified_images") == sum("file_sha256" not in preds[n] for n in run["sources"])
    assert dicom == {"folder": str(run["dicom"]), "presentation_states": 3, "reports": 2,
                     "images_in_reports": 3, "studies_without_report": 0, "studies_with_several_patients": 0,
                     "studies_without_boxes": 0, "images_without_dicom_output": 2,
                     "without_dicom_output_by_reason": {"missing_uids": 1, "not_dicom": 1}}
    assert preds["no_uids.dcm"]["dicom"]["skipped"] == "missing_uids"
    assert "StudyInstanceUID" in preds["no_uids.dcm"]["dicom"]["reason"]
    assert preds["P_00004_L_CC.png"]["dicom"]["skipped"] == "not_dicom"
    assert all(len(preds[k]["boxes"]) == 3 for k in preds)  # still predicted
    names = _objects(run["dicom"])
    assert len(names) == 5 and sum(n.startswith("PR_") for n in names) == 3
    # the same study's two images share one report; the other study has its own
    assert preds["a_lcc.dcm"]["dicom"]["report"] == preds["a_rcc.dcm"]["dicom"]["report"]
    assert preds["b_rle.dcm"]["dicom"]["report"] != preds["a_lcc.dcm"]["dicom"]["report"]


def test_presentation_states_round_trip(run):
    for name in ("a_lcc.dcm", "a_rcc.dcm", "b_rle.dcm"):
        pred, source = run["preds"][name], run["sources"][name]
        pr = pydicom.dcmread(run["dicom"] / pred["dicom"]["presentation_state"])
        assert pr.SOPClassUID == GSPS_CLASS and pr.Modality == "PR"
        assert pr.StudyInstanceUID == source.StudyInstanceUID and pr.SeriesInstanceUID != source.SeriesInstanceUID
        assert [str(pr[k].value) for k in PATIENT] == [str(source[k].value) for k in PATIENT]
        assert str(pr.PatientName) == "Doe^Jane"
        ref_series = pr.ReferencedSeriesSequence[0]
        assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
        assert ref_series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert ref_series.ReferencedImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
        assert pr.PresentationLUTShape == ("INVERSE" if source.PhotometricInterpretation == "MONOCHROME1"
                                           else "IDENTITY")
        assert pr.ContentDescription == f"mammo_tl {__version__} AI mass candidates, boxes with score >= 0"
        assert pr.ContentLabel == "MAMMO_TL" and pr.SoftwareVersions == __version__
        sha = hashlib.sha256(open(run["weights"], "rb").read()).hexdigest()
        assert pr.SeriesDescription == f"AI boxes: mammo_tl {__version__} tiny_model_tiny.pth {sha[:8]}"
        annotations = {a.GraphicLayer: a for a in pr.GraphicAnnotationSequence}
        assert list(annotations) == ["MAMMO_TL"] and [layer.GraphicLayer for layer in pr.GraphicLayerSequence] == \
            ["MAMMO_TL"]
        a = annotations["MAMMO_TL"]
        assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        rects = [(g.GraphicType, g.GraphicAnnotationUnits, [float(v) for v in g.GraphicData])
                 for g in a.GraphicObjectSequence]
        assert rects == [("POLYLINE", "PIXEL", _rectangle(b)) for b in pred["boxes"]]
        texts = [t.UnformattedTextValue for t in a.TextObjectSequence]
        assert texts[0] == f"mammo_tl {__version__}: 3 mass candidate(s), boxes with score >= 0"
        assert [float(t.split()[1]) for t in texts[1:]] == pred["scores"]
        assert all(t.startswith("mass ") for t in texts[1:])
    window = pydicom.dcmread(run["dicom"] / run["preds"]["a_lcc.dcm"]["dicom"]["presentation_state"])
    assert float(window.SoftcopyVOILUTSequence[0].WindowCenter) == 3000.0  # the source's window, kept


def _texts(group, code):
    return [item.TextValue for item in group[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == code]


def test_reports_round_trip(run):
    preds, sources = run["preds"], run["sources"]
    sha = hashlib.sha256(open(run["weights"], "rb").read()).hexdigest()
    for names in (["a_lcc.dcm", "a_rcc.dcm"], ["b_rle.dcm"]):
        path = run["dicom"] / preds[names[0]]["dicom"]["report"]
        sr = hd.sr.srread(path)
        first = sources[names[0]]
        assert sr.SOPClassUID == SR_CLASS and sr.StudyInstanceUID == first.StudyInstanceUID
        assert [str(sr[k].value) for k in PATIENT] == [str(first[k].value) for k in PATIENT]
        assert sorted(e[2] for e in sr.get_evidence()) == sorted(sources[n].SOPInstanceUID for n in names)
        assert {(e[0], e[1]) for e in sr.get_evidence()} == {(sources[n].StudyInstanceUID,
                                                             sources[n].SeriesInstanceUID) for n in names}
        expected = sorted((sources[n].SOPInstanceUID, tuple(_rectangle(b)), s, preds[n]["laterality"])
                          for n in names for b, s in zip(preds[n]["boxes"], preds[n]["scores"]))
        found = []
        groups = sr.content.get_planar_roi_measurement_groups()
        for g in groups:
            (m,) = g.get_measurements()
            assert (m.name.value, m.name.scheme_designator) == (codes.DCM.CertaintyOfFinding.value, "DCM")
            assert g.finding_type.value == codes.SCT.Mass.value
            (site,) = g.finding_sites
            assert site.value.value == codes.SCT.Breast.value
            laterality = site.ContentSequence[0].ConceptCodeSequence[0].CodeValue
            side = {codes.SCT.Left.value: "L", codes.SCT.Right.value: "R"}[laterality]
            assert _texts(g, "111001") == ["mammo_tl"] and _texts(g, "111003") == [__version__]
            params = _texts(g, "111002")
            config_name = f"{os.path.basename(os.path.dirname(run['weights']))}/tiny_model_tiny.pth.yaml"
            assert params == [f"config: {config_name}", f"weights sha256: {sha}", "reported: boxes with score >= 0"]
            uid = g.roi.ContentSequence[0].referenced_sop_instance_uid
            found.append((uid, tuple(float(v) for v in g.roi.value.flatten()), m.value, side))
            # the same region under the score, INFERRED FROM (where OHIF Viewer's reader looks for it)
            (inferred,) = m[0].ContentSequence
            assert (inferred.ValueType, inferred.RelationshipType) == ("SCOORD", "INFERRED FROM")
            assert list(inferred.GraphicData) == list(g.roi.GraphicData) and inferred.GraphicType == "POLYLINE"
            assert inferred.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
        assert sorted(found) == expected
        assert len(expected) == 3 * len(names)
        assert sr.SeriesDescription == f"AI report: mammo_tl {__version__} tiny_model_tiny.pth {sha[:8]}"
        # a box's rectangle carries the same tracking UID in the presentation state and in the report
        pr = pydicom.dcmread(run["dicom"] / preds[names[0]]["dicom"]["presentation_state"])
        pr_tracking = {g.TrackingUID for g in pr.GraphicAnnotationSequence[0].GraphicObjectSequence}
        assert pr_tracking <= {str(g.tracking_uid) for g in groups} and len(pr_tracking) == 3


def test_dcmtk_parses_every_object(run):
    dsrdump, dcmdump = dcmtk("dsrdump"), dcmtk("dcmdump")
    names = _objects(run["dicom"])
    for name in names:
        r = subprocess.run([dcmdump, "+E", str(run["dicom"] / name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)
    reports = [n for n in names if n.startswith("SR_")]
    assert len(reports) == 2
    for name in reports:
        r = subprocess.run([dsrdump, str(run["dicom"] / name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (name, r.stderr)
        assert "Imaging Measurement Report" in r.stdout and '(4147007,SCT,"Mass")' in r.stdout
    # the check can fail: a presentation state is not an SR document
    pr = next(n for n in names if n.startswith("PR_"))
    assert subprocess.run([dsrdump, str(run["dicom"] / pr)], capture_output=True, timeout=60).returncode != 0


def test_rerun_writes_the_same_objects_and_a_previous_run_is_not_mixed_in(run, tmp_path_factory):
    config = tiny_config_file(tmp_path_factory)
    with pytest.raises(PredictError, match=r"--dicom-out .*dicom holds a previous run's presentation states and "
                                           r"reports \(5 file\(s\)\)"):
        run_predict(config, [str(run["src"])], str(run["out"].parent / "elsewhere"), OPTS, min_score=0.0,
                    dicom_out=str(run["dicom"]))
    again = run["out"].parent / "again"
    run_predict(config, [str(run["src"])], str(again / "out"), OPTS, min_score=0.0, dicom_out=str(again / "dicom"),
                workers=0)
    assert _objects(again / "dicom") == _objects(run["dicom"])
    for name in _objects(run["dicom"]):
        a, b = (pydicom.dcmread(d / name) for d in (run["dicom"], again / "dicom"))
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    # --overwrite rewrites the previous run's presentation states and reports; files mammo_tl did not write
    # there (a PR_ file copied in by hand, the user's notes) are left
    foreign = again / "dicom" / "PR_of_an_image_no_longer_among_the_inputs.dcm"
    shutil.copy(next((again / "dicom").glob("PR_*.dcm")), foreign)
    (again / "dicom" / "notes.txt").write_text("the user's own file")
    run_predict(config, [str(run["src"])], str(again / "out"), OPTS, min_score=0.0, dicom_out=str(again / "dicom"),
                overwrite=True)
    assert _objects(again / "dicom") == sorted(_objects(run["dicom"]) + [foreign.name])
    assert (again / "dicom" / "notes.txt").read_text() == "the user's own file"


def _header(path, **kw):
    make_dicom(path, breast_phantom(), **kw)
    return path


def test_hand_made_records_layers_empty_images_and_mixed_patients(tmp_path):
    """Boxes by hand: an operating point splits them into a red and an amber layer; an image without a box is
    reported as such; a study whose images name two patients gets no report, counted."""
    study, series = generate_uid(), generate_uid()
    a = _header(tmp_path / "a.dcm", study_uid=study, series_uid=series)
    b = _header(tmp_path / "b.dcm", study_uid=study, series_uid=series, laterality="R")
    c = _header(tmp_path / "c.dcm", study_uid=generate_uid(), patient_id="P_1")
    d = _header(tmp_path / "d.dcm", study_uid=pydicom.dcmread(c).StudyInstanceUID, patient_id="P_2")
    records = [
        {"file_name": str(a), "laterality": "L", "boxes": [[0.0, 0.0, 160.0, 200.0], [10.25, 20.5, 30.75, 40.0]],
         "scores": [0.9, 0.2]},
        {"file_name": str(b), "laterality": "R", "boxes": [], "scores": []},
        {"file_name": str(c), "laterality": "", "boxes": [[5.0, 6.0, 7.0, 8.0]], "scores": [0.6]},
        {"file_name": str(d), "laterality": "", "boxes": [], "scores": []},
    ]
    out = tmp_path / "dicom"
    out.mkdir()
    algorithm = Algorithm("x/cfg.yaml", "0" * 64, 0.1, ("youden", 0.5))
    per_image, summary = write_dicom_outputs(str(out), [(r, f"n{i}") for i, r in enumerate(records)], algorithm)
    assert summary["reports"] == 1 and summary["studies_without_report"] == 1
    assert summary["presentation_states"] == 4 and summary["images_without_dicom_output"] == 0
    assert per_image[str(c)]["report_skipped"].startswith(
        "its study's images disagree on the patient (PatientID differ)")
    assert summary["studies_with_several_patients"] == 1

    pr = pydicom.dcmread(out / per_image[str(a)]["presentation_state"])
    layers = {a.GraphicLayer: a for a in pr.GraphicAnnotationSequence}
    assert sorted(layers) == ["MAMMO_TL", "MAMMO_TL_BELOW", "MAMMO_TL_RECALL"]
    assert [list(g.GraphicData) for g in layers["MAMMO_TL_RECALL"].GraphicObjectSequence] == \
        [_rectangle([0.0, 0.0, 160.0, 200.0])]
    assert [list(g.GraphicData) for g in layers["MAMMO_TL_BELOW"].GraphicObjectSequence] == \
        [_rectangle([10.25, 20.5, 30.75, 40.0])]
    assert [t.UnformattedTextValue for t in layers["MAMMO_TL_BELOW"].TextObjectSequence] == ["mass 0.20000"]
    colours = {layer.GraphicLayer: hd.color.CIELabColor.from_dicom_value(
        tuple(layer.GraphicLayerRecommendedDisplayCIELabValue)).to_rgb() for layer in pr.GraphicLayerSequence}
    assert colours["MAMMO_TL_RECALL"] == (255, 0, 0) and colours["MAMMO_TL_BELOW"] == (255, 200, 0)
    assert "operating point youden: recall above 0.5" in layers["MAMMO_TL"].TextObjectSequence[0].UnformattedTextValue
    empty = pydicom.dcmread(out / per_image[str(b)]["presentation_state"])
    assert [x.GraphicLayer for x in empty.GraphicAnnotationSequence] == ["MAMMO_TL"]
    assert "0 mass candidate(s), boxes with score >= 0.1" in \
        empty.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue

    sr = hd.sr.srread(out / per_image[str(a)]["report"])
    assert len(sr.content.get_planar_roi_measurement_groups()) == 2
    # the image without a box is no measurement group (no "Mass: Absent" for a threshold decision): it is in
    # the evidence and the Image Library, and the report says its score is below the threshold
    assert sr.content.get_image_measurement_groups() == []
    assert "272519000" not in str(pydicom.dcmread(out / per_image[str(a)]["report"]))
    assert sorted(e[2] for e in sr.get_evidence()) == sorted(pydicom.dcmread(x).SOPInstanceUID for x in (a, b))
    (library,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library.ContentSequence[0].ContentSequence] \
        == [pydicom.dcmread(x).SOPInstanceUID for x in (a, b)]
    (evaluations,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert evaluations.ContentSequence[0].TextValue == (
        f"mammo_tl {__version__} (x/cfg.yaml, weights sha256 0000000000000000): 2 mass candidate(s) in 1 of 2 "
        "image(s), boxes with score >= 0.1; operating point youden: recall above 0.5. No mass candidate at or above "
        "that score in image 2 (R): a score below the threshold, not a finding of normal.")


def test_a_study_without_a_box_gets_presentation_states_and_no_report(tmp_path):
    """No image of the study has a box at or above the threshold: no report (OHIF Viewer fails on a report
    without measurements), counted; the presentation states say that none is at or above the threshold."""
    study = generate_uid()
    paths = [_header(tmp_path / f"{s}.dcm", study_uid=study, laterality=s) for s in "LR"]
    out = tmp_path / "dicom"
    out.mkdir()
    per_image, summary = write_dicom_outputs(
        str(out), [({"file_name": str(p), "laterality": "", "boxes": [], "scores": []}, f"n{i}")
                   for i, p in enumerate(paths)], Algorithm("x/cfg.yaml", "0" * 64, 0.3))
    assert (summary["reports"], summary["studies_without_boxes"], summary["presentation_states"]) == (0, 1, 2)
    assert summary["studies_without_report"] == 0  # not a failure
    assert sorted(os.listdir(out)) == ["PR_n0.dcm", "PR_n1.dcm"]
    for p in paths:
        assert per_image[str(p)]["report_skipped"].startswith("no box in its study (boxes with score >= 0.3)")
    text = pydicom.dcmread(out / "PR_n0.dcm").GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert text.UnformattedTextValue == f"mammo_tl {__version__}: 0 mass candidate(s), boxes with score >= 0.3"


def _dcmdump_items(text, sequence="(0018,a001)"):
    """The items of the top-level ``sequence`` in dcmdump's output, each as its lines."""
    items, current, inside = [], None, False
    for line in text.splitlines():
        if line.startswith(sequence):
            inside = True
            continue
        if inside and not line.startswith(" "):
            break
        if inside and line.startswith("  (fffe,e000)"):
            current = []
            items.append(current)
        elif inside and current is not None:
            current.append(line.strip())
    return items


def test_ihe_ai_results_contributing_equipment(run):
    """Every presentation state and report names the algorithm in its Contributing Equipment Sequence (IHE AI
    Results): purpose Processing Equipment (DCM 109102), manufacturer, model (the config), software version,
    serial number (the weights' sha256) and Device UID, read back with dcmdump; the report's observer device
    (dsrdump) is the same device."""
    import uuid

    dcmdump, dsrdump = dcmtk("dcmdump"), dcmtk("dsrdump")
    weights_sha256 = hashlib.sha256(open(run["weights"], "rb").read()).hexdigest()
    config_name = os.path.join(os.path.basename(os.path.dirname(run["weights"])),
                               f"tiny_{os.path.basename(run['weights'])}.yaml")
    namespace = uuid.uuid5(uuid.NAMESPACE_OID, "mammo_tl")
    device_uid = f"2.25.{uuid.uuid5(namespace, repr(('device', weights_sha256, config_name))).int}"
    names = _objects(run["dicom"])
    assert len(names) == 5
    for name in names:
        out = subprocess.run([dcmdump, str(run["dicom"] / name)], capture_output=True, text=True, timeout=60).stdout
        ours = [item for item in _dcmdump_items(out) if any("[mammo_tl]" in line for line in item)]
        assert len(ours) == 1, name
        values = {line.split()[0]: line.split("[", 1)[1].split("]", 1)[0] for line in ours[0] if "[" in line}
        assert values == {"(0008,0070)": "mammo_tl", "(0008,1090)": config_name, "(0018,1000)": weights_sha256[:16],
                          "(0018,1002)": device_uid, "(0018,1020)": __version__, "(0008,0100)": "109102",
                          "(0008,0102)": "DCM", "(0008,0104)": "Processing Equipment"}, name
        if name.startswith("SR_"):
            tree = subprocess.run([dsrdump, str(run["dicom"] / name)], capture_output=True, text=True,
                                  timeout=60).stdout
            assert f'UIDREF:(,,"Device Observer UID")="{device_uid}"' in tree


def _named(sr):
    return [i.ReferencedSOPInstanceUID for s in sr.get("PredecessorDocumentsSequence", [])
            for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]


def test_a_later_report_names_the_earlier_and_a_corrected_patient_gets_new_uids(tmp_path):
    """Written into a folder holding the study's report: more images give a new report naming the earlier one
    (and what that named); the same findings again give the same report, predecessors included. A corrected
    patient gives new UIDs for every object, and the report does not name the other patient's."""
    study = generate_uid()
    paths = [_header(tmp_path / f"{s}.dcm", study_uid=study, laterality=s) for s in "LR"]
    paths.append(_header(tmp_path / "L2.dcm", study_uid=study, view="MLO"))
    records = [{"file_name": str(p), "laterality": "", "boxes": [[1.0, 2.0, 3.0, 4.0]], "scores": [0.5]}
               for p in paths]
    out = tmp_path / "dicom"
    out.mkdir()
    algorithm = Algorithm("x/cfg.yaml", "0" * 64, 0.1)

    def write(n):
        per_image, _ = write_dicom_outputs(str(out), [(r, f"n{i}") for i, r in enumerate(records[:n])], algorithm)
        return pydicom.dcmread(out / per_image[str(paths[0])]["report"]), \
            {pydicom.dcmread(out / v["presentation_state"]).SOPInstanceUID for v in per_image.values()}

    first, _ = write(1)
    second, _ = write(2)
    third, prs = write(3)
    assert len({first.SOPInstanceUID, second.SOPInstanceUID, third.SOPInstanceUID}) == 3
    assert (_named(first), _named(second)) == ([], [first.SOPInstanceUID])
    assert sorted(_named(third)) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert third.PredecessorDocumentsSequence[0].StudyInstanceUID == study
    again, prs_again = write(3)  # --resume: the same objects
    assert (again.SOPInstanceUID, sorted(_named(again)), prs_again) == (third.SOPInstanceUID,
                                                                         sorted(_named(third)), prs)
    for p in paths:  # the patient corrected; UIDs and pixels unchanged
        ds = pydicom.dcmread(p)
        ds.PatientID = "P_00099"
        ds.save_as(p, enforce_file_format=True)
    corrected, prs_corrected = write(3)
    assert corrected.PatientID == "P_00099" and corrected.SOPInstanceUID != third.SOPInstanceUID
    assert corrected.SeriesInstanceUID != third.SeriesInstanceUID and not prs_corrected & prs
    assert _named(corrected) == []
    moved = pydicom.dcmread(paths[0])  # an image moved to another study: another object, another UID
    moved.StudyInstanceUID = generate_uid()
    moved.save_as(paths[0], enforce_file_format=True)
    _, prs_moved = write(3)
    assert len(prs_moved - prs_corrected) == 1
    # DCMTK reads a report with predecessors
    third.save_as(tmp_path / "third.dcm")
    r = subprocess.run([dcmtk("dsrdump"), str(tmp_path / "third.dcm")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
