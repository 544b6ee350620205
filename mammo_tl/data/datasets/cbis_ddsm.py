"""CBIS-DDSM (TCIA) -> detectron2 dataset dicts.

Reads the official case-description CSVs (mass and calc, train and test) with their quirks: CRLF record
ends, a quoted path ending in a newline, ``NA`` descriptors, ``breast_density`` (mass) vs
``breast density`` (calc). Finds the DICOMs under ``root`` in either TCIA layout:

* the UID layout of the CSV paths: ``<Subject>/<StudyUID>/<SeriesUID>/000000.dcm``;
* the NBIA Data Retriever layout: ``<Subject>/<date>-DDSM-NA-<last 5 of StudyUID>/
  1.000000-<series description>-<last 5 of SeriesUID>/1-1.dcm`` (any number of folders above).

ROI masks are told apart from cropped images by content (a mask holds at most two values), never by
file name: the CSV's 000000/000001 and NBIA's 1-1/1-2 orders are not stable. MALIGNANT findings become
boxes (from the mask's extent; a mask whose size differs from its image is rescaled and reported);
an image whose findings are all BENIGN or BENIGN_WITHOUT_CALLBACK becomes a negative image with its
annotations removed (the paper's DDSM protocol). ``patient_id`` is the CBIS patient, e.g. "P_00001".
"""
from __future__ import annotations

import csv
import logging
import os
import re
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from ..image_io import image_size
from .common import (DatasetError, SkipReport, box_annotation, cache_key, clip_box, file_key,
                     laterality, load_records, register_records, save_records, validate_records)

logger = logging.getLogger(__name__)

COMMON = ["patient_id", "left or right breast", "image view", "abnormality id", "abnormality type", "assessment",
          "pathology", "subtlety", "image file path", "cropped image file path", "ROI mask file path"]
MASS_COLUMNS = set(COMMON) | {"breast_density", "mass shape", "mass margins"}
CALC_COLUMNS = set(COMMON) | {"breast density", "calc type", "calc distribution"}
PATHOLOGIES = ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")
NA_VALUES = {"NA", "N/A", ""}
_STUDY = re.compile(r"-(\d{5})$")
_SERIES = re.compile(r"^\d+\.\d+-(.+)-(\d{5})$")


def read_cbis_csv(path: str) -> tuple[str, list[dict[str, Any]]]:
    """Rows of one case-description CSV as dicts with stripped values (``None`` for NA), plus its kind
    ("mass" or "calc") and a ``row`` number (1 = first data row)."""
    try:
        return _read_cbis_csv(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: CBIS-DDSM case-description CSV not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e}); use the CSV as published by TCIA") from None


def _read_cbis_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DatasetError(f"{path}: empty file, expected a CBIS-DDSM case-description CSV")
        header = [h.strip() for h in reader.fieldnames]
        cols = set(header)
        if cols == MASS_COLUMNS:
            kind = "mass"
        elif cols == CALC_COLUMNS:
            kind = "calc"
        else:
            nearest = min((MASS_COLUMNS, CALC_COLUMNS), key=lambda c: len(c ^ cols))
            raise DatasetError(f"{path}: unknown column set for a CBIS-DDSM case-description CSV; missing "
                               f"{sorted(nearest - cols)}, unexpected {sorted(cols - nearest)}")
        rows = []
        for i, raw in enumerate(reader, start=1):
            row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items()}
            for k, v in row.items():
                if v in NA_VALUES:
                    row[k] = None
            row["breast density"] = row.pop("breast_density", row.get("breast density"))
            row["row"] = i
            rows.append(row)
    return kind, rows


class SeriesIndex:
    """Every DICOM under root, indexed by series in both TCIA layouts (found by walking once)."""

    def __init__(self, root):
        if not os.path.isdir(root):
            raise DatasetError(f"{root}: CBIS-DDSM image folder not found")
        self.by_uid, self.by_nbia = defaultdict(list), defaultdict(list)
        for dirpath, _, names in os.walk(root):
            files = sorted(os.path.join(dirpath, n) for n in names if n.lower().endswith(".dcm"))
            if not files:
                continue
            parts = os.path.normpath(dirpath).split(os.sep)
            if len(parts) < 3:
                continue
            subject, study, series = parts[-3:]
            self.by_uid[(subject, study, series)] += files
            s, r = _STUDY.search(study), _SERIES.match(series)
            if s and r:
                self.by_nbia[(subject, s.group(1), r.group(2))] += files

    def series_files(self, csv_path: str) -> list[str]:
        parts = csv_path.strip().replace("\\", "/").split("/")
        if len(parts) != 4:
            raise DatasetError(f"path {csv_path!r} does not have the 4 components Subject/Study/Series/file")
        subject, study, series, _ = parts
        return self.by_uid.get((subject, study, series)) or self.by_nbia.get((subject, study[-5:], series[-5:])) or []


def _read_pixels(path):
    """A ROI mask's stored values as they are (no rescale, window or inversion: 0 is outside the lesion)."""
    import pydicom

    return pydicom.dcmread(path).pixel_array


