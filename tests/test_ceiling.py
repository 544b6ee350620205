"""The ceiling row's pieces (docs/experiments.md, part three): a second class of boxed benign findings in the
records, findings = cancer-class boxes in evaluation and prediction, and the share of the ceiling's gain."""
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from mammo_tl.data.records import DatasetError, is_negative, validate_records
from mammo_tl.modeling.findings import cancer_findings
from mammo_tl.modeling.negatives import negative_images


def _record(annotations, image_id=1):
    return {"file_name": f"x{image_id}.png", "height": 100, "width": 100, "image_id": image_id, "patient_id": "p",
            "laterality": "L", "view": "CC", "annotations": annotations}


def test_records_take_a_benign_class_and_a_negative_image_holds_no_cancer():
    benign = {"bbox": [10, 10, 20, 20], "category_id": 1}
    cancer = {"bbox": [30, 30, 40, 40], "category_id": 0}
    recs = validate_records([_record([benign], 1), _record([benign, cancer], 2), _record([], 3)], "t.json")
    assert [is_negative(r) for r in recs] == [True, False, True]
    assert [a["category_id"] for a in recs[1]["annotations"]] == [1, 0]
    for bad in (2, -1, 0.5, "0", True):
        with pytest.raises(DatasetError, match="t.json: record 0 .*category_id"):
            validate_records([_record([{"bbox": [1, 1, 5, 5], "category_id": bad}])], "t.json")


def test_the_model_reads_an_image_with_benign_boxes_only_as_negative():
    def target(classes):
        t = Instances((64, 64))
        t.gt_boxes = Boxes(torch.tensor([[1.0, 1, 9, 9]] * len(classes)).reshape(-1, 4))
        t.gt_classes = torch.tensor(classes, dtype=torch.int64)
        return t

    assert negative_images([target([]), target([1]), target([1, 0]), target([0])]) == [True, True, False, False]


def _predictions(classes, scores):
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[float(i), 0, i + 5.0, 5] for i in range(len(classes))]).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_only_cancer_boxes_are_findings():
    kept = cancer_findings(_predictions([1, 0, 1, 0], [0.9, 0.6, 0.8, 0.3]))
    assert kept.scores.tolist() == pytest.approx([0.6, 0.3])
    assert kept.pred_boxes.tensor[:, 0].tolist() == [1.0, 3.0]
    assert len(cancer_findings(_predictions([], []))) == 0


def test_patient_score_is_the_highest_cancer_box(tiny_datasets):
    """PatientEvaluator on hand-made two-class predictions: a benign box scoring 0.95 on a healthy patient's image
    does not make the patient positive; each patient's score is its highest cancer-class box, by hand."""
    from detectron2.data import DatasetCatalog

    from mammo_tl.evaluation.evaluators import PatientEvaluator

    records = DatasetCatalog.get("mammo_synth_tiny_test")
    ev = PatientEvaluator("mammo_synth_tiny_test", output_dir=None, bootstrap=0)
    ev.reset()
    expected = {}
    for k, r in enumerate(records):
        cancer = 0.1 + 0.05 * k
        ev.process([{"image_id": r["image_id"]}], [{"instances": _predictions([1, 0], [0.95, cancer])}])
        expected[r["patient_id"]] = max(expected.get(r["patient_id"], 0.0), cancer)
    ev.evaluate()
    assert ev.patient_scores == pytest.approx(expected)


def _auc(y, s):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, s)


def test_ceiling_share_by_hand_and_by_an_independent_bootstrap():
    from mammo_tl.evaluation.ceiling import ceiling_share

    y = np.array([0, 0, 1, 1])
    base, method, ceiling = [0.5, 0.6, 0.4, 0.7], [0.1, 0.6, 0.5, 0.7], [0.1, 0.2, 0.8, 0.9]
    # AUCs by hand: base 2/4 pairs ordered = 0.5, method 3/4 = 0.75, ceiling 1.0
    r = ceiling_share(y, [base], [method], [ceiling], bootstrap=0)
    assert (r["method_gain"], r["ceiling_gain"], r["share"]) == pytest.approx((0.25, 0.5, 0.5))

    # two seeds on 60 patients: the point estimate is the ratio of the mean gains, and the interval is that of
    # a plain loop over the same resamples (numpy's generator, as the function draws them) with scikit-learn's AUC
    rng = np.random.default_rng(3)
    y = np.array([0] * 30 + [1] * 30)
    runs = [[y * shift + rng.normal(0, 1, 60) for _ in range(2)] for shift in (0.3, 0.8, 1.6)]
    r = ceiling_share(y, *runs, bootstrap=60, seed=7, chunk=25)
    gains = [np.mean([_auc(y, runs[i][k]) - _auc(y, runs[0][k]) for k in range(2)]) for i in (1, 2)]
    assert r["share"] == pytest.approx(gains[0] / gains[1])
    draw = np.random.default_rng(7)
    shares, without = [], 0
    for n in (25, 25, 10):
        for idx in draw.integers(0, 60, (n, 60)):
            g = [np.mean([_auc(y[idx], runs[i][k][idx]) - _auc(y[idx], runs[0][k][idx]) for k in range(2)])
                 for i in (1, 2)]
            if g[1] > 0:
                shares.append(g[0] / g[1])
            else:
                without += 1
    assert r["replicates_without_gain"] == without
    assert r["ci"] == pytest.approx(list(np.percentile(shares, [2.5, 97.5])))


