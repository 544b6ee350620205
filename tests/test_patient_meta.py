"""Who, which breast, which view: DICOM header fields (codes checked against pydicom's code dictionary), the
CBIS-DDSM PatientID, the --patients CSV and file names, each with its source; recall decisions per patient
and breast at a hand-written operating point."""
import csv
import hashlib
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from mammo_tl.data.dicom_header import identify, parse_cbis_ddsm_patient_id
from mammo_tl.inference.command import PredictError, run_predict
from mammo_tl.data.inputs import PatientsCsvError, image_key, read_patients_csv
from mammo_tl.inference.predictor import MammoPredictor
from tests.dicom_fixtures import make_dicom
from tests.test_weights import tiny_config_file, tiny_weights

OPTS = ["MODEL.DEVICE", "cpu"]


def _phantom(h=200, w=160, seed=0):
    img = np.full((h, w), 200, np.uint16)
    yy, xx = np.mgrid[0:h, 0:w]
    img[((xx - w + 1) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1] = 3000
    img[60 + seed:75 + seed, 100:115] = 6000
    return img


def _coded(code):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _ds(**fields):
    ds = Dataset()
    for k, v in fields.items():
        setattr(ds, k, v)
    return ds


def _srt(value, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SRT", meaning
    return item


def _frame_laterality(side):
    frame = Dataset()
    frame.FrameLaterality = side
    shared = Dataset()
    shared.FrameAnatomySequence = [frame]
    return [shared]


@pytest.mark.parametrize("fields, laterality, view", [
    ({"ImageLaterality": "L", "ViewPosition": "CC"}, ("L", "dicom:ImageLaterality"), ("CC", "dicom:ViewPosition")),
    ({"Laterality": "R", "ViewPosition": "mlo"}, ("R", "dicom:Laterality"), ("MLO", "dicom:ViewPosition")),
    # B (both) and U (unpaired) say no side: the series-level field decides
    ({"ImageLaterality": "B", "Laterality": "L"}, ("L", "dicom:Laterality"), ("", "unknown")),
    ({"SharedFunctionalGroupsSequence": _frame_laterality("R")}, ("R", "dicom:FrameLaterality"), ("", "unknown")),
    # the coded view (Type 1 in the mammography IOD) wins over ViewPosition
    ({"ViewCodeSequence": [_coded(codes.SCT.CranioCaudal)], "ViewPosition": "MLO"}, ("", "unknown"),
     ("CC", "dicom:ViewCodeSequence")),
    ({"ViewCodeSequence": [_coded(codes.SCT.MedioLateralObliqueProjection)]}, ("", "unknown"),
     ("MLO", "dicom:ViewCodeSequence")),
    ({"ViewCodeSequence": [_coded(codes.SCT.CranioCaudalExaggeratedLaterally)]}, ("", "unknown"),
     ("XCCL", "dicom:ViewCodeSequence")),
    ({"ViewCodeSequence": [_srt("R-10226", "medio-lateral oblique")]}, ("", "unknown"),
     ("MLO", "dicom:ViewCodeSequence")),
    # a code of another view family, and a ViewPosition that is no mammography view, say nothing
    ({"ViewCodeSequence": [_coded(codes.SCT.AnteroPosteriorObliqueProjection)], "ViewPosition": "AP"},
     ("", "unknown"), ("", "unknown")),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # a lower-case ViewPosition, on purpose
def test_laterality_and_view_from_every_header_field(tmp_path, fields, laterality, view):
    ds = _ds(PatientID="P1", **fields)
    got = identify(ds)
    assert got["patient_id"] == ("P1", "dicom:PatientID")
    assert (got["laterality"][0], got["laterality"][1] or "unknown") == laterality
    assert (got["view"][0], got["view"][1] or "unknown") == view


def test_cbis_ddsm_patient_id():
    assert parse_cbis_ddsm_patient_id("Mass-Test_P_00820_LEFT_CC") == {"patient_id": "P_00820", "laterality": "L",
                                                                        "view": "CC"}
    assert parse_cbis_ddsm_patient_id("Calc-Training_P_00001_RIGHT_MLO_2") == {
        "patient_id": "P_00001", "laterality": "R", "view": "MLO"}
    for other in ("Mass-Test_P_0082_LEFT_CC", "Mass-Val_P_00820_LEFT_CC", "P_00820_LEFT_CC", "Mass-Test_P_00820_L_CC",
                  "Mass-Test_P_00820_LEFT_CC_x", ""):
        assert parse_cbis_ddsm_patient_id(other) is None, other
    # the header's own fields come first; the id fills what they leave out
    got = identify(_ds(PatientID="Mass-Test_P_00820_LEFT_CC", ImageLaterality="R"))
    assert got == {"patient_id": ("P_00820", "cbis_ddsm_patient_id"), "laterality": ("R", "dicom:ImageLaterality"),
                   "view": ("CC", "cbis_ddsm_patient_id")}


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


@pytest.mark.parametrize("rows, message", [
    ([["file", "patient_id", "side"], ["a.png", "P1", "L"]],
     r"unknown column\(s\) 'side'; expected file, patient_id and optionally laterality, view"),
    ([["file", "laterality"], ["a.png", "L"]], r"no patient_id column \(header: file, laterality\)"),
    ([["file", "patient_id"], ["a.png", "P1"], ["b.png", ""]], r"row 3 \(b\.png\): patient_id is empty"),
    ([["file", "patient_id", "laterality"], ["a.png", "P1", "X"]],
     r"row 2 \(a\.png\): laterality 'X'; expected L, R, LEFT, RIGHT or empty"),
    ([["file", "patient_id", "view"], ["a.png", "P1", "AP"]], r"row 2 \(a\.png\): view 'AP'; expected one of CC, MLO"),
    ([["file", "patient_id"], ["a.png", "P1"], ["./a.png", "P2"]], r"rows 2 and 3 both name '\./a\.png'"),
    ([["file", "patient_id"], ["a.png", "P1", "extra"]], r"row 2 has more cells than the header's 2"),
    ([["file", "patient_id"], ["", "P1"]], r"row 2: file is empty"),
    ([["file", "patient_id"]], r"no rows under the header"),
])
def test_patients_csv_errors_name_the_row(tmp_path, rows, message):
    path = _csv(tmp_path / "patients.csv", rows)
    with pytest.raises(PatientsCsvError, match=rf"patients\.csv: {message}"):
        read_patients_csv(path)


def test_patients_csv_values_and_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _csv(tmp_path / "sub" / "patients.csv", [["file", "patient_id", "laterality", "view"],
                                                    ["../a.png", " P1 ", "left", "mlo"],
                                                    [str(tmp_path / "b.png"), "P2", "", ""]])
    entries = read_patients_csv(path)
    assert entries == {
        os.path.realpath(tmp_path / "a.png"): {"path": str(tmp_path / "sub" / "../a.png"), "patient_id": "P1",
                                               "laterality": "L", "view": "MLO", "row": 2},
        os.path.realpath(tmp_path / "b.png"): {"path": str(tmp_path / "b.png"), "patient_id": "P2", "laterality": "",
                                               "view": "", "row": 3}}


def test_sources_of_patient_side_and_view_through_predict(tmp_path, tmp_path_factory, capsys):
    """The CBIS-DDSM case that went wrong (one patient became four, no view), coded views, the CSV winning
    over the header where the header has none (a contradicted patient id is used by neither), file names; every
    source named in predictions.json, unmatched rows counted."""
    src = tmp_path / "in"
    src.mkdir()
    for name, pid in (("cbis_cc.dcm", "Mass-Test_P_00820_LEFT_CC"), ("cbis_mlo.dcm", "Mass-Test_P_00820_LEFT_MLO")):
        make_dicom(src / name, _phantom(), patient_id=pid, laterality="", view="")
    coded = make_dicom(src / "coded.dcm", _phantom(seed=3), patient_id="PX", laterality="", view="")
    import pydicom

    ds = pydicom.dcmread(coded)
    ds.Laterality = "R"
    ds.ViewCodeSequence = [_coded(codes.SCT.MedioLateralObliqueProjection)]
    del ds.ImageLaterality, ds.ViewPosition
    ds.save_as(coded)
    make_dicom(src / "override.dcm", _phantom(seed=4), patient_id="P_99", laterality="L", view="CC")
    cv2.imwrite(str(src / "scan1.png"), _phantom(seed=5))
    cv2.imwrite(str(src / "P7_L_MLO.png"), _phantom(seed=6))
    patients = _csv(tmp_path / "patients.csv", [["file", "patient_id", "laterality", "view"],
                                                ["in/scan1.png", "Q1", "R", ""], ["in/override.dcm", "Q2", "", ""],
                                                ["in/missing.png", "Q3", "", ""]])
    out = tmp_path / "out"
    run_predict(tiny_config_file(tmp_path_factory), [str(src)], str(out), OPTS, patients=patients)
    preds = {os.path.basename(p["file_name"]): p for p in json.load(open(out / "predictions.json"))}
    got = {k: (p["patient_id"], p["laterality"], p["view"], p["source"]) for k, p in preds.items()}
    cbis = {"patient_id": "cbis_ddsm_patient_id", "laterality": "cbis_ddsm_patient_id", "view": "cbis_ddsm_patient_id"}
    assert got == {
        "cbis_cc.dcm": ("P_00820", "L", "CC", cbis),
        "cbis_mlo.dcm": ("P_00820", "L", "MLO", cbis),
        "coded.dcm": ("PX", "R", "MLO", {"patient_id": "dicom:PatientID", "laterality": "dicom:Laterality",
                                         "view": "dicom:ViewCodeSequence"}),
        # the CSV's Q2 contradicts the header's P_99: neither is used, the image is a patient of its own
        "override.dcm": (f"unknown:{image_key(str(src / 'override.dcm'))}", "L", "CC",
                         {"patient_id": "conflict", "laterality": "dicom:ImageLaterality",
                          "view": "dicom:ViewPosition"}),
        "scan1.png": ("Q1", "R", "", {"patient_id": "patients_csv", "laterality": "patients_csv", "view": "unknown"}),
        "P7_L_MLO.png": ("P7", "L", "MLO", {"patient_id": "file_name", "laterality": "file_name",
                                            "view": "file_name"}),
    }
    summary = json.load(open(out / "summary.json"))
    assert summary["patients"] == 5  # P_00820's two views are one patient
    assert (summary["unknown_patient"], summary["unknown_laterality"], summary["patient_conflicts"]) == (1, 0, 1)
    assert preds["override.dcm"]["patient_conflict"] == {"patients_csv": "Q2", "dicom:PatientID": "P_99"}
    assert summary["patients_csv"] == {"file": patients, "rows": 3, "inputs_listed": 2, "rows_not_among_inputs": 1,
                                       "inputs_not_listed": 4}
    rows = [r["patient_id"] for r in csv.DictReader(open(out / "patients.csv"))]
    assert rows == ["P7", "PX", "P_00820", "Q1", preds["override.dcm"]["patient_id"]]
    # no identifying header field reaches the outputs written for everyone
    for name in ("predictions.json", "patients.csv", "summary.json", "predictions.jsonl"):
        text = open(out / name).read()
        assert "Doe" not in text and "19600101" not in text and "ACC123456" not in text, name
    # a changed CSV changes who the images are: the run cannot be resumed with it
    _csv(patients, [["file", "patient_id"], ["in/scan1.png", "Q9"]])
    with pytest.raises(PredictError, match=r"--patients-sha256"):
        run_predict(tiny_config_file(tmp_path_factory), [str(src)], str(out), OPTS, patients=patients, resume=True)
    with pytest.raises(PredictError, match=r"--patients .*bad\.csv: unknown column\(s\) 'side'"):
        run_predict(tiny_config_file(tmp_path_factory), [str(src)], str(out), OPTS,
                    patients=_csv(tmp_path / "bad.csv", [["file", "patient_id", "side"]]), overwrite=True)


class _ScoresByCall(torch.nn.Module):
    """One call per image (batch size 1, in input order): answers the next image's scores, box i at a fixed
    place of its own."""

    def __init__(self, scores_per_image):
        super().__init__()
        self.queue = list(scores_per_image)

    def forward(self, batched):
        out = []
        for b in batched:
            h, w = b["height"], b["width"]
            scores = self.queue.pop(0)
            inst = Instances((h, w))
            boxes = [[(0.1 + 0.3 * i) * w, 0.2 * h, (0.3 + 0.3 * i) * w, 0.6 * h] for i in range(len(scores))]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            out.append({"instances": inst})
        return out


@pytest.fixture
def op_setup(tmp_path, tmp_path_factory, monkeypatch):
    """Inputs, a copy of the tiny weights and operating_points.json beside it (written by hand), a model
    answering known scores."""
    src = tmp_path / "in"
    src.mkdir()
    scores = {"PA_L_CC.png": [0.9, 0.2], "PA_R_CC.png": [0.3], "PB_L_CC.png": [0.45], "PB_L_MLO.png": [],
              "PC_R_CC.png": [0.1], "x.png": [0.7]}
    for i, name in enumerate(scores):
        cv2.imwrite(str(src / name), _phantom(seed=i))
    weights = tmp_path / "model" / "model_final.pth"
    weights.parent.mkdir()
    shutil.copy(tiny_weights(tmp_path_factory), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    points = {"weights_sha256": sha, "validation_dataset": "val", "points": {
        "chosen": {"threshold": 0.4, "validation": {"sensitivity": 0.9, "specificity": 0.7}},
        "strict": {"threshold": 0.95, "validation": {"sensitivity": 0.2, "specificity": 1.0}}}}
    (weights.parent / "operating_points.json").write_text(json.dumps(points))
    real_init = MammoPredictor.__init__

    def init(self, cfg, **kwargs):
        real_init(self, cfg, **kwargs)
        self.model = _ScoresByCall(scores.values())

    monkeypatch.setattr(MammoPredictor, "__init__", init)
    return {"src": src, "weights": weights, "points": points, "config": tiny_config_file(tmp_path_factory),
            "opts": OPTS + ["MODEL.WEIGHTS", str(weights)]}


def test_recall_decisions_per_patient_and_breast(op_setup, tmp_path):
    s, out = op_setup, tmp_path / "out"
    run_predict(s["config"], [str(s["src"])], str(out), s["opts"], overlay=True, operating_point="chosen")
    preds = {os.path.basename(p["file_name"]): p for p in json.load(open(out / "predictions.json"))}
    # threshold 0.4: PA 0.9 (left 0.9, right 0.3), PB 0.45 (left only), PC 0.1 (right), x.png 0.7 (side unknown)
    decisions = {k: (p["patient_decision"], p["breast_decision"]) for k, p in preds.items()}
    assert decisions == {"PA_L_CC.png": ("recall", "recall"), "PA_R_CC.png": ("recall", "no recall"),
                         "PB_L_CC.png": ("recall", "recall"), "PB_L_MLO.png": ("recall", "recall"),
                         "PC_R_CC.png": ("no recall", "no recall"), "x.png": ("recall", None)}
    rows = list(csv.reader(open(out / "patients.csv")))
    unknown = preds["x.png"]["patient_id"]
    assert rows == [["patient_id", "score", "decision", "left_score", "left_decision", "right_score", "right_decision"],
                    ["PA", "0.900000", "recall", "0.900000", "recall", "0.300000", "no recall"],
                    ["PB", "0.450000", "recall", "0.450000", "recall", "", ""],
                    ["PC", "0.100000", "no recall", "", "", "0.100000", "no recall"],
                    [unknown, "0.700000", "recall", "", "", "", ""]]
    point = json.load(open(out / "summary.json"))["operating_point"]
    assert point == {"name": "chosen", "threshold": 0.4, "file": str(s["weights"].parent / "operating_points.json"),
                     "validation_dataset": "val", "validation": {"sensitivity": 0.9, "specificity": 0.7},
                     "patients_recalled": 3, "breasts": 4, "breasts_recalled": 2}
    # overlay colours follow the decision: the 0.9 box red, the 0.2 box amber (OpenCV's BGR)
    overlay = cv2.imread(str(out / preds["PA_L_CC.png"]["overlay"]))
    colours = []
    for x1, y1, _, y2 in preds["PA_L_CC.png"]["boxes"]:
        colours.append(tuple(int(c) for c in overlay[int((y1 + y2) / 2), int(x1)]))
    assert colours == [(0, 0, 255), (0, 200, 255)]


def test_operating_point_refusals(op_setup, tmp_path):
    s = op_setup

    def run(**kw):
        return run_predict(s["config"], [str(s["src"])], str(tmp_path / "out"), kw.pop("opts", s["opts"]), **kw)

    with pytest.raises(PredictError, match=r"--operating-point nope: .*operating_points\.json has no point of that "
                                           r"name; it holds chosen, strict"):
        run(operating_point="nope")
    with pytest.raises(PredictError, match=r"--operating-point chosen: .*missing\.json: no operating points file"):
        run(operating_point="chosen", operating_points=str(tmp_path / "missing.json"))
    with pytest.raises(PredictError, match=r"its threshold 0\.4 is below --min-score 0\.5.*--min-score 0\.4 or lower"):
        run(operating_point="chosen", min_score=0.5)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**s["points"], "weights_sha256": "0" * 64}))
    with pytest.raises(PredictError, match=r"--operating-point chosen: .*other\.json was chosen for other weights"):
        run(operating_point="chosen", operating_points=str(other))
    with pytest.raises(PredictError, match=r"--operating-points .*other\.json: name the point to use"):
        run(operating_points=str(other))
    assert not (tmp_path / "out").exists()  # refused before anything was written
