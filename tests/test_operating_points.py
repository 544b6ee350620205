"""Operating points: chosen on validation patients (by hand and against scikit-learn), stored keyed by the
weights, refused on test data, reported by --eval-only, the report and the demo's flow."""
import copy
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

from mammo_tl.data.datasets.common import save_records
from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic
from mammo_tl.evaluation.operating_points import OperatingPointError, choose_operating_points, load_operating_points
from mammo_tl.files import sha256_file
from tests.common import REPO, TINY_SPEC, config_path, run_in_process
from tests.test_records import TRAIN_OPTS


def test_points_by_hand():
    # 4 positive patients (scores .9 .8 .6 .3), 6 negative (.7 .5 .4 .2 .1 .05)
    labels = {f"p{i}": 1 for i in range(4)} | {f"n{i}": 0 for i in range(6)}
    scores = dict(zip(labels, [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05]))
    pts = choose_operating_points(scores, labels, sensitivities=(0.75, 1.0), specificities=(0.5, 1.0))
    # sensitivity >= 0.75 needs 3 positives above t: t < .6; the highest such threshold between distinct
    # scores is (.5 + .6) / 2, with one negative (.7) above it and five below
    assert pts["sensitivity_0.75"]["threshold"] == pytest.approx(0.55)
    assert pts["sensitivity_0.75"]["validation"] == {"sensitivity": 0.75, "specificity": 5 / 6,
                                                         "accuracy": 0.8, "tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert pts["sensitivity_1"]["threshold"] == pytest.approx(0.25)  # between .2 and .3
    # specificity >= 0.5: at most 3 negatives above t; at t = .15 the 4th (.2) is above, at .25 (between .2
    # and .3) it is not: the lowest such threshold, recalling all 4 positives
    assert pts["specificity_0.5"]["threshold"] == pytest.approx(0.25)
    assert pts["specificity_0.5"]["validation"]["specificity"] == 0.5
    assert pts["specificity_0.5"]["validation"]["sensitivity"] == 1.0
    assert pts["specificity_1"]["threshold"] == pytest.approx(0.75)  # between .7 and .8
    assert pts["paper_0.5"]["threshold"] == 0.5 and pts["paper_0.5"]["validation"]["tp"] == 3
    # Youden's J against scikit-learn's ROC curve
    from sklearn.metrics import roc_curve

    y = np.array([labels[k] for k in scores])
    fpr, tpr, _ = roc_curve(y, np.array(list(scores.values())))
    v = pts["youden"]["validation"]
    assert v["sensitivity"] + v["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_unreachable_target_and_one_class():
    labels, scores = {"a": 1, "b": 0}, {"a": 0.4, "b": 0.4}
    pts = choose_operating_points(scores, labels, sensitivities=(1.0,), specificities=(1.0,))
    assert pts["sensitivity_1"]["validation"]["specificity"] == 0.0  # reachable only by recalling everyone
    with pytest.raises(OperatingPointError, match="positive and negative patients"):
        choose_operating_points({"a": 0.1}, {"a": 1})


def test_stored_points_are_keyed_by_the_weights(tmp_path):
    w, other = tmp_path / "model_final.pth", tmp_path / "other.pth"
    w.write_bytes(b"weights")
    other.write_bytes(b"other weights")
    path = tmp_path / "operating_points.json"
    path.write_text(json.dumps({"weights_sha256": sha256_file(w), "points": {"youden": {"threshold": 0.3}}}))
    assert load_operating_points(str(path), str(w))["points"]["youden"]["threshold"] == 0.3
    with pytest.raises(OperatingPointError, match="chosen for other weights"):
        load_operating_points(str(path), str(other))
    path.write_text(json.dumps({"weights_sha256": "x", "points": {"youden": {"threshold": float("nan")}}}))
    with pytest.raises(OperatingPointError, match="no finite threshold"):
        load_operating_points(str(path))


@pytest.mark.parametrize(("threshold", "message"), [
    (True, r"point 'youden' has no finite threshold \(it is True\)"),  # JSON true, an int to Python
    (1e300, r"point 'youden' has threshold 1e\+300, outside \[-1, 1\]"),
    (1.5, r"point 'youden' has threshold 1\.5, outside \[-1, 1\]"),
    ("0.5", r"no finite threshold \(it is '0\.5'\)"),
])
def test_thresholds_must_be_numbers_within_the_scores_range(tmp_path, threshold, message):
    path = tmp_path / "operating_points.json"
    path.write_text(json.dumps({"weights_sha256": "x", "points": {"youden": {"threshold": threshold}}}))
    with pytest.raises(OperatingPointError, match=message):
        load_operating_points(str(path))
    # what choose_operating_points writes: a threshold below every score (lowest - 1) recalls everyone
    low = choose_operating_points({"a": 0.0, "b": 0.0}, {"a": 1, "b": 0}, sensitivities=(1.0,))
    path.write_text(json.dumps({"weights_sha256": "x", "points": low}))
    assert load_operating_points(str(path))["points"]["sensitivity_1"]["threshold"] == -1.0


@pytest.mark.slow
def test_choose_on_validation_evaluate_and_report(tiny_datasets, tmp_path):
    """tools/operating_points.py as typed, then --eval-only and the report at the stored points."""
    from mammo_tl.engine.launcher import main
    from mammo_tl.evaluation.report import make_report

    paths = {}
    for split in ("train", "test"):
        paths[split] = str(tmp_path / f"{split}.json")
        save_records(copy.deepcopy(DatasetCatalog.get(f"mammo_synth_tiny_{split}")), paths[split])
    generate(str(tmp_path / "val"), SyntheticSpec(num_positive_patients=3, num_negative_patients=3, seed=12,
                                                  **TINY_SPEC), progress=False)
    paths["val"] = str(tmp_path / "val.json")
    save_records(load_synthetic(str(tmp_path / "val")), paths["val"])
    register = f"['op_train={paths['train']}', 'op_test={paths['test']}', 'op_val={paths['val']}']"
    opts = [*TRAIN_OPTS, "DATASETS.REGISTER_JSON", register, "DATASETS.TRAIN", "('op_train',)",
            "DATASETS.TEST", "('op_test',)", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    run = tmp_path / "run"
    main(default_argument_parser().parse_args(["--config-file", config_path("synthetic/a_positives_only.yaml"),
                                               "OUTPUT_DIR", str(run), "SOLVER.MAX_ITER", "2", *opts]))
    weights = str(run / "model_final.pth")
    cmd = [sys.executable, "tools/operating_points.py", "--config-file", config_path("synthetic/a_positives_only.yaml"),
           "--dataset", "op_val", *opts, "MODEL.WEIGHTS", weights]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.load(open(run / "operating_points.json"))
    assert stored["validation_dataset"] == "op_val" and stored["validation_patients"] == 6
    assert stored["weights_sha256"] == sha256_file(weights)
    assert {"paper_0.5", "sensitivity_0.9", "sensitivity_0.95", "specificity_0.9", "youden"} <= set(stored["points"])
    for p in stored["points"].values():
        v = p["validation"]
        assert v["tp"] + v["fn"] == 3 and v["tn"] + v["fp"] == 3

    refused = run_in_process(cmd[1:4] + ["--dataset", "op_test"] + cmd[6:])  # in this process: a start-up saved
    assert refused.returncode != 0 and "never on the test set" in refused.stderr

    res = main(default_argument_parser().parse_args(
        ["--config-file", config_path("synthetic/a_positives_only.yaml"), "--eval-only", "OUTPUT_DIR",
         str(tmp_path / "eval"), *opts, "MODEL.WEIGHTS", weights]))
    youden = res["patient@youden"]
    assert youden["threshold"] == pytest.approx(stored["points"]["youden"]["threshold"])
    # the test figures at that threshold, by hand from the evaluator's per-patient scores
    with open(tmp_path / "eval" / "inference" / "op_test" / "patients.csv") as f:
        rows = list(csv.DictReader(f))
    t = youden["threshold"]
    pos = [float(r["score"]) for r in rows if r["label"] == "1"]
    neg = [float(r["score"]) for r in rows if r["label"] == "0"]
    assert youden["sensitivity"] == pytest.approx(sum(s > t for s in pos) / len(pos))
    assert youden["specificity"] == pytest.approx(sum(s <= t for s in neg) / len(neg))

    results, md = make_report({"a": str(run)}, str(tmp_path / "report"), bootstrap=20)
    test_points = results["runs"]["a"]["operating_points"]["test"]
    assert test_points["youden"]["sensitivity"] == pytest.approx(youden["sensitivity"])
    assert "never on the test patients" in md and "| a | youden |" in md


def test_a_point_below_every_score_is_said_to_recall_everyone(tmp_path, tmp_path_factory, capsys):
    """A stored threshold of -1.0 (what choose_operating_points writes where only recalling everyone reaches a
    target) was reported as "recall above -1": predict now says that every patient is recalled."""
    import cv2

    from mammo_tl.inference.command import run_predict
    from mammo_tl.evaluation.operating_points import describe_threshold
    from tests.common import breast_phantom
    from tests.test_weights import tiny_config_file, tiny_weights

    assert describe_threshold(0.42) == "recall above 0.42"
    assert describe_threshold(-1.0) == "threshold -1, below every score: recalls every patient and every breast"
    weights = tiny_weights(tmp_path_factory)
    points = tmp_path / "points.json"
    low = choose_operating_points({"a": 0.0, "b": 0.0}, {"a": 1, "b": 0}, sensitivities=(1.0,))
    points.write_text(json.dumps({"weights_sha256": sha256_file(weights), "points": low}))
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        cv2.imwrite(str(src / f"P{k}_L_CC.png"), breast_phantom(seed=k))
    run_predict(tiny_config_file(tmp_path_factory), [str(src)], str(tmp_path / "out"), ["MODEL.DEVICE", "cpu"],
                min_score=0.0, workers=0, operating_point="sensitivity_1", operating_points=str(points))
    out = capsys.readouterr().out
    assert ("at operating point sensitivity_1 (threshold -1, below every score: recalls every patient and every "
            "breast): 2 of 2 patient(s) recalled") in out
    assert "recall above -1" not in out