@pytest.mark.slow
def test_a_two_class_model_predicts_and_exports_its_cancer_boxes_only(tmp_path):
    """The ceiling's model (two classes, random weights, every box kept) through the predictor and an ONNX export:
    both return exactly the model's own class-0 boxes and scores, and the benign ones are gone."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from mammo_tl.export.exporter import export_model
    from mammo_tl.export.runtime import load_exported
    from mammo_tl.inference.predictor import MammoPredictor
    from tests.common import tiny_cfg

    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "INPUT.CROP_TO_BREAST", "False"]
    torch.manual_seed(5)
    cfg = tiny_cfg(opts=opts)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("two_class")
    weights = str(tmp_path / "two_class.pth")
    cfg = tiny_cfg(opts=[*opts, "MODEL.WEIGHTS", weights])
    predictor = MammoPredictor(cfg)
    rng = np.random.default_rng(0)
    image = (rng.random((128, 128)) * 4000).astype(np.uint16)
    prepared = predictor.prepare(image)
    with torch.no_grad():
        raw = predictor.model([{"image": prepared.tensor, "height": 128, "width": 128}])[0]["instances"]
    classes = raw.pred_classes.tolist()
    assert 0 in classes and 1 in classes, "random weights at threshold 0 give boxes of both classes"
    boxes, scores = predictor(image)
    keep = raw.pred_classes == 0
    assert scores.tolist() == pytest.approx(raw.scores[keep].tolist())
    np.testing.assert_allclose(boxes, raw.pred_boxes.tensor[keep].numpy(), atol=1e-3)

    config_file = tmp_path / "two_class.yaml"
    config_file.write_text(cfg.dump())
    export_model(str(config_file), "onnx", str(tmp_path / "export"))
    exported = load_exported(str(tmp_path / "export" / "model.onnx"))
    e_boxes, e_scores = exported(image)
    assert len(e_scores) == len(scores) and e_scores.tolist() == pytest.approx(scores.tolist(), abs=1e-3)
    np.testing.assert_allclose(e_boxes, boxes, atol=0.5)


def test_report_curves_draws_runs_still_training(tmp_path):
    """tools/report.py --curves on hand-made run folders: every run's validation_curve.json read back as written
    (a finished run's selection ringed), and a clear error when no run has a curve."""
    import json

    from tests.common import run_in_process

    curves = {"a0": [0.6, 0.62], "a1": [0.58], "o0": [0.7, 0.75, 0.8]}
    for name, values in curves.items():
        run = tmp_path / name
        run.mkdir()
        (run / "validation_curve.json").write_text(json.dumps([
            {"iteration": 300 * (k + 1) - 1, "iterations_trained": 300 * (k + 1), "validation/patient/auc": v,
             "validation/bbox/AP50": 100 * v} for k, v in enumerate(values)]))
    (tmp_path / "o0" / "selection.json").write_text(json.dumps({"selected": {"iterations_trained": 900}}))
    out = tmp_path / "curves"
    r = run_in_process(["tools/report.py", "--output", str(out), "--curves", f"a={tmp_path / 'a0'},{tmp_path / 'a1'}",
                        "--curves", f"o={tmp_path / 'o0'}"])
    assert r.returncode == 0, r.stderr
    assert (out / "learning_curves.png").stat().st_size > 1000
    saved = json.loads((out / "learning_curves.json").read_text())
    assert [p["validation/patient/auc"] for p in saved["o"][str(tmp_path / "o0")]] == curves["o0"]
    assert [p["iterations_trained"] for p in saved["a"][str(tmp_path / "a0")]] == [300, 600]
    (tmp_path / "empty").mkdir()
    bad = run_in_process(["tools/report.py", "--output", str(out), "--curves", f"x={tmp_path / 'empty'}"])
    assert bad.returncode == 2 and "validation_curve.json" in bad.stderr


def test_the_report_says_whether_the_ceiling_stands_above_the_baseline():
    from mammo_tl.evaluation.ceiling import ceiling_verdict

    def results(ci):
        return {"ceiling": {"row": "o", "shares": {}}, "differences": {"o - a": {"auc": {"diff": 0.05, "ci": ci}}}}

    assert ceiling_verdict(results([0.01, 0.09]), "a").startswith("The ceiling stands above a: AUC +0.050 [+0.010,")
    low = ceiling_verdict(results([-0.02, 0.09]), "a")
    assert low.startswith("The ceiling does not stand above a here") and "the shares below mean nothing" in low
    assert "not known" in ceiling_verdict({"ceiling": {"row": "o"}, "differences": {}}, "a")
