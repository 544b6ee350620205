"""K-fold cross-validation: train and evaluate every fold of ``tools/split_dataset.py kfold``, each in its own
training process, then pool the test patients of all folds into one evaluation laid out like a run's.

Layout of OUTPUT (``tools/report.py --run NAME=OUTPUT`` reads it like any run)::

    fold<k>/                          fold k's OUTPUT_DIR (checkpoints, log.txt, inference/<test>_fold<k>/)
    fold<k>/cross_validation.json     hashes of the fold's train.json and test.json it was trained on
    inference/<test>_all_folds/       patients.csv, patient_metrics.json, ROC/FROC of the pooled test patients
    inference/eval_results.json       {<test>_all_folds: bbox AP50 (mean over folds), bbox_folds, patient, ...}

Each fold trains in its own process (tools/train_net.py's command line). A fold that finished is reused, and an
interrupted one resumed, only while its saved config.yaml equals the one asked for (MODEL.DEVICE aside) and its
fold files are the ones it was trained on; otherwise it is refused, naming what differs.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from ..data.records import CLASS_NAME, load_records
from ..files import atomic_write_json, sha256_file
from ..evaluation.evaluators import PatientEvaluator
from .rows import TRAIN_COMMAND, config_differences, expected_config

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)
FOLD_DIR = re.compile(r"^fold(\d+)$")
MARKER = "cross_validation.json"
RESERVED_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "DATASETS.REGISTER_JSON", "OUTPUT_DIR")


class CrossValidationError(RuntimeError):
    """Folds, config or a fold's run that cannot be cross-validated; the message names the file or fold."""


