"""Records where they enter (records JSON, converters, synthetic sets): one validation, errors naming the
file and the record; datasets registered by DATASETS.REGISTER_JSON train and evaluate; preflight checks."""
import copy
import json
import logging
import math
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

from mammo_tl.data.datasets import DatasetError, SkipReport, load_csv_dataset, load_vindr_mammo
from mammo_tl.data.datasets.common import load_records, register_json_datasets, save_records, validate_records
from mammo_tl.engine.preflight import ConfigError
from tests.common import TINY_OPTS, config_path
from tests.dataset_fixtures import make_vindr

TRAIN_OPTS = [*TINY_OPTS, "SOLVER.WARMUP_ITERS", "0", "TEST.PATIENT.BOOTSTRAP", "0"]


def _record(**kw):
    r = {"file_name": "img.png", "height": 100, "width": 80, "image_id": "a", "patient_id": "P1",
         "laterality": "L", "view": "CC", "annotations": [{"bbox": [10, 20, 30, 40], "bbox_mode": 0, "category_id": 0}]}
    r.update(kw)
    return r


@pytest.mark.parametrize("bad, message", [
    ({"annotations": [{"bbox": [10, float("nan"), 30, 40], "bbox_mode": 0}]}, "not finite"),
    ({"annotations": [{"bbox": [30, 20, 10, 40], "bbox_mode": 0}]}, "empty or inverted"),
    ({"annotations": [{"bbox": [90, 20, 120, 40], "bbox_mode": 0}]}, "outside the 80x100 image"),
    ({"annotations": [{"bbox": [1, 2, 3], "bbox_mode": 0}]}, "is not 4 numbers"),
    ({"annotations": [{"bbox": [1, 2, 3, 4], "bbox_mode": 9}]}, "is not a BoxMode"),
    ({"annotations": [{"bbox": [1, 2, 3, 4], "bbox_mode": 0, "category_id": 3}]}, "category_id 3"),
    ({"patient_id": " "}, "empty patient_id"),
    ({"laterality": "X"}, "laterality 'X'"),
    ({"height": 0}, "height 0"),
    ({"annotations": None}, "annotations is a NoneType"),
])
def test_bad_records_are_refused_naming_file_and_record(bad, message):
    records = [_record(image_id="ok", file_name="ok.png"), _record(**bad)]
    with pytest.raises(DatasetError) as e:
        validate_records(records, "mine.json")
    assert "mine.json: record 1 (img.png)" in str(e.value) and message in str(e.value)


def test_missing_annotations_key_is_refused_with_the_hint():
    r = _record()
    del r["annotations"]
    with pytest.raises(DatasetError,
                       match=r"record 0 \(img.png\): missing key\(s\) \['annotations'\].*annotations: \[\]"):
        validate_records([r], "mine.json")


def test_boxes_past_the_edge_are_clipped_and_counted_xywh_converted():
    report = SkipReport("x")
    records = [_record(annotations=[{"bbox": [-5, 90, 20, 30], "bbox_mode": 1},  # XYWH: x 15 wide, y to 120
                                    {"bbox": [1, 2, 3, 4], "bbox_mode": 0}])]
    validate_records(records, "mine.json", report=report)
    assert records[0]["annotations"][0]["bbox"] == [0.0, 90.0, 15.0, 100.0]
    assert records[0]["annotations"][0]["bbox_mode"] == 0
    assert report.notes["box clipped to the image"] == 1


def test_records_file_errors_name_the_file(tmp_path):
    truncated = tmp_path / "train.json"
    truncated.write_text('[{"file_name": "a.png", "height": 10')
    with pytest.raises(DatasetError, match=f"{truncated}: not a valid records JSON"):
        load_records(str(truncated))
    with pytest.raises(DatasetError, match="records file not found"):
        load_records(str(tmp_path / "nope.json"))


