"""INbreast -> detectron2 dataset dicts.

``INbreast.csv`` (semicolon-separated; ``Bi-Rads`` values 1, 2, 3, 4a, 4b, 4c, 5, 6), DICOMs in
``AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|MLO>_ANON.dcm``, OsiriX ROI exports (XML plists) in
``AllXML/<File Name>.xml`` with ROI ``Name`` and ``Point_px`` ("(x, y)" strings, x = column).
Images with BI-RADS >= ``min_positive_birads`` (default 4) and at least one target ROI (default: Mass) are
positive; images with BI-RADS 1 to 3 are negative with their annotations removed (configurable).
The patient is the hash in the file name (the CSV's Patient ID is "removed").
"""
from __future__ import annotations

import glob
import logging
import os
import plistlib
import re
from collections.abc import Collection

from ..image_io import image_size
from .common import (DatasetError, SkipReport, box_annotation, clip_box, laterality,
                     read_csv_rows, register_records, validate_records)

logger = logging.getLogger(__name__)
COLUMNS = ["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads"]
_DCM = re.compile(r"^(?P<file>[^_]+)_(?P<patient>[^_]+)_MG_(?P<lat>[^_]+)_(?P<view>[^_]+)_ANON\.dcm$", re.IGNORECASE)


def _birads_level(value, where):
    m = re.match(r"^\s*(\d)", value or "")
    if not m:
        raise DatasetError(f"{where}: Bi-Rads {value!r} is not one of 1, 2, 3, 4a, 4b, 4c, 5, 6")
    return int(m.group(1))


def read_rois(xml_path: str) -> list[tuple[str, list[tuple[float, float]]]]:
    """[(name, [(x, y), ...]), ...] of an OsiriX ROI plist."""
    try:
        with open(xml_path, "rb") as f:
            plist = plistlib.load(f, fmt=plistlib.FMT_XML)
        rois = plist["Images"][0]["ROIs"]
    except Exception as e:
        raise DatasetError(f"{xml_path}: not an OsiriX ROI plist ({type(e).__name__}: {e})") from None
    out = []
    for k, roi in enumerate(rois):
        pts = []
        for p in roi.get("Point_px", []):
            try:
                x, y = (float(v) for v in str(p).strip().strip("()").split(","))
            except ValueError:
                raise DatasetError(f"{xml_path}: ROI {k} point {p!r} is not '(x, y)'") from None
            pts.append((x, y))
        out.append((str(roi.get("Name", "")).strip(), pts))
    return out


def load_inbreast(root: str, target_names: Collection[str] = ("Mass",), min_positive_birads: int = 4,
                  negative_birads: Collection[int] = (1, 2, 3), strict: bool = False,
                  report: SkipReport | None = None) -> list[dict]:
    report = report or SkipReport("inbreast", strict)
    csv_path = os.path.join(root, "INbreast.csv")
    if not os.path.exists(csv_path):
        raise DatasetError(f"{csv_path}: not found (expected the INbreast release layout)")
    dicoms = {}
    for p in sorted(glob.glob(os.path.join(root, "AllDICOMs", "*.dcm"))):
        m = _DCM.match(os.path.basename(p))
        if m:
            dicoms[m["file"]] = (p, m["patient"])
        else:
            report.note("DICOM name not <File Name>_<hash>_MG_<L|R>_<view>_ANON.dcm (ignored)", p)
    records = []
    for i, row in read_csv_rows(csv_path, COLUMNS, delimiter=";", hint=" (is it semicolon-separated?)"):
        where = f"INbreast.csv row {i} (File Name {row['File Name']})"
        level = _birads_level(row["Bi-Rads"], where)
        if row["View"] not in ("CC", "MLO"):
            report.skip(where, f"view {row['View']!r} is not CC or MLO")
            continue
        if row["File Name"] not in dicoms:
            report.skip(where, "DICOM file not found in AllDICOMs/")
            continue
        path, patient = dicoms[row["File Name"]]
        try:
            height, width = image_size(path)
        except Exception as e:
            report.skip(path, f"unreadable DICOM header: {e}")
            continue
        if level >= min_positive_birads:
            xml = os.path.join(root, "AllXML", row["File Name"] + ".xml")
            rois = read_rois(xml) if os.path.exists(xml) else []
            boxes = []
            for name, pts in rois:
                if name in target_names and len(pts) >= 3:
                    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                    boxes.append(clip_box([min(xs), min(ys), max(xs) + 1, max(ys) + 1], width, height))
            if not boxes:
                report.skip(where, f"BI-RADS {row['Bi-Rads']} without a {'/'.join(target_names)} outline")
                continue
            annotations = [box_annotation(b) for b in boxes]
        elif level in negative_birads:
            annotations = []
        else:
            report.skip(where, f"BI-RADS {row['Bi-Rads']} is neither positive nor negative")
            continue
        records.append({"file_name": path, "height": height, "width": width, "image_id": row["File Name"],
                        "patient_id": patient, "laterality": laterality(row["Laterality"], where),
                        "view": row["View"], "annotations": annotations})
    report.log(len(records))
    return validate_records(records, "inbreast", report=report)


def register_inbreast(name: str, root: str, **kwargs) -> None:
    register_records(name, lambda: load_inbreast(root, **kwargs), root=root)