def find_folds(folds_dir: str) -> list[tuple[int, str, str]]:
    """[(k, train.json, test.json)] of folds_dir/fold<k>/, sorted by k, numbered 0..K-1 without gaps."""
    if not os.path.isdir(folds_dir):
        raise CrossValidationError(f"{folds_dir}: folds folder not found (tools/split_dataset.py kfold writes it)")
    folds = []
    for name in os.listdir(folds_dir):
        m = FOLD_DIR.match(name)
        if not m:
            continue
        paths = [os.path.join(folds_dir, name, f"{side}.json") for side in ("train", "test")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise CrossValidationError(f"{os.path.join(folds_dir, name)}: missing {missing}")
        folds.append((int(m.group(1)), *paths))
    folds.sort()
    numbers = [k for k, _, _ in folds]
    if len(folds) < 2:
        raise CrossValidationError(f"{folds_dir}: expected fold0/ ... fold<K-1>/ with K >= 2, found {len(folds)}")
    if numbers != list(range(len(folds))):
        raise CrossValidationError(f"{folds_dir}: folds {numbers} are not numbered 0..{len(folds) - 1}")
    return folds


def check_folds(folds: Iterable[tuple[int, str, str]]) -> None:
    """Before any training: the folds must be one K-fold split of one set of images, as tools/split_dataset.py
    kfold writes them: every fold holds the same images (train + test), and every image is in exactly one fold's
    test set, so no patient is in two. Folds left by an earlier split into more folds, or of other records, are
    refused here, naming them, instead of after training (pooling would count their patients twice)."""
    from ..data.datasets.common import DatasetError, check_patient_disjoint

    tests, everything = {}, []
    for k, train_json, test_json in folds:
        train, test = (load_records(p, check_files=False) for p in (train_json, test_json))
        tests[f"fold{k}/test.json"] = test
        everything.append((k, {r["image_id"] for r in train} | {r["image_id"] for r in test}))
    k0, images0 = everything[0]
    for k, images in everything[1:]:
        if images != images0:
            raise CrossValidationError(f"fold{k} holds other images than fold{k0} ({len(images ^ images0)} differ, e.g."
                                       f" {sorted(images ^ images0, key=str)[:3]}): the folds are not one split of one "
                                       "set; split again with tools/split_dataset.py kfold into an empty --output")
    tested = [i for test in tests.values() for i in (r["image_id"] for r in test)]
    if len(tested) != len(set(tested)) or set(tested) != images0:
        raise CrossValidationError(f"the folds' test sets do not hold every image once ({len(tested)} test images, "
                                   f"{len(images0)} images): folds of more than one split? Split again with "
                                   "tools/split_dataset.py kfold into an empty --output")
    try:
        check_patient_disjoint(tests)
    except DatasetError as e:
        raise CrossValidationError(f"the folds' test sets share patients, so pooling would count them twice: {e}; "
                                   "split again with tools/split_dataset.py kfold into an empty --output") from None


def check_opts(opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise CrossValidationError(f"config overrides must be KEY VALUE pairs, got {list(opts)}")
    taken = [k for k in opts[::2] if k in RESERVED_KEYS]
    if taken:
        raise CrossValidationError(f"{taken} are set for every fold by the cross-validation (from --folds-dir and "
                                   "--output); leave them out")


def dataset_names(cfg: CfgNode, config_file: str) -> tuple[str, str]:
    """(training set name, test set name) of a config that names exactly one of each."""
    if len(cfg.DATASETS.TRAIN) != 1 or len(cfg.DATASETS.TEST) != 1:
        raise CrossValidationError(f"{config_file}: DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} and DATASETS.TEST "
                                   f"{tuple(cfg.DATASETS.TEST)} must name one dataset each, replaced by each fold's")
    return cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]


def fold_overrides(names: Sequence[str], k: int, train_json: str, test_json: str, out_dir: str) -> list[str]:
    """KEY VALUE overrides that point a config at fold k: its records files under fold-specific names."""
    train, test = (f"{n}_fold{k}" for n in names)
    entries = [f"{train}={os.path.abspath(train_json)}", f"{test}={os.path.abspath(test_json)}"]
    return ["DATASETS.REGISTER_JSON", repr(entries), "DATASETS.TRAIN", repr((train,)),
            "DATASETS.TEST", repr((test,)), "OUTPUT_DIR", out_dir]


def fold_outputs(out_dir: str, test_name: str) -> dict[str, str]:
    """Files a finished fold's evaluation leaves (COCOEvaluator's and PatientEvaluator's)."""
    inference = os.path.join(out_dir, "inference", test_name)
    return {"model": os.path.join(out_dir, "model_final.pth"),
            "eval_results": os.path.join(out_dir, "inference", "eval_results.json"),
            "coco_results": os.path.join(inference, "coco_instances_results.json"),
            "patients": os.path.join(inference, "patients.csv")}


def check_fold_run(out_dir: str, expected_cfg: CfgNode, records: Iterable[str]) -> None:
    """Refuse a fold folder that holds a run of another config (MODEL.DEVICE aside: a fold may resume on
    another machine) or of other fold files; record the fold files' hashes for the next check."""
    saved = os.path.join(out_dir, "config.yaml")
    if os.path.exists(saved):
        diff = [k for k in config_differences(saved, expected_cfg) if k != "MODEL.DEVICE"]
        if diff:
            raise CrossValidationError(f"{out_dir} holds a run of another config (differing keys: {diff[:8]}"
                                       f"{' ...' if len(diff) > 8 else ''}): remove it to train this fold again, "
                                       "or choose another --output")
    marker = os.path.join(out_dir, MARKER)
    hashes = {os.path.basename(p): sha256_file(p) for p in records}
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f).get("records", {})
        changed = sorted(k for k in hashes if done.get(k) != hashes[k])
        if changed:
            raise CrossValidationError(f"{out_dir} was trained on another {' and '.join(changed)} (the folds were "
                                       "split again): remove it to train this fold again, or choose another --output")
    else:
        atomic_write_json({"records": hashes}, marker, indent=1)


