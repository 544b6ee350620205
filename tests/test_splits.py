"""Patient-disjoint splits (official, k-fold, random) and the pooled evaluation of a cross-validation, with
expected sizes and metrics computed by hand or with scikit-learn."""
import csv
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from sklearn.metrics import roc_auc_score

from mammo_tl.data.datasets.common import DatasetError, save_records
from mammo_tl.data.splits import kfold_split, official_split, random_split, summarize
from mammo_tl.experiments.cross_validation import CrossValidationError, fold_overrides, pool_folds, run_folds
from mammo_tl.experiments.rows import expected_config
from tests.common import REPO, config_path


def _records(patients, split=None):
    """patients: id -> (number of positive images, number of negative images)."""
    out = []
    for pid, (n_pos, n_neg) in patients.items():
        for k in range(n_pos + n_neg):
            out.append({"file_name": f"{pid}_{k}.png", "height": 100, "width": 80, "image_id": f"{pid}_{k}",
                        "patient_id": pid, "laterality": "LR"[k % 2], "view": "CC",
                        "annotations": [{"bbox": [10.0, 10.0, 30.0, 30.0], "bbox_mode": 0, "category_id": 0}]
                        if k < n_pos else []})
            if split:
                out[-1]["split"] = split[pid]
    return out


def _patients(records):
    return {r["patient_id"] for r in records}


def test_kfold_is_stratified_patient_disjoint_and_seeded():
    # 5 positive patients (1 positive + 1 negative image each), 7 negative patients (2 negative images each)
    patients = {**{f"p{i}": (1, 1) for i in range(5)}, **{f"n{i}": (0, 2) for i in range(7)}}
    records = _records(patients)
    folds = kfold_split(records, 3, seed=0)
    assert len(folds) == 3
    # positives dealt over 3 folds: 2, 2, 1; the 7 negatives continue the turn from fold 2: 3, 2, 2
    pos_per_fold = sorted(sum(p.startswith("p") for p in _patients(test)) for _, test in folds)
    neg_per_fold = sorted(sum(p.startswith("n") for p in _patients(test)) for _, test in folds)
    assert pos_per_fold == [1, 2, 2] and neg_per_fold == [2, 2, 3]
    assert [len(_patients(test)) for _, test in folds] == [4, 4, 4]
    tested = Counter(p for _, test in folds for p in _patients(test))
    assert set(tested) == set(patients) and set(tested.values()) == {1}
    for train, test in folds:
        assert not _patients(train) & _patients(test)
        assert len(train) + len(test) == len(records) == 24
        assert len(test) == 2 * len(_patients(test))  # every patient here has 2 images
    again = kfold_split(records, 3, seed=0)
    assert [[r["image_id"] for r in t] for _, t in again] == [[r["image_id"] for r in t] for _, t in folds]
    other = kfold_split(records, 3, seed=1)
    assert [_patients(t) for _, t in other] != [_patients(t) for _, t in folds]


def test_kfold_refusals():
    records = _records({"p0": (1, 0), "p1": (1, 0), "n0": (0, 1), "n1": (0, 1), "n2": (0, 1)})
    with pytest.raises(DatasetError, match="at least 2"):
        kfold_split(records, 1)
    with pytest.raises(DatasetError, match="3 folds need at least 3 positive patients.*hold 2"):
        kfold_split(records, 3)
    with pytest.raises(DatasetError, match="no positive|positive patients.*hold 0"):
        kfold_split(_records({"n0": (0, 1), "n1": (0, 1)}), 2)


def test_random_split_sizes_by_hand():
    # 10 positive patients with 2 images (one positive), 20 negative patients with 3 images
    records = _records({**{f"p{i}": (1, 1) for i in range(10)}, **{f"n{i}": (0, 3) for i in range(20)}})
    train, test = random_split(records, 0.25, seed=0)
    # test: round(2.5) = 3 positive patients (halves round up), round(5) = 5 negative ones
    assert summarize(test) == {"images": 3 * 2 + 5 * 3, "positive_images": 3, "negative_images": 3 + 15,
                               "patients": 8, "positive_patients": 3, "negative_patients": 5}
    assert summarize(train) == {"images": 7 * 2 + 15 * 3, "positive_images": 7, "negative_images": 7 + 45,
                                "patients": 22, "positive_patients": 7, "negative_patients": 15}
    assert not _patients(train) & _patients(test)
    assert _patients(random_split(records, 0.25, seed=0)[1]) == _patients(test)
    assert _patients(random_split(records, 0.25, seed=3)[1]) != _patients(test)


@pytest.mark.parametrize("fraction, match", [(0.01, "puts 0 in the test set"), (0.97, "puts 10 in the test set"),
                                             (0.0, "between 0 and 1"), (1.0, "between 0 and 1")])
def test_random_split_refusals(fraction, match):
    records = _records({**{f"p{i}": (1, 0) for i in range(10)}, **{f"n{i}": (0, 1) for i in range(40)}})
    with pytest.raises(DatasetError, match=match):
        random_split(records, fraction)