def test_relative_paths_resolve_against_the_records_file_and_save_round_trips(tmp_path, monkeypatch):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.png").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.png").write_bytes(b"x")
    path = tmp_path / "data" / "records.json"
    recs = [_record(file_name="images/a.png"), _record(file_name=str(elsewhere / "b.png"), image_id="b")]
    path.write_text(json.dumps(recs))
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    loaded = load_records(str(path))
    assert loaded[0]["file_name"] == str(tmp_path / "data" / "images" / "a.png")
    assert loaded[1]["file_name"] == str(elsewhere / "b.png")
    # saved again: inside the file's folder relative, elsewhere absolute
    save_records(loaded, str(path))
    raw = json.loads(path.read_text())
    assert raw[0]["file_name"] == os.path.join("images", "a.png") and raw[1]["file_name"] == str(elsewhere / "b.png")
    (tmp_path / "data" / "images" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 image files not found.*resolved against its folder"):
        load_records(str(path))


def test_register_json_refuses_one_name_for_two_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        p.write_text("[]")
    register_json_datasets([f"mammo_tl_test_twice={a}"])
    register_json_datasets([f"mammo_tl_test_twice={a}"])  # same file again: fine
    with pytest.raises(DatasetError, match="already registered"):
        register_json_datasets([f"mammo_tl_test_twice={b}"])
    with pytest.raises(DatasetError, match="must be name=path"):
        register_json_datasets(["no_equals_sign"])


def test_csv_converter_errors(tmp_path):
    img = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(img), np.full((50, 40), 1000, np.uint16))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("patient_id,path,laterality,view,label,boxes\nJosé,a.png,L,CC,0,\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=f"{latin}: not UTF-8"):
        load_csv_dataset(str(latin))
    empty = tmp_path / "empty.csv"
    empty.write_text("patient_id,path,laterality,view,label,boxes\n,a.png,L,CC,0,\n")
    with pytest.raises(DatasetError, match="empty.csv row 1: empty patient_id"):
        load_csv_dataset(str(empty))
    # image_id is the row's path: reordering rows cannot give an image another record's id
    two = tmp_path / "two.csv"
    cv2.imwrite(str(tmp_path / "b.png"), np.full((50, 40), 1000, np.uint16))
    rows = ["P1,a.png,L,CC,1,1 2 10 20", "P2,b.png,R,CC,0,"]
    two.write_text("patient_id,path,laterality,view,label,boxes\n" + "\n".join(rows) + "\n")
    first = {r["image_id"]: r["annotations"] for r in load_csv_dataset(str(two))}
    two.write_text("patient_id,path,laterality,view,label,boxes\n" + "\n".join(rows[::-1]) + "\n")
    second = {r["image_id"]: r["annotations"] for r in load_csv_dataset(str(two))}
    assert first == second and len(first["a.png"]) == 1 and first["b.png"] == []


def test_vindr_nan_box_is_a_counted_skip(tmp_path):
    make_vindr(str(tmp_path))
    csv_path = tmp_path / "finding_annotations.csv"
    lines = csv_path.read_text().splitlines()
    a_row = next(i for i, line in enumerate(lines) if f",{'a' * 32}," in line)
    lines[a_row] = lines[a_row].replace("10.5,20.25,30.0,40.75", "nan,20.25,30.0,40.75")
    csv_path.write_text("\n".join(lines) + "\n")
    report = SkipReport("vindr")
    records = load_vindr_mammo(str(tmp_path), report=report)
    assert "a" * 32 not in {r["image_id"] for r in records}
    assert len(report.skipped) == 2  # the NaN box, and the fixture's non-target BI-RADS 4 calcification
    assert any("without a valid box" in reason for _, reason in report.skipped)
    with pytest.raises(DatasetError, match="without a valid box"):
        load_vindr_mammo(str(tmp_path), strict=True)


# --- records JSON through training and evaluation (the prepared-data path) -------------------------------

@pytest.fixture(scope="module")
def records_json(tiny_datasets, tmp_path_factory):
    """The tiny synthetic sets saved as records JSON files, as tools/split_dataset.py writes them."""
    root = tmp_path_factory.mktemp("records")
    paths = {}
    for split in ("train", "test"):
        records = copy.deepcopy(DatasetCatalog.get(f"mammo_synth_tiny_{split}"))
        paths[split] = str(root / f"{split}.json")
        save_records(records, paths[split])
    return paths


def _args(out, records_json, *extra, opts=()):
    return default_argument_parser().parse_args([
        "--config-file", config_path("synthetic/d_tl_similarity.yaml"), *extra, "OUTPUT_DIR", str(out), *TRAIN_OPTS,
        "DATASETS.REGISTER_JSON", f"['rj_train={records_json['train']}', 'rj_test={records_json['test']}']",
        "DATASETS.TRAIN", "('rj_train',)", "DATASETS.TEST", "('rj_test',)", *opts])


def test_register_json_dataset_trains_and_evaluates(records_json, tmp_path):
    """Regression: COCOEvaluator once read the records JSON as a COCO file and died at the first evaluation."""
    from mammo_tl.engine.launcher import main

    main(_args(tmp_path, records_json, opts=["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0"]))
    saved = json.load(open(tmp_path / "inference" / "eval_results.json"))
    ap50 = saved["bbox"]["AP50"]
    assert math.isnan(ap50) or 0.0 <= ap50 <= 100.0
    test = load_records(records_json["test"])
    patients = {r["patient_id"] for r in test}
    positive = {r["patient_id"] for r in test if r["annotations"]}
    p = saved["patient"]
    assert p["num_patients"] == len(patients) == 6
    assert p["tp"] + p["fn"] == len(positive) == 3 and p["tn"] + p["fp"] == 3
    # the COCO file the evaluator built holds exactly the test records' boxes
    coco = json.load(open(tmp_path / "inference" / "rj_test" / "rj_test_coco_format.json"))
    assert len(coco["annotations"]) == sum(len(r["annotations"]) for r in test)


def test_coco_evaluation_never_reuses_another_runs_test_set(records_json, tmp_path):
    """Two evaluations in one process, of different records under one name's output folders: each AP50 is
    that of its own records (ground-truth boxes as predictions give 100, another set's boxes far less)."""
    import torch
    from detectron2.structures import Boxes, Instances

    from mammo_tl.engine import Trainer
    from tests.common import tiny_cfg

    register_json_datasets([f"rj_test={records_json['test']}"])
    test = DatasetCatalog.get("rj_test")
    for k, shift in enumerate((0.0, 40.0)):
        cfg = tiny_cfg(opts=["TEST.PATIENT.BOOTSTRAP", "0"])  # AP50 only: no patient-level intervals
        cfg.OUTPUT_DIR = str(tmp_path / f"run{k}")
        evaluator = Trainer.build_evaluator(cfg, "rj_test")
        evaluator.reset()
        for r in test:
            boxes = torch.tensor([a["bbox"] for a in r["annotations"]], dtype=torch.float32).reshape(-1, 4) + shift
            inst = Instances((r["height"], r["width"]))
            inst.pred_boxes, inst.scores = Boxes(boxes), torch.ones(len(boxes))
            inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long)
            evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
        ap50 = evaluator.evaluate()["bbox"]["AP50"]
        assert ap50 == pytest.approx(100.0) if shift == 0 else ap50 < 1.0


