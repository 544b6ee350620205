"""Dataset records, the one shape every data set takes in mammo_tl (converters, records JSON, synthetic
sets): the rule for negative images, the one validation, records JSON and COCO files. A leaf of mammo_tl.data:
it imports nothing of the data sets, so the synthetic generator and the converters can both use it."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from detectron2.structures import BoxMode

from ..files import atomic_write_json
from ..modeling.findings import CANCER_CLASS

logger = logging.getLogger(__name__)

CLASS_NAME = "malignant_mass"
# A second class for boxed benign findings: training data that annotates its look-alikes (the phantom's ceiling row,
# configs/synthetic_ddsm/o_benign_annotated.yaml). Category ids index this tuple; 0, the cancer, is the one
# class whose boxes are findings (evaluation, predict): mammo_tl.modeling.findings.CANCER_CLASS.
BENIGN_CLASS_NAME = "benign"
CLASS_NAMES = (CLASS_NAME, BENIGN_CLASS_NAME)
LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


class DatasetError(Exception):
    """Bad input to a converter; the message names the file (and row or key) and what was expected."""


def is_negative(record: dict) -> bool:
    """The one rule for records: a negative image has no cancer box (``annotations: []``, or benign boxes only),
    a positive one at least one box of category 0. (The model's rule for a batch is
    mammo_tl.modeling.negatives.negative_images: no ground-truth box of the cancer class.)"""
    if "annotations" not in record:
        raise KeyError(f"dataset record {record.get('file_name', record.get('image_id'))!r} has no "
                       "'annotations' key: mark negative images with annotations: []")
    return not any(a.get("category_id", CANCER_CLASS) == CANCER_CLASS for a in record["annotations"])


def laterality(value: Any, where: str) -> str:
    v = LATERALITY.get(str(value).strip().upper())
    if v is None:
        raise DatasetError(f"{where}: laterality {value!r} is not one of L, R, LEFT, RIGHT")
    return v


def clip_box(box: Iterable[float], width: float, height: float) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def box_annotation(box: Iterable[float]) -> dict:
    return {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}


RECORD_KEYS = ("file_name", "height", "width", "image_id", "patient_id", "laterality", "annotations")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_records(records: list[dict], source: str, report: Any = None, check_files: bool = False) -> list[dict]:
    """The one check of dataset records wherever they enter (converters, records JSON, synthetic sets).

    Refuses, naming ``source`` and the record: a missing key of :data:`RECORD_KEYS`, an empty patient_id,
    laterality other than L/R, a non-positive size, duplicate image_id or file_name, and any box that is not
    4 finite numbers with x1 < x2 and y1 < y2 overlapping its image. A box that extends past the image is
    clipped and counted (in ``report``, a :class:`~mammo_tl.data.datasets.common.SkipReport`, when given, else
    in the log). XYWH_ABS boxes become XYXY_ABS;
    ``category_id`` must index :data:`CLASS_NAMES` (0 the cancer, 1 a boxed benign finding). With ``check_files``
    every ``file_name`` must exist.
    Returns ``records`` (modified in place).
    """
    if not isinstance(records, list):
        raise DatasetError(f"{source}: expected a list of records, got {type(records).__name__}")
    seen = {"image_id": {}, "file_name": {}}
    clipped, examples, missing_files = 0, [], []
    for k, r in enumerate(records):
        if not isinstance(r, dict):
            raise DatasetError(f"{source}: record {k} is a {type(r).__name__}, expected an object")
        where = f"{source}: record {k} ({r.get('file_name', r.get('image_id', '?'))})"
        missing = [key for key in RECORD_KEYS if key not in r]
        if missing:
            hint = " (a negative image has annotations: [])" if "annotations" in missing else ""
            raise DatasetError(f"{where}: missing key(s) {missing}{hint}")
        for key in ("height", "width"):
            v = r[key]
            if not (_is_number(v) and float(v) == int(v) and int(v) > 0):
                raise DatasetError(f"{where}: {key} {v!r} is not a positive whole number of pixels")
            r[key] = int(v)
        pid = r["patient_id"]
        if pid is None or not str(pid).strip():
            raise DatasetError(f"{where}: empty patient_id (patient-level evaluation and patient-disjoint splits "
                               "need one on every image)")
        r["patient_id"] = str(pid).strip()
        lat = LATERALITY.get(str(r["laterality"]).strip().upper())
        if lat is None:
            raise DatasetError(f"{where}: laterality {r['laterality']!r} is not one of L, R, LEFT, RIGHT")
        r["laterality"] = lat
        if not isinstance(r["file_name"], str) or not r["file_name"]:
            raise DatasetError(f"{where}: file_name {r['file_name']!r} is not a path")
        for key, index in seen.items():
            if r[key] in index:
                raise DatasetError(f"{source}: duplicate image: {key} {r[key]!r} in records {index[r[key]]} and {k}")
            index[r[key]] = k
        if check_files and not os.path.isfile(r["file_name"]):
            missing_files.append(r["file_name"])
        if not isinstance(r["annotations"], list):
            raise DatasetError(f"{where}: annotations is a {type(r['annotations']).__name__}, expected a list")
        w, h = r["width"], r["height"]
        for j, a in enumerate(r["annotations"]):
            box = a.get("bbox") if isinstance(a, dict) else None
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise DatasetError(f"{where}: annotation {j} bbox {box!r} is not 4 numbers")
            try:
                mode = BoxMode(a.get("bbox_mode", BoxMode.XYXY_ABS))
            except ValueError:
                raise DatasetError(f"{where}: annotation {j} bbox_mode {a.get('bbox_mode')!r} is not a "
                                   "BoxMode") from None
            if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
                raise DatasetError(f"{where}: annotation {j} bbox_mode {mode.name} is not XYXY_ABS or XYWH_ABS")
            if not all(math.isfinite(v) for v in box):
                raise DatasetError(f"{where}: annotation {j} bbox {list(box)} is not finite")
            x1, y1, x2, y2 = BoxMode.convert([float(v) for v in box], mode, BoxMode.XYXY_ABS)
            if not (x1 < x2 and y1 < y2):
                raise DatasetError(f"{where}: annotation {j} bbox {list(box)} ({mode.name}) is empty or inverted "
                                   "(expected x1 < x2 and y1 < y2)")
            if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                raise DatasetError(f"{where}: annotation {j} bbox {list(box)} lies outside the {w}x{h} image")
            c = clip_box([x1, y1, x2, y2], w, h)
            if c != [x1, y1, x2, y2]:
                clipped += 1
                if len(examples) < 3:
                    examples.append(f"{r['file_name']}: {[x1, y1, x2, y2]} -> {c}")
            category = a.get("category_id", CANCER_CLASS)
            if not (_is_number(category) and float(category) in range(len(CLASS_NAMES))):
                raise DatasetError(f"{where}: annotation {j} category_id {category!r}: expected 0 ({CLASS_NAMES[0]}) "
                                   f"or 1 ({CLASS_NAMES[1]}, a boxed benign finding)")
            a.update(bbox=c, bbox_mode=BoxMode.XYXY_ABS, category_id=int(category))
    if missing_files:
        raise DatasetError(f"{source}: {len(missing_files)} of {len(records)} image files not found, e.g. "
                           f"{missing_files[:3]} (relative paths in a records file are resolved against its folder)")
    if clipped:
        if report is not None:
            report.notes["box clipped to the image"] += clipped
        logger.warning("%s: %d box(es) extended past their image and were clipped, e.g. %s", source, clipped,
                       "; ".join(examples))
    return records


def export_coco(records: Iterable[dict], path: str, category: str = CLASS_NAME, info: dict | None = None) -> str:
    """Write records as COCO JSON (boxes as XYWH, atomically; COCO category id = category_id + 1, ``category`` the
    cancer class's name); per image also source_image_id, patient_id,
    laterality, view and, where records have them, lookalike_boxes (the synthetic sets' look-alikes)."""
    images, annotations = [], []
    for k, r in enumerate(records):
        images.append({"id": k + 1, "file_name": r["file_name"], "height": r["height"], "width": r["width"],
                       "source_image_id": r["image_id"], "patient_id": r["patient_id"],
                       "laterality": r["laterality"], "view": r["view"],
                       **({"lookalike_boxes": r["lookalike_boxes"]} if "lookalike_boxes" in r else {})})
        for a in r["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1,
                                "category_id": int(a.get("category_id", CANCER_CLASS)) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    names = (category, *CLASS_NAMES[1:max((a["category_id"] for a in annotations), default=1)])
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    atomic_write_json({"info": info, **coco} if info is not None else coco, path)
    return path


PATH_KEYS = ("file_name", "original_file_name")


def save_records(records: Iterable[dict], path: str) -> None:
    """Dataset dicts to JSON (BoxMode as its integer), written atomically. Image paths inside the JSON's
    folder are stored relative to it (the tree can move); others absolute (never relative to the working
    directory, which changes between commands)."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for record in records:
        r = dict(record)
        for key in PATH_KEYS:
            if isinstance(r.get(key), str):
                p = os.path.abspath(r[key])
                r[key] = os.path.relpath(p, base) if p.startswith(base + os.sep) else p
        out.append(r)
    atomic_write_json(out, path, default=int)


def load_records(path: str, check_files: bool = True, report: Any = None) -> list[dict]:
    """Records JSON -> dataset dicts, validated (:func:`validate_records`); relative image paths are
    resolved against the JSON's folder. Errors name the file and the record."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: records file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid records JSON ({type(e).__name__}: {e}); a truncated file? "
                           "Rewrite it with the command that made it") from None
    base = os.path.dirname(os.path.abspath(path))
    for r in records if isinstance(records, list) else []:
        for key in PATH_KEYS:
            if isinstance(r, dict) and isinstance(r.get(key), str) and not os.path.isabs(r[key]):
                r[key] = os.path.normpath(os.path.join(base, r[key]))
    return validate_records(records, path, report=report, check_files=check_files)