def test_official_split():
    split = {"s1": "training", "s2": "training", "s3": "test"}
    records = _records({"s1": (1, 3), "s2": (0, 4), "s3": (2, 2)}, split)
    train, test = official_split(records)
    assert (len(train), len(test)) == (8, 4) and _patients(train) == {"s1", "s2"} and _patients(test) == {"s3"}
    del records[5]["split"]
    with pytest.raises(DatasetError, match=r"record 5 \(s2_1\) has no 'split' key"):
        official_split(records, source="records.json")
    records[5]["split"] = "validation"
    with pytest.raises(DatasetError, match="record 5 .* split 'validation'"):
        official_split(records)
    records[5]["split"] = "test"  # s2 now on both sides
    with pytest.raises(DatasetError, match="s2"):
        official_split(records)


@pytest.mark.slow
def test_split_tool_refuses_records_without_split(tmp_path):
    records = _records({"a": (1, 1), "b": (0, 2)})
    save_records(records, str(tmp_path / "records.json"))
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "split_dataset.py"), "official", "--records",
                        str(tmp_path / "records.json"), "--output", str(tmp_path / "split")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0
    assert "record 0 (a_0) has no 'split' key" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "split").exists()


# ------------------------------------------------------------------------------------ cross-validation
FAKE_TRAIN = r"""
import ast, json, os, sys
argv = sys.argv[1:]
start = argv.index("--config-file") + 2 + (argv[argv.index("--config-file") + 2] == "--resume")
opts = dict(zip(argv[start::2], argv[start + 1::2]))
out = opts["OUTPUT_DIR"]
test = ast.literal_eval(opts["DATASETS.TEST"])[0]
plan = json.load(open(os.environ["FAKE_PLAN"]))
os.makedirs(os.path.join(out, "inference", test), exist_ok=True)
json.dump(argv, open(os.path.join(out, "argv.json"), "w"))
open(os.path.join(out, "model_final.pth"), "wb").close()
json.dump({"bbox": {"AP50": plan["ap50"][test]}}, open(os.path.join(out, "inference", "eval_results.json"), "w"))
json.dump(plan["dets"][test], open(os.path.join(out, "inference", test, "coco_instances_results.json"), "w"))
open(os.path.join(out, "inference", test, "patients.csv"), "w").write("patient_id,label,score\n")
"""


def _box(pid, k, lat, box=None):
    return {"file_name": f"{pid}{k}.png", "height": 200, "width": 200, "image_id": f"{pid}{k}", "patient_id": pid,
            "laterality": lat, "view": "CC",
            "annotations": [{"bbox": box, "bbox_mode": 0, "category_id": 0}] if box else []}


