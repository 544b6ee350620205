"""Checks run before the first training iteration (and before --eval-only): everything that would otherwise
fail hours later, at the first evaluation or checkpoint, fails here in seconds, naming the config key or file.

* OUTPUT_DIR can be created and written;
* MODEL.WEIGHTS is empty (training from scratch), a URL detectron2 can fetch, or an existing file;
* every dataset of DATASETS.TRAIN and DATASETS.TEST is registered and non-empty, and one record of each
  (a positive and, with the paired loader, a negative one) goes through the mapper: the image is read;
* every image of every TRAIN and TEST set decodes, at the size its record gives (a bad image anywhere stops
  the run before its first iteration, named);
* the paired loader has positive and negative images; the positives-only loader has positives;
* every evaluator of DATASETS.TEST is built (the COCO conversion of the test records included), and the
  patient evaluator finds patient_id and laterality on every test record;
* every training box's category indexes one of MODEL.ROI_HEADS.NUM_CLASSES;
* with TEST.EVAL_PERIOD > 0 a validation set is named (DATASETS.VALIDATION), is no test set, shares no patient with
  one and holds cancer boxes only;
* images prepared by tools/prepare_dataset.py were prepared with the crop and flip the config names
  (INPUT.CROP_TO_BREAST, INPUT.CANONICAL_FLIP), which tools/predict.py applies to new images.

Warnings (not errors): a dataset in both TRAIN and TEST, patients shared by TRAIN and TEST (ids compared as splits
compare them, case and white space aside: mammo_tl.data.datasets.common.patient_key), a test set with
only one class of patient (AUC undefined), images prepared at another size than INPUT.FIXED_SIZE.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detectron2.data import DatasetCatalog

from ..files import writable_folder_problem

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)
URL_PREFIXES = ("detectron2://", "https://", "http://", "catalog://", "manifold://")


class ConfigError(ValueError):
    """A config that cannot train or evaluate; the message names the key (and file) at fault."""


def check_output_dir(path: str) -> None:
    if not path:
        raise ConfigError("OUTPUT_DIR is empty: name a folder for checkpoints and results")
    problem = writable_folder_problem(path)
    if problem:
        raise ConfigError(f"OUTPUT_DIR {path!r}: {problem}")


def check_weights_source(weights: str, trusted_pickle: bool = False) -> None:
    from ..checkpoint import is_model_zoo_url

    if weights.endswith(".pkl") and not trusted_pickle and not is_model_zoo_url(weights):
        raise ConfigError(f"MODEL.WEIGHTS {weights!r}: a .pkl file is unpickled, which runs any code it holds; "
                          "only detectron2's model zoo is read unless MODEL.WEIGHTS_TRUSTED_PICKLE True. Better: "
                          "tools/convert_weights.py --trusted IN.pkl OUT.pth once, then use OUT.pth")
    if not weights or weights.startswith(URL_PREFIXES):
        return
    if not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS {weights!r}: file not found (a local checkpoint, a detectron2:// or "
                          "https:// URL, or empty to train from random initialisation)")


def _records(key, name):
    if name not in DatasetCatalog:
        known = sorted(DatasetCatalog.keys())
        builtin = ("coco_", "lvis_", "voc_", "cityscapes_", "ade20k_", "keypoints_")
        mine = [k for k in known if not k.startswith(builtin)]
        raise ConfigError(f"{key}: dataset {name!r} is not registered. For a records JSON add "
                          f"'{name}=path/records.json' to DATASETS.REGISTER_JSON; registered here: {mine}")
    try:
        records = DatasetCatalog.get(name)
    except Exception as e:
        raise ConfigError(f"{key}: dataset {name!r} cannot be loaded: {type(e).__name__}: {e}") from e
    if not records:
        raise ConfigError(f"{key}: dataset {name!r} holds no images")
    return records


def _map_one(mapper, record, key, name):
    try:
        mapper(record)
    except Exception as e:
        raise ConfigError(f"{key}: dataset {name!r}: image {record.get('file_name')!r} cannot be read or mapped "
                          f"({type(e).__name__}: {e})") from e


def check_every_image(records: Sequence[Mapping], key: str, name: str, threads: int = 4) -> None:
    """Every image of a data set decodes (as the mapper reads it) to the size its record gives: a bad image
    anywhere in the set, not only the first of its kind, stops the run here, naming it, instead of crashing the
    data loader at its first batch. ConfigError naming up to five such files and how many there are."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.image_io import read_image

    def problem(record: Mapping) -> str | None:
        path = record.get("file_name")
        try:
            image = read_image(path)
        except Exception as e:  # the readers raise several types; the mapper would crash on any of them
            return f"{path} ({type(e).__name__}: {e})"
        want = (record.get("height"), record.get("width"))
        if None not in want and tuple(image.shape[:2]) != tuple(int(v) for v in want):
            return f"{path} ({image.shape[1]} x {image.shape[0]} pixels, its record says {want[1]} x {want[0]})"
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:  # decoders release the GIL
        bad = [p for p in pool.map(problem, records) if p]
    if bad:
        raise ConfigError(f"{key}: dataset {name!r}: {len(bad)} of {len(records)} image(s) cannot be read as their "
                          f"records describe them: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Prepare "
                          f"them again (tools/prepare_dataset.py), or remove their records")


