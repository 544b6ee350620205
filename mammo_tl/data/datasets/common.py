"""Shared pieces of the dataset converters: errors, skip reports, record checks, COCO export."""
import json
import logging
import os
from collections import Counter, defaultdict

from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)
LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
VIEWS = ("CC", "MLO")


class DatasetError(Exception):
    """Bad input to a converter; the message names the file (and row or key) and what was expected."""


class SkipReport:
    """Counts what a converter leaves out, with the reason, so nothing is dropped silently.

    With ``strict=True`` the first problem raises :class:`DatasetError` instead.
    """

    def __init__(self, name, strict=False):
        self.name = name
        self.strict = strict
        self.skipped = []  # (what, reason)
        self.notes = Counter()  # things kept but worth knowing (e.g. rescaled masks)

    def skip(self, what, reason):
        if self.strict:
            raise DatasetError(f"{what}: {reason}")
        self.skipped.append((str(what), reason))

    def note(self, kind, what=None):
        self.notes[kind] += 1
        if what is not None:
            logger.info("%s: %s (%s)", self.name, kind, what)

    def by_reason(self):
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def log(self, num_records):
        reasons = self.by_reason()
        logger.info("%s: %d images kept, %d skipped%s%s", self.name, num_records, len(self.skipped),
                    "".join(f"; {n} x {r}" for r, n in reasons.most_common()),
                    "".join(f"; {n} x {k}" for k, n in self.notes.most_common()))

    def to_dict(self, num_records):
        return {"dataset": self.name, "kept": num_records, "skipped": len(self.skipped),
                "skipped_by_reason": dict(self.by_reason()), "notes": dict(self.notes),
                "skipped_items": [{"item": w, "reason": r} for w, r in self.skipped]}


def laterality(value, where):
    v = LATERALITY.get(str(value).strip().upper())
    if v is None:
        raise DatasetError(f"{where}: laterality {value!r} is not one of L, R, LEFT, RIGHT")
    return v


def clip_box(box, width, height):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def box_annotation(box):
    return {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}


def check_records(records, name):
    """Refuse duplicate images and boxes outside their image, naming them."""
    seen_ids, seen_files = {}, {}
    for r in records:
        for key, seen in (("image_id", seen_ids), ("file_name", seen_files)):
            if r[key] in seen:
                raise DatasetError(f"{name}: duplicate image: {key} {r[key]!r} appears twice "
                                   f"({seen[r[key]].get('file_name')} and {r.get('file_name')})")
            seen[r[key]] = r
        for a in r["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            if not (0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]):
                raise DatasetError(f"{name}: {r['file_name']}: box {a['bbox']} is outside the "
                                   f"{r['width']}x{r['height']} image (or empty)")
    return records


def check_patient_disjoint(splits):
    """splits: split name -> records. Raises DatasetError naming patients found in more than one split."""
    where = defaultdict(set)
    for split, records in splits.items():
        for r in records:
            where[r["patient_id"]].add(split)
    shared = sorted(p for p, s in where.items() if len(s) > 1)
    if shared:
        detail = ", ".join(f"{p} ({'/'.join(sorted(where[p]))})" for p in shared[:20])
        raise DatasetError(f"{len(shared)} patient(s) appear in more than one split: {detail}"
                           f"{' ...' if len(shared) > 20 else ''}")


def export_coco(records, path, category="malignant_mass"):
    """Write records as COCO JSON (boxes as XYWH); extra keys patient_id, laterality, view kept per image."""
    images, annotations = [], []
    for k, r in enumerate(records):
        images.append({"id": k + 1, "file_name": r["file_name"], "height": r["height"], "width": r["width"],
                       "source_image_id": r["image_id"], "patient_id": r["patient_id"],
                       "laterality": r["laterality"], "view": r["view"]})
        for a in r["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": category}]}, f)
    return path


def save_records(records, path):
    """Dataset dicts to JSON (BoxMode as its integer), for named splits and caches."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(records, f, default=int)


def load_records(path):
    with open(path) as f:
        records = json.load(f)
    for r in records:
        for a in r["annotations"]:
            a["bbox_mode"] = BoxMode(a["bbox_mode"])
    return records


def register_records(name, loader, **metadata):
    """Register a loader under ``name`` with the single class mammo_tl detects."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(thing_classes=["malignant_mass"], evaluator_type="coco", **metadata)


def dicom_size(path):
    """(height, width) from a DICOM header without decoding pixels."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def register_json_datasets(entries):
    """Register each "name=path/records.json" (config key DATASETS.REGISTER_JSON); already registered
    names are left alone, so calling it twice is harmless."""
    from detectron2.data import DatasetCatalog

    for entry in entries:
        if "=" not in entry:
            raise DatasetError(f"DATASETS.REGISTER_JSON entry {entry!r} must be name=path/records.json")
        name, path = (s.strip() for s in entry.split("=", 1))
        if name in DatasetCatalog:
            continue
        if not os.path.exists(path):
            raise DatasetError(f"DATASETS.REGISTER_JSON: {path} (for {name}) not found")
        register_records(name, lambda p=path: load_records(p), json_file=path)


def read_csv_rows(path, required, delimiter=",", hint=""):
    """Yield (row number from 1, row with stripped values) of a CSV whose header must hold ``required``;
    otherwise raise DatasetError naming the file and the missing columns."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: unknown column set, missing column(s) {missing}{hint}")
        for i, raw in enumerate(reader, start=1):
            yield i, {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