@pytest.fixture
def cv_tree(tmp_path):
    """Two folds. fold0 tests A (a1 lesion [10, 10, 50, 50], a2 negative) and B (b1); fold1 tests C (c1 lesion
    [100, 100, 140, 140]) and D (d1, d2). Boxes (XYWH) and scores as COCOEvaluator writes them."""
    folds = tmp_path / "folds"
    tests = {0: [_box("A", 1, "L", [10, 10, 50, 50]), _box("A", 2, "R"), _box("B", 1, "L")],
             1: [_box("C", 1, "R", [100, 100, 140, 140]), _box("D", 1, "L"), _box("D", 2, "R")]}
    for k, test in tests.items():
        save_records(test, str(folds / f"fold{k}" / "test.json"))
        save_records(tests[1 - k], str(folds / f"fold{k}" / "train.json"))

    def det(image_id, box, score):
        return {"image_id": image_id, "category_id": 0, "bbox": box, "score": score}

    plan = {"ap50": {"inbreast_test_fold0": 40.0, "inbreast_test_fold1": 60.0},
            "dets": {"inbreast_test_fold0": [det("A1", [12, 12, 38, 38], 0.9), det("B1", [0, 0, 20, 20], 0.3)],
                     "inbreast_test_fold1": [det("C1", [0, 0, 30, 30], 0.6), det("C1", [100, 100, 40, 40], 0.4),
                                             det("D1", [5, 5, 10, 10], 0.7)]}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    return tmp_path


def test_cross_validation_runs_each_fold_then_pools_them(cv_tree, monkeypatch):
    monkeypatch.setenv("FAKE_PLAN", str(cv_tree / "plan.json"))
    config = config_path("inbreast/d_tl_similarity.yaml")
    out = str(cv_tree / "cv")
    fake = [sys.executable, str(cv_tree / "fake_train.py")]
    runs = run_folds(config, str(cv_tree / "folds"), out, ["SOLVER.MAX_ITER", "2"], train_command=fake)
    assert [r["k"] for r in runs] == [0, 1]
    argv = json.load(open(os.path.join(out, "fold1", "argv.json")))
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert argv[:2] == ["--config-file", config] and opts["SOLVER.MAX_ITER"] == "2"
    assert opts["DATASETS.TRAIN"] == "('inbreast_train_fold1',)" and opts["OUTPUT_DIR"] == os.path.join(out, "fold1")
    assert opts["DATASETS.REGISTER_JSON"] == repr([f"inbreast_train_fold1={cv_tree}/folds/fold1/train.json",
                                                   f"inbreast_test_fold1={cv_tree}/folds/fold1/test.json"])

    # the config each fold saved, as tools/train_net.py does
    for k in (0, 1):
        fold_opts = ["SOLVER.MAX_ITER", "2"] + fold_overrides(("inbreast_train", "inbreast_test"), k,
                                                               f"{cv_tree}/folds/fold{k}/train.json",
                                                               f"{cv_tree}/folds/fold{k}/test.json", f"{out}/fold{k}")
        (cv_tree / "cv" / f"fold{k}" / "config.yaml").write_text(expected_config(config, fold_opts).dump())

    # finished folds are reused: a training command that would fail is never run
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert run_folds(config, str(cv_tree / "folds"), out, ["SOLVER.MAX_ITER", "2"], train_command=failing) == runs
    with pytest.raises(CrossValidationError, match=r"fold0 holds a run of another config .*'SOLVER.MAX_ITER'"):
        run_folds(config, str(cv_tree / "folds"), out, ["SOLVER.MAX_ITER", "3"], train_command=failing)
    # the device is not part of what a fold was made from: it may resume on another machine
    assert run_folds(config, str(cv_tree / "folds"), out, ["SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cuda"],
                     train_command=failing) == runs
    test_json = cv_tree / "folds" / "fold1" / "test.json"
    test_json.write_text(test_json.read_text() + " ")
    with pytest.raises(CrossValidationError, match="fold1 was trained on another test.json"):
        run_folds(config, str(cv_tree / "folds"), out, ["SOLVER.MAX_ITER", "2"], train_command=failing)
    with pytest.raises(CrossValidationError, match="fold 0: training exited with status 3"):
        run_folds(config, str(cv_tree / "folds"), str(cv_tree / "other"), [], train_command=failing)

    res = pool_folds(runs, out, threshold=0.5, bootstrap=0)["inbreast_test_all_folds"]
    # patient scores (highest box): A 0.9, B 0.3, C 0.6, D 0.7; A and C positive
    labels, scores = [1, 0, 1, 0], [0.9, 0.3, 0.6, 0.7]
    p = res["patient"]
    assert p["auc"] == pytest.approx(roc_auc_score(labels, scores)) == pytest.approx(0.75)
    assert (p["tp"], p["fn"], p["tn"], p["fp"], p["num_patients"]) == (2, 0, 1, 1, 4)
    assert (p["sensitivity"], p["specificity"], p["accuracy"]) == (1.0, 0.5, 0.75)
    # boxes by score over 6 images and 2 lesions: a1 hit, d1 FP, c1 FP, c1 hit, b1 FP ->
    # sensitivity 0.5 up to 2/6 FP per image, where the second lesion is hit
    assert res["froc"]["sens@0.25"] == 0.5 and res["froc"]["sens@0.5"] == 1.0
    assert res["froc"]["cpm"] == pytest.approx((0.5 + 0.5 + 5 * 1.0) / 7)
    assert res["bbox"]["AP50"] == 50.0 and res["bbox_folds"]["fold1"]["AP50"] == 60.0
    assert res["breast"]["num_patients"] == 6  # A/L, A/R, B/L, C/R, D/L, D/R

    with open(os.path.join(out, "inference", "inbreast_test_all_folds", "patients.csv")) as f:
        rows = {r["patient_id"]: (int(r["label"]), float(r["score"])) for r in csv.DictReader(f)}
    assert rows == {"A": (1, 0.9), "B": (0, 0.3), "C": (1, 0.6), "D": (0, 0.7)}
    from mammo_tl.evaluation.report import load_run

    row = load_run(out)["row"]  # tools/report.py reads the pooled evaluation as a run
    assert row["ap50"] == pytest.approx(0.5) and row["num_patients"] == 4 and row["auc"] == pytest.approx(0.75)


def test_cross_validation_refusals(cv_tree):
    config = config_path("inbreast/d_tl_similarity.yaml")
    fake = [sys.executable, str(cv_tree / "fake_train.py")]
    with pytest.raises(CrossValidationError, match="OUTPUT_DIR.*set for every fold"):
        run_folds(config, str(cv_tree / "folds"), str(cv_tree / "cv"), ["OUTPUT_DIR", "x"], train_command=fake)
    with pytest.raises(CrossValidationError, match="not found"):
        run_folds(config, str(cv_tree / "nothing"), str(cv_tree / "cv"), [], train_command=fake)
    os.rename(cv_tree / "folds" / "fold1", cv_tree / "folds" / "fold2")
    with pytest.raises(CrossValidationError, match=r"folds \[0, 2\] are not numbered 0..1"):
        run_folds(config, str(cv_tree / "folds"), str(cv_tree / "cv"), [], train_command=fake)
    two_tests = cv_tree / "two_tests.yaml"
    two_tests.write_text(f'_BASE_: "{config}"\nDATASETS:\n  TEST: ("a", "b")\n')
    with pytest.raises(CrossValidationError, match="must name one dataset each"):
        run_folds(str(two_tests), str(cv_tree / "folds"), str(cv_tree / "cv"), [], train_command=fake)