def check_prepared_options(cfg: CfgNode, records: Iterable[Mapping], key: str, name: str) -> None:
    """Records made by tools/prepare_dataset.py carry the options they were prepared with."""
    options = Counter()
    for r in records:
        p = r.get("preprocess")
        if p is not None:
            options[(bool(p.get("crop")), bool(p.get("canonical_flip")), tuple(p.get("size") or ()))] += 1
    if not options:
        return
    if len(options) > 1:
        raise ConfigError(f"{key}: dataset {name!r} mixes images prepared with different options "
                          f"(crop, flip, size): {dict(options)}; prepare them again with one set of options")
    (crop, flip, size), _ = options.most_common(1)[0]
    for cfg_key, want, have, option in (("INPUT.CROP_TO_BREAST", crop, cfg.INPUT.CROP_TO_BREAST, "--no-crop"),
                                        ("INPUT.CANONICAL_FLIP", flip, cfg.INPUT.CANONICAL_FLIP, "--flip")):
        if bool(have) != want:
            raise ConfigError(
                f"{cfg_key} is {bool(have)}, but the images of {name!r} ({key}) were prepared with "
                f"{'' if want else 'no '}{cfg_key.split('.')[-1].lower()} (tools/prepare_dataset.py {option}): "
                f"tools/predict.py would prepare new images unlike the training data. Set {cfg_key} {want}.")
    if size and cfg.INPUT.RESIZE_MODE == "fixed" and tuple(size) != tuple(cfg.INPUT.FIXED_SIZE):
        logger.warning("%s: images of %r were prepared at %s, INPUT.FIXED_SIZE is %s: they are resized again",
                       key, name, list(size), list(cfg.INPUT.FIXED_SIZE))


def check_categories(cfg: CfgNode, records: Iterable[Mapping], name: str) -> None:
    """Every training box's category_id indexes one of the model's MODEL.ROI_HEADS.NUM_CLASSES classes:
    detectron2 would read category NUM_CLASSES as background, silently."""
    n = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    for r in records:
        for a in r["annotations"]:
            if int(a.get("category_id", 0)) >= n:
                raise ConfigError(f"DATASETS.TRAIN: dataset {name!r}, image {r.get('file_name')!r}: a box of "
                                  f"category_id {a['category_id']}, but MODEL.ROI_HEADS.NUM_CLASSES is {n}: set "
                                  f"it to {int(a['category_id']) + 1} to learn that class, or train on a set "
                                  "without it")


def check_validation(cfg: CfgNode, mapper: Any, train_patients: set[str]) -> dict[str, int]:
    """DATASETS.VALIDATION, where models are chosen during training: named when TEST.EVAL_PERIOD > 0, never a
    test set nor sharing a patient with one, cancer boxes only, readable. Returns {name: number of records}."""
    from ..data.datasets.common import patient_key
    from ..evaluation.evaluators import check_cancer_boxes_only

    names = list(cfg.DATASETS.VALIDATION)
    if cfg.TEST.EVAL_PERIOD > 0 and not names:
        raise ConfigError(f"TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD} evaluates DATASETS.VALIDATION during training, "
                          "and it is empty: name a validation set (models are chosen on validation data, never on "
                          "DATASETS.TEST), or set TEST.EVAL_PERIOD 0 to evaluate the test sets once, at the end")
    checked = {}
    for name in names:
        if name in cfg.DATASETS.TEST:
            raise ConfigError(f"DATASETS.VALIDATION: {name!r} is also in DATASETS.TEST: models are chosen on "
                              "validation data the test never sees")
        records = _records("DATASETS.VALIDATION", name)
        patients = {patient_key(r.get("patient_id")) for r in records}
        for test in cfg.DATASETS.TEST:
            shared = patients & {patient_key(r.get("patient_id")) for r in _records("DATASETS.TEST", test)}
            if shared:
                raise ConfigError(f"DATASETS.VALIDATION {name!r} shares {len(shared)} patient(s) with DATASETS.TEST "
                                  f"{test!r}, e.g. {sorted(shared)[:5]}: choose models on patients the test never sees")
        shared = patients & train_patients
        if shared:
            logger.warning("DATASETS.VALIDATION %r shares %d patient(s) with DATASETS.TRAIN, e.g. %s: the model is "
                           "chosen on training patients", name, len(shared), sorted(shared)[:5])
        try:
            check_cancer_boxes_only(name)
        except ValueError as e:
            raise ConfigError(f"DATASETS.VALIDATION: {e}") from None
        check_prepared_options(cfg, records, "DATASETS.VALIDATION", name)
        _map_one(mapper, records[0], "DATASETS.VALIDATION", name)
        check_every_image(records, "DATASETS.VALIDATION", name, threads=cfg.DATALOADER.NUM_WORKERS or 1)
        checked[name] = len(records)
    return checked