def mask_box(files: Sequence[str], full_shape: tuple[int, int], report: SkipReport,
             what: str) -> tuple[list[float] | None, str | None]:
    """Box [x1, y1, x2, y2] in full-image pixels from the ROI mask among ``files`` (told by content)."""
    masks, empty = [], []
    for f in files:
        try:
            px = _read_pixels(f)
        except Exception as e:
            report.note("unreadable ROI/crop file", f"{f}: {e}")
            continue
        values = np.unique(px)
        if len(values) == 1 and values[0] == 0:
            empty.append(f)
        elif len(values) <= 2 and values[0] == 0:
            masks.append((f, px))
    if not masks:
        return None, ("all-zero ROI mask: " + empty[0]) if empty else f"no ROI mask among {len(files)} file(s)"
    f, px = masks[0]
    ys, xs = np.nonzero(px)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    h, w = full_shape
    if px.shape != (h, w):
        sx, sy = w / px.shape[1], h / px.shape[0]
        box = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        report.note("ROI mask size differs from its image: box rescaled", f"{what}: mask {px.shape} vs image {(h, w)}")
    return clip_box(box, w, h), None


def load_cbis_ddsm(root: str, csv_files: str | Iterable[str], strict: bool = False, report: SkipReport | None = None,
                   progress: bool = True) -> list[dict]:
    """Dataset dicts from CBIS-DDSM CSVs (any of the four) and the DICOMs under ``root``.

    Each record: file_name (full-field DICOM), height, width, image_id (the image's TCIA subject, e.g.
    "Mass-Training_P_00001_LEFT_CC"), patient_id ("P_00001"), laterality, view, abnormality_type,
    annotations (MALIGNANT findings' boxes; [] for an all-benign image). Problems are skipped and counted
    in ``report`` (a :class:`SkipReport`), or raise :class:`DatasetError` with ``strict``.
    """
    report = report or SkipReport("cbis_ddsm", strict)
    if isinstance(csv_files, str):
        csv_files = [csv_files]
    index = SeriesIndex(root)
    images = OrderedDict()
    for path in csv_files:
        kind, rows = read_cbis_csv(path)
        for row in rows:
            where = f"{os.path.basename(path)} row {row['row']}"
            if row["pathology"] not in PATHOLOGIES:
                raise DatasetError(f"{where}: pathology {row['pathology']!r} is not one of {PATHOLOGIES}")
            image_path = row["image file path"]
            if not image_path:
                raise DatasetError(f"{where}: empty 'image file path'")
            subject = image_path.strip().replace("\\", "/").split("/")[0]
            img = images.setdefault(subject, {"rows": [], "where": where, "kind": kind})
            img["rows"].append(row)

    records = []
    for subject, img in tqdm(images.items(), desc="CBIS-DDSM", unit="image", disable=not progress):
        rows = img["rows"]
        first = rows[0]
        files = index.series_files(first["image file path"])
        if len(files) != 1:
            report.skip(f"{subject} ({img['where']})", f"full mammogram not found under {root}" if not files else
                        f"{len(files)} files in the full-mammogram series, expected 1")
            continue
        try:
            height, width = image_size(files[0])
        except Exception as e:
            report.skip(files[0], f"unreadable DICOM header: {e}")
            continue
        annotations, failed = [], None
        for row in rows:
            if row["pathology"] != "MALIGNANT":
                continue  # benign findings are not targets: their boxes are removed
            roi_files = sorted(set(index.series_files(row["ROI mask file path"] or "")
                                   + index.series_files(row["cropped image file path"] or "")))
            what = f"{subject} abnormality {row['abnormality id']}"
            box, problem = mask_box(roi_files, (height, width), report, what)
            if problem:
                failed = f"malignant abnormality {row['abnormality id']}: {problem}"
                break
            annotations.append(box_annotation(box))
        if failed:
            # without its box the image is neither a usable positive nor a negative
            report.skip(f"{subject} ({img['where']})", failed)
            continue
        records.append({
            "file_name": files[0], "height": height, "width": width, "image_id": subject,
            "patient_id": first["patient_id"],
            "laterality": laterality(first["left or right breast"], img["where"]),
            "view": first["image view"], "abnormality_type": img["kind"],
            "annotations": annotations,
        })
    _note_cross_subset_duplicates(records, report)
    report.log(len(records))
    return validate_records(records, "cbis_ddsm", report=report)


def _note_cross_subset_duplicates(records, report):
    """The same mammogram exists as separate DICOMs in the mass and calc subsets: report, keep both."""
    kinds = defaultdict(set)
    for r in records:
        kinds[(r["patient_id"], r["laterality"], r["view"])].add(r["abnormality_type"])
    n = sum(1 for v in kinds.values() if len(v) > 1)
    if n:
        report.note(f"patient/side/view in both mass and calc subsets (kept as separate images): {n}")


def register_cbis_ddsm(name: str, root: str, csv_files: str | Iterable[str], cache: str | None = None,
                       **kwargs) -> None:
    """Register ``name``; with ``cache`` (a JSON path) the conversion runs once and is reused for as long
    as the CSVs (path, size, mtime), ``root`` and the options are the ones it was made from."""
    csv_files = [csv_files] if isinstance(csv_files, str) else list(csv_files)

    def load() -> list[dict]:
        key = cache_key(root=os.path.abspath(root), csv=[file_key(p) for p in csv_files],
                        options={k: v for k, v in kwargs.items() if k != "report"})
        key_file = f"{cache}.key" if cache else None
        if cache and os.path.exists(cache) and os.path.exists(key_file):
            with open(key_file) as f:
                if f.read().strip() == key:
                    return load_records(cache)
            logger.info("%s: CBIS-DDSM CSVs, root or options changed since %s was written: converting again",
                        name, cache)
        records = load_cbis_ddsm(root, csv_files, **kwargs)
        if cache:
            save_records(records, cache)
            with open(key_file, "w") as f:
                f.write(key)
        return records

    register_records(name, load, root=root, csv_files=csv_files)