@pytest.mark.parametrize("opts, message", [
    (["DATASETS.TEST", "('no_such_set',)"], "DATASETS.TEST: dataset 'no_such_set' is not registered"),
    (["DATASETS.TRAIN", "('no_such_set',)"], "DATASETS.TRAIN: dataset 'no_such_set' is not registered"),
    (["MODEL.WEIGHTS", "/nowhere/model.pth"], "MODEL.WEIGHTS '/nowhere/model.pth': file not found"),
    (["MODEL.WEIGHTS", "/somewhere/model.pkl"], "a .pkl file is unpickled, which runs any code it holds"),
    (["SOLVER.IMS_PER_BATCH", "3"], "multiple of 2"),
    (["DATASETS.TRAIN", "('rj_test_positives',)"], "needs positive and negative images"),
    (["INPUT.CROP_TO_BREAST", "True", "DATASETS.TRAIN", "('rj_prepared',)"], "INPUT.CROP_TO_BREAST is True"),
])
def test_preflight_fails_before_training_naming_the_key(records_json, tmp_path, opts, message):
    from mammo_tl.engine.launcher import main

    positives = [r for r in load_records(records_json["test"]) if r["annotations"]]
    save_records(positives, str(tmp_path / "positives.json"))
    prepared = load_records(records_json["train"])
    for r in prepared:
        r["preprocess"] = {"size": [128, 128], "crop": False, "canonical_flip": False}
    save_records(prepared, str(tmp_path / "prepared.json"))
    register_json_datasets([f"rj_test_positives_{tmp_path.name}={tmp_path / 'positives.json'}",
                            f"rj_prepared_{tmp_path.name}={tmp_path / 'prepared.json'}"])
    opts = [o.replace("rj_test_positives", f"rj_test_positives_{tmp_path.name}")
            .replace("rj_prepared", f"rj_prepared_{tmp_path.name}") for o in opts]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(_args(tmp_path / "out", records_json, opts=["SOLVER.MAX_ITER", "1", *opts]))
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_preflight_refuses_an_unwritable_output_dir(records_json, tmp_path):
    from mammo_tl.engine.launcher import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="OUTPUT_DIR .*: not a writable folder"):
        main(_args(blocker / "out", records_json, opts=["SOLVER.MAX_ITER", "1"]))


def test_preflight_warns_when_train_and_test_share_patients(records_json, tmp_path, caplog):
    from mammo_tl.engine.launcher import setup
    from mammo_tl.engine.preflight import preflight

    n_train = len(load_records(records_json["train"]))
    cfg = setup(_args(tmp_path, records_json, opts=["DATASETS.TEST", "('rj_train',)"]))
    with caplog.at_level(logging.WARNING, logger="mammo_tl.engine.preflight"):
        assert preflight(cfg) == {"rj_train": n_train}
    assert "'rj_train' is in both DATASETS.TRAIN and DATASETS.TEST" in caplog.text
    # the same images under another name: caught by patient
    register_json_datasets([f"rj_train_copy={records_json['train']}"])
    cfg = setup(_args(tmp_path, records_json, opts=["DATASETS.TEST", "('rj_train_copy',)"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mammo_tl.engine.preflight"):
        preflight(cfg)
    n_patients = len({r["patient_id"] for r in load_records(records_json["train"])})
    assert f"shares {n_patients} patient(s) with DATASETS.TRAIN" in caplog.text
