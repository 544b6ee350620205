"""A hospital's own mammograms from one CSV, one row per image (see datasets/README.md).

Columns: ``patient_id,path,laterality,view,label`` and optionally ``boxes``. ``path`` is a DICOM or PNG file,
absolute or relative to the CSV's folder. ``laterality`` L/R (or LEFT/RIGHT), ``view`` CC/MLO. ``label`` 1
for an image with malignant lesions, 0 for a negative image. ``boxes``: ``x1 y1 x2 y2`` in the image's
pixels, several separated by ``;`` (required when label is 1, empty when 0). A record's ``image_id`` is its
``path`` as written in the CSV, so it does not change when rows are reordered.
"""
from __future__ import annotations

import os

from ..image_io import image_size
from .common import (DatasetError, SkipReport, box_annotation, clip_box, laterality, read_csv_rows,
                     register_records, validate_records)

REQUIRED = ["patient_id", "path", "laterality", "view", "label"]


def parse_boxes(text: str | None, where: str) -> list[list[float]]:
    boxes = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        try:
            box = [float(v) for v in part.replace(",", " ").split()]
        except ValueError:
            raise DatasetError(f"{where}: box {part.strip()!r} is not four numbers x1 y1 x2 y2") from None
        if len(box) != 4:
            raise DatasetError(f"{where}: box {part.strip()!r} has {len(box)} numbers, expected x1 y1 x2 y2")
        boxes.append(box)
    return boxes


def load_csv_dataset(csv_file: str, strict: bool = False, report: SkipReport | None = None) -> list[dict]:
    report = report or SkipReport(os.path.basename(csv_file), strict)
    base = os.path.dirname(os.path.abspath(csv_file))
    records = []
    for i, row in read_csv_rows(csv_file, REQUIRED, hint=f"; expected {REQUIRED} (+ optional boxes)"):
        where = f"{os.path.basename(csv_file)} row {i}"
        path = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
        if not row["patient_id"]:
            raise DatasetError(f"{where}: empty patient_id (every image needs its patient, for patient-level "
                               "metrics and patient-disjoint splits)")
        if row["label"] not in ("0", "1"):
            raise DatasetError(f"{where}: label {row['label']!r} must be 0 or 1")
        if row["view"].upper() not in ("CC", "MLO"):
            raise DatasetError(f"{where}: view {row['view']!r} must be CC or MLO")
        boxes = parse_boxes(row.get("boxes"), where)
        if row["label"] == "1" and not boxes:
            report.skip(f"{where} ({path})", "label 1 without boxes: a positive image needs its lesions boxed")
            continue
        if row["label"] == "0" and boxes:
            raise DatasetError(f"{where}: label 0 (negative image) but {len(boxes)} box(es) given")
        if not os.path.exists(path):
            report.skip(f"{where} ({path})", "file not found")
            continue
        try:
            height, width = image_size(path)
        except Exception as e:
            report.skip(f"{where} ({path})", f"unreadable image: {e}")
            continue
        # a box past the edge is clipped to the image and counted; one with nothing inside it skips the image
        clipped = [clip_box(b, width, height) for b in boxes]
        outside = [b for b, c in zip(boxes, clipped) if not (c[0] < c[2] and c[1] < c[3])]
        if outside:
            report.skip(f"{where} ({path})", f"box {outside[0]} outside the {width}x{height} image")
            continue
        for b, c in zip(boxes, clipped):
            if c != [float(v) for v in b]:
                report.note("box clipped to the image", f"{where}: {b} -> {c}")
        boxes = clipped
        records.append({"file_name": path, "height": int(height), "width": int(width),
                        "image_id": row["path"], "patient_id": row["patient_id"],
                        "laterality": laterality(row["laterality"], where), "view": row["view"].upper(),
                        "annotations": [box_annotation(b) for b in boxes]})
    report.log(len(records))
    return validate_records(records, os.path.basename(csv_file), report=report)


def register_csv_dataset(name: str, csv_file: str, **kwargs) -> None:
    register_records(name, lambda: load_csv_dataset(csv_file, **kwargs), csv_file=csv_file)