def preflight(cfg: CfgNode, eval_only: bool = False) -> dict[str, int]:
    """Run every check above for ``cfg`` (frozen, datasets registered); raise ConfigError at the first
    problem. Returns {dataset name: number of records} of what was checked."""
    from ..data import MammogramDatasetMapper, split_positive_negative
    from ..data.datasets.common import patient_key
    from ..data.build import pairs_per_rank
    from ..evaluation.evaluators import labels_from_records
    from .trainer import Trainer

    check_output_dir(cfg.OUTPUT_DIR)
    check_weights_source(cfg.MODEL.WEIGHTS, cfg.MODEL.WEIGHTS_TRUSTED_PICKLE)
    checked = {}
    train_patients = set()
    if not eval_only:
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN is empty: name at least one dataset to train on")
        mapper = MammogramDatasetMapper(cfg, is_train=True)
        all_pos, all_neg = 0, 0
        for name in cfg.DATASETS.TRAIN:
            records = _records("DATASETS.TRAIN", name)
            check_prepared_options(cfg, records, "DATASETS.TRAIN", name)
            pos, neg = split_positive_negative(records)
            all_pos, all_neg = all_pos + len(pos), all_neg + len(neg)
            for r in (pos[:1] + neg[:1]):
                _map_one(mapper, r, "DATASETS.TRAIN", name)
            check_every_image(records, "DATASETS.TRAIN", name, threads=cfg.DATALOADER.NUM_WORKERS or 1)
            train_patients |= {patient_key(r.get("patient_id")) for r in records}
            check_categories(cfg, records, name)
            checked[name] = len(records)
        if cfg.DATALOADER.PAIRED.ENABLED:
            if not all_pos or not all_neg:
                raise ConfigError(f"DATALOADER.PAIRED.ENABLED needs positive and negative images in "
                                  f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}; found {all_pos} positive and "
                                  f"{all_neg} negative (annotations: [])")
            try:
                pairs_per_rank(cfg)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif not all_pos:
            raise ConfigError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} holds no positive image (with boxes)")
        elif cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and all_neg:
            logger.info("DATALOADER.FILTER_EMPTY_ANNOTATIONS: the %d negative training images are not used", all_neg)

    test_mapper = MammogramDatasetMapper(cfg, is_train=False)
    if not eval_only:
        checked.update(check_validation(cfg, test_mapper, train_patients))
    for name in cfg.DATASETS.TEST:
        records = _records("DATASETS.TEST", name)
        check_prepared_options(cfg, records, "DATASETS.TEST", name)
        _map_one(test_mapper, records[0], "DATASETS.TEST", name)
        if name not in checked:
            check_every_image(records, "DATASETS.TEST", name, threads=cfg.DATALOADER.NUM_WORKERS or 1)
        for key in (("patient_id",), ("patient_id", "laterality")):
            try:
                labels, _ = labels_from_records(records, key)
            except KeyError as e:
                raise ConfigError(f"DATASETS.TEST: dataset {name!r}: {e.args[0]}") from None
        labels, _ = labels_from_records(records, ("patient_id",))
        n_pos = sum(labels.values())
        if n_pos in (0, len(labels)):
            logger.warning("DATASETS.TEST %r: all %d patients are %s: patient AUC, and %s, are undefined",
                           name, len(labels), "positive" if n_pos else "negative",
                           "specificity" if n_pos else "sensitivity")
        try:
            Trainer.build_evaluator(cfg, name)
        except Exception as e:
            raise ConfigError(f"DATASETS.TEST: the evaluators of {name!r} cannot be built "
                              f"({type(e).__name__}: {e})") from e
        if name in cfg.DATASETS.TRAIN and not eval_only:
            logger.warning("Dataset %r is in both DATASETS.TRAIN and DATASETS.TEST: the evaluation measures "
                           "training images", name)
        elif not eval_only:
            shared = train_patients & {patient_key(r.get("patient_id")) for r in records}
            if shared:
                logger.warning("DATASETS.TEST %r shares %d patient(s) with DATASETS.TRAIN, e.g. %s: the test "
                               "is not patient-disjoint", name, len(shared), sorted(shared)[:5])
        checked[name] = len(records)
    logger.info("Preflight checks passed: %s", ", ".join(f"{k} ({v} images)" for k, v in checked.items()))
    return checked
