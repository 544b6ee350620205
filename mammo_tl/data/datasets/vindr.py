"""VinDr-Mammo (PhysioNet) -> detectron2 dataset dicts.

``finding_annotations.csv`` (one row per box; images without findings have one ``['No Finding']`` row with
empty BI-RADS and box), images at ``<root>/images/<study_id>/<image_id>.dicom``. Targets: findings whose
categories meet ``target_categories`` with finding BI-RADS in ``target_birads`` (default: Mass, BI-RADS 4
or 5). Negatives: images with no finding of BI-RADS in ``target_birads`` (normal and benign-looking
breasts), their benign findings' boxes removed: they hold exactly the look-alikes the method learns from.
An image with a suspicious finding that is not a target (e.g. a BI-RADS 4 calcification only) is neither,
and is skipped with that reason. Boxes are clipped to the image. The study is the patient.
"""
from __future__ import annotations

import ast
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable

from .common import (DatasetError, SkipReport, box_annotation, clip_box, laterality, read_csv_rows,
                     register_records, validate_records)

logger = logging.getLogger(__name__)
COLUMNS = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width", "breast_birads",
           "breast_density", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"]
SPLITS = ("training", "test")


def _birads(value, where):
    v = (value or "").strip()
    if not v:
        return None
    try:
        return int(v.upper().replace("BI-RADS", "").strip())
    except ValueError:
        raise DatasetError(f"{where}: BI-RADS value {value!r} is not 'BI-RADS <n>'") from None


def _categories(value, where):
    try:
        cats = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise DatasetError(f"{where}: finding_categories {value!r} is not a list like ['Mass']") from None
    if not isinstance(cats, (list, tuple)):
        raise DatasetError(f"{where}: finding_categories {value!r} is not a list")
    return [str(c).strip() for c in cats]


def load_vindr_mammo(root: str, csv_file: str | None = None, split: str | None = None,
                     target_categories: Iterable[str] = ("Mass",), target_birads: Iterable[int | str] = (4, 5),
                     strict: bool = False, report: SkipReport | None = None, check_files: bool = True) -> list[dict]:
    """Dataset dicts for VinDr-Mammo; ``split`` "training", "test" or None (both), as in the CSV."""
    report = report or SkipReport("vindr_mammo", strict)
    csv_file = csv_file or os.path.join(root, "finding_annotations.csv")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS} or None, got {split!r}")
    targets, suspicious = set(target_categories), {int(b) for b in target_birads}
    images = OrderedDict()
    for i, row in read_csv_rows(csv_file, COLUMNS, hint=" (expected VinDr-Mammo's finding_annotations.csv)"):
        where = f"{os.path.basename(csv_file)} row {i}"
        if row["split"] not in SPLITS:
            raise DatasetError(f"{where}: split {row['split']!r} is not one of {SPLITS}")
        if split is not None and row["split"] != split:
            continue
        img = images.get(row["image_id"])
        if img is None:
            img = images[row["image_id"]] = {
                "where": where, "study_id": row["study_id"], "split": row["split"],
                "laterality": laterality(row["laterality"], where), "view": row["view_position"],
                "height": int(float(row["height"])), "width": int(float(row["width"])),
                "boxes": [], "suspicious_other": False, "has_suspicious": False,
            }
        birads = _birads(row["finding_birads"], where)
        cats = _categories(row["finding_categories"], where)
        if birads in suspicious:
            img["has_suspicious"] = True
            if targets & set(cats):
                try:
                    box = [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
                except ValueError:
                    box = None
                if box is None or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
                    img["bad"] = img.get("bad") or (f"{where}: target finding without a valid box "
                                                    f"({[row[k] for k in ('xmin', 'ymin', 'xmax', 'ymax')]})")
                else:
                    img["boxes"].append(box)
            else:
                img["suspicious_other"] = True

    records = []
    for image_id, img in images.items():
        path = os.path.join(root, "images", img["study_id"], image_id + ".dicom")
        what = f"{path} ({img['where']})"
        if check_files and not os.path.exists(path):
            report.skip(what, "DICOM file not found")
            continue
        if img.get("bad"):
            report.skip(what, img["bad"])
            continue
        if img["has_suspicious"] and not img["boxes"]:
            report.skip(what, "suspicious finding that is not a target (neither positive nor negative)")
            continue
        annotations = []
        for box in img["boxes"]:
            clipped = clip_box(box, img["width"], img["height"])
            if clipped != box:
                report.note("box clipped to the image")
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                report.skip(what, f"box {box} lies outside the {img['width']}x{img['height']} image")
                annotations = None
                break
            annotations.append(box_annotation(clipped))
        if annotations is None:
            continue
        records.append({"file_name": path, "height": img["height"], "width": img["width"], "image_id": image_id,
                        "patient_id": img["study_id"], "laterality": img["laterality"], "view": img["view"],
                        "split": img["split"], "annotations": annotations})
    report.log(len(records))
    return validate_records(records, "vindr_mammo", report=report)


def register_vindr_mammo(root: str, prefix: str = "vindr_mammo", **kwargs) -> None:
    """Registers ``<prefix>_train`` and ``<prefix>_test`` (the official split)."""
    for name, split in ((f"{prefix}_train", "training"), (f"{prefix}_test", "test")):
        register_records(name, lambda s=split: load_vindr_mammo(root, split=s, **kwargs), root=root)