def run_folds(config_file: str, folds_dir: str, output: str, opts: Sequence[str] = (),
              train_command: Sequence[str] = TRAIN_COMMAND, extra_args: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train and evaluate each fold in turn (``train_command`` --config-file ... in its own process),
    reusing a finished fold and resuming an interrupted one. Returns [{k, out_dir, dataset, test_name,
    test_json}] of all folds."""
    opts = list(opts)
    check_opts(opts)
    names = dataset_names(expected_config(config_file, opts), config_file)
    folds = find_folds(folds_dir)
    check_folds(folds)
    runs = []
    for k, train_json, test_json in folds:
        out_dir = os.path.join(output, f"fold{k}")
        test_name = f"{names[1]}_fold{k}"
        fold_opts = opts + fold_overrides(names, k, train_json, test_json, out_dir)
        runs.append({"k": k, "out_dir": out_dir, "dataset": names[1], "test_name": test_name, "test_json": test_json})
        os.makedirs(out_dir, exist_ok=True)
        check_fold_run(out_dir, expected_config(config_file, fold_opts), (train_json, test_json))
        if all(os.path.exists(p) for p in fold_outputs(out_dir, test_name).values()):
            logger.info("fold %d: already trained and evaluated in %s with this config, reusing it", k, out_dir)
            continue
        resume = ["--resume"] if os.path.exists(os.path.join(out_dir, "last_checkpoint")) else []
        cmd = [*train_command, *extra_args, "--config-file", config_file, *resume, *fold_opts]
        logger.info("fold %d: %s", k, " ".join(cmd))
        rc = subprocess.run(cmd, check=False).returncode
        if rc != 0:
            raise CrossValidationError(f"fold {k}: training exited with status {rc} (see {out_dir}/log.txt); run the "
                                       "same command again to resume it")
        missing = [p for p in fold_outputs(out_dir, test_name).values() if not os.path.exists(p)]
        if missing:
            raise CrossValidationError(f"fold {k}: training finished without writing {missing}")
    return runs


def read_fold_predictions(coco_results: str,
                          records: Iterable[Mapping]) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """image_id -> (boxes XYXY (n, 4), scores (n,)) from COCOEvaluator's coco_instances_results.json, with an
    empty entry for each test image without a box; refuses boxes of images that are not in ``records``."""
    with open(coco_results) as f:
        dets = json.load(f)
    boxes = {r["image_id"]: [] for r in records}
    scores = {r["image_id"]: [] for r in records}
    for d in dets:
        if d["image_id"] not in boxes:
            raise CrossValidationError(f"{coco_results}: image_id {d['image_id']!r} is not in the fold's test set")
        x, y, w, h = d["bbox"]
        boxes[d["image_id"]].append([x, y, x + w, y + h])
        scores[d["image_id"]].append(d["score"])
    return {i: (np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4), np.asarray(scores[i], dtype=np.float64))
            for i in boxes}


def fold_ap50(eval_results: str, test_name: str) -> float:
    with open(eval_results) as f:
        res = json.load(f)
    res = res.get(test_name, res)
    try:
        return float(res["bbox"]["AP50"])
    except KeyError:
        raise CrossValidationError(f"{eval_results}: no bbox AP50 for {test_name}") from None


def pool_folds(runs: Sequence[Mapping[str, Any]], output: str, threshold: float = 0.5, bootstrap: int = 1000,
               seed: int = 0, name: str | None = None) -> dict[str, Any]:
    """One evaluation of all folds' test patients: each image scored by the model of the fold that tested
    it. Writes OUTPUT/inference/<name>/ (as PatientEvaluator does for a run) and
    OUTPUT/inference/eval_results.json; returns the results dict."""
    name = name or f"{runs[0]['dataset']}_all_folds"
    records, predictions, per_fold = [], {}, {}
    for run in runs:
        fold_records = load_records(run["test_json"], check_files=False)
        outputs = fold_outputs(run["out_dir"], run["test_name"])
        predictions.update(read_fold_predictions(outputs["coco_results"], fold_records))
        records += fold_records
        per_fold[f"fold{run['k']}"] = {"AP50": fold_ap50(outputs["eval_results"], run["test_name"]),
                                       "images": len(fold_records),
                                       "patients": len({r["patient_id"] for r in fold_records})}
    if len({r["patient_id"] for r in records}) != sum(f["patients"] for f in per_fold.values()):
        raise CrossValidationError("the folds' test sets share patients: pooling would count them twice; split "
                                   "again with tools/split_dataset.py kfold")
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=[CLASS_NAME])
    evaluator = PatientEvaluator(name, os.path.join(output, "inference", name), threshold=threshold,
                                 bootstrap=bootstrap, seed=seed)
    evaluator.reset()
    for r in records:
        boxes, scores = predictions[r["image_id"]]
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float64))
        inst.scores = torch.as_tensor(scores, dtype=torch.float64)
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    ap50 = [f["AP50"] for f in per_fold.values()]
    out = {name: {"bbox": {"AP50": float(np.mean(ap50))}, "bbox_folds": per_fold, **results}}
    atomic_write_json(out, os.path.join(output, "inference", "eval_results.json"), indent=1, default=float)
    return out


def cross_validate(config_file: str, folds_dir: str, output: str, opts: Sequence[str] = (),
                   train_command: Sequence[str] = TRAIN_COMMAND, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """run_folds, then pool_folds with the config's TEST.PATIENT settings."""
    runs = run_folds(config_file, folds_dir, output, opts, train_command, extra_args)
    cfg = expected_config(config_file, opts)
    p = cfg.TEST.PATIENT
    return pool_folds(runs, output, threshold=p.THRESHOLD, bootstrap=p.BOOTSTRAP,
                      seed=cfg.SEED if cfg.SEED >= 0 else 0)
