"""Shared pieces of the dataset converters: skip reports, patient-disjointness, registration, CSV reading,
cache keys (records themselves: mammo_tl.data.records)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

# the record helpers live in mammo_tl.data.records; the converters and tools import them from here too
from ..records import (CLASS_NAME, CLASS_NAMES, LATERALITY, DatasetError, box_annotation, clip_box, export_coco,  # noqa: F401
                       is_negative, laterality, load_records, save_records, validate_records)

logger = logging.getLogger(__name__)


class SkipReport:
    """Counts what a converter leaves out, with the reason, so nothing is dropped silently.

    With ``strict=True`` the first problem raises :class:`DatasetError` instead.
    """

    def __init__(self, name, strict=False):
        self.name = name
        self.strict = strict
        self.skipped = []  # (what, reason)
        self.notes = Counter()  # things kept but worth knowing (e.g. rescaled masks)

    def skip(self, what: Any, reason: str) -> None:
        if self.strict:
            raise DatasetError(f"{what}: {reason}")
        self.skipped.append((str(what), reason))

    def note(self, kind: str, what: Any = None) -> None:
        self.notes[kind] += 1
        if what is not None:
            logger.info("%s: %s (%s)", self.name, kind, what)

    def by_reason(self) -> Counter[str]:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def log(self, num_records: int) -> None:
        reasons = self.by_reason()
        logger.info("%s: %d images kept, %d skipped%s%s", self.name, num_records, len(self.skipped),
                    "".join(f"; {n} x {r}" for r, n in reasons.most_common()),
                    "".join(f"; {n} x {k}" for k, n in self.notes.most_common()))

    def to_dict(self, num_records: int) -> dict[str, Any]:
        return {"dataset": self.name, "kept": num_records, "skipped": len(self.skipped),
                "skipped_by_reason": dict(self.by_reason()), "notes": dict(self.notes),
                "skipped_items": [{"item": w, "reason": r} for w, r in self.skipped]}


def patient_key(patient_id: Any) -> str:
    """The key patients are grouped by in splits and overlap checks: the id with Unicode compatibility forms folded,
    surrounding and repeated white space removed, and case ignored. "P001", "p001" and "P001 " are one patient: two
    spellings of one person's id put on both sides of a split would leak that patient into the test set, while
    two people whose ids differ only in case kept on one side cost nothing."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", str(patient_id)).split()).casefold()


def same_view_files(records: Iterable[Mapping]) -> dict[tuple[str, str, str], list[str]]:
    """{(patient, laterality, view): its files} for every patient, side and view that more than one file shows
    (patients compared by :func:`patient_key`): a retake, or one mammogram stored twice, which training and the
    patient-level evaluation would count twice. Kept as separate images; the caller reports them."""
    files = defaultdict(set)
    for r in records:
        files[(patient_key(r.get("patient_id")), str(r.get("laterality", "")), str(r.get("view", "")))].add(
            os.path.abspath(str(r.get("file_name"))))
    return {k: sorted(v) for k, v in sorted(files.items()) if len(v) > 1}


def patient_id_variants(records: Iterable[Mapping]) -> dict[str, list[str]]:
    """{key: sorted distinct patient ids} for every :func:`patient_key` spelled more than one way in ``records``."""
    spellings = defaultdict(set)
    for r in records:
        spellings[patient_key(r["patient_id"])].add(str(r["patient_id"]))
    return {k: sorted(v) for k, v in sorted(spellings.items()) if len(v) > 1}


def check_patient_disjoint(splits: Mapping[str, Iterable[Mapping]]) -> None:
    """splits: split name -> records. Raises DatasetError naming patients found in more than one split, patients
    compared by :func:`patient_key` (ids differing only in case or white space are one patient)."""
    where = defaultdict(set)
    seen = defaultdict(set)  # key -> {(id as written, split)}
    for split, records in splits.items():
        for r in records:
            key = patient_key(r["patient_id"])
            where[key].add(split)
            seen[key].add((str(r["patient_id"]), split))
    shared = sorted(p for p, s in where.items() if len(s) > 1)

    def show(key: str) -> str:
        ids = sorted({i for i, _ in seen[key]})
        if len(ids) == 1:
            return f"{ids[0]} ({'/'.join(sorted(where[key]))})"
        spellings = "; ".join(f"{i!r} in {s}" for i, s in sorted(seen[key]))
        return f"({spellings}: one patient, ids differing in case or spaces)"

    if shared:
        detail = ", ".join(show(p) for p in shared[:20])
        raise DatasetError(f"{len(shared)} patient(s) appear in more than one split: {detail}"
                           f"{' ...' if len(shared) > 20 else ''}")


def file_key(path: str | os.PathLike) -> list:
    """What identifies a file's content cheaply: absolute path, size and modification time (ns)."""
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def cache_key(**parts) -> str:
    """A stable hash of everything a cached artefact was made from (JSON-serialisable parts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def register_records(name: str, loader: Callable[[], list[dict]], class_names: Sequence[str] | None = None,
                     **metadata) -> None:
    """Register a loader under ``name``; its classes are ``class_names`` (default: the cancer class alone; a set
    with boxed benign findings: mammo_tl.data.records.CLASS_NAMES)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(thing_classes=list(class_names or [CLASS_NAME]), evaluator_type="coco", **metadata)


def _classes_in(path: str) -> tuple[str, ...] | None:
    """CLASS_NAMES when the records file holds a box of another class than the cancer (a boxed benign finding),
    else None (the cancer class alone); a file that cannot be read as records is left to the loader's checks."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        benign = any(isinstance(a, dict) and a.get("category_id", 0) not in (0, None)
                     for r in records if isinstance(r, dict) for a in (r.get("annotations") or []))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return CLASS_NAMES if benign else None


def register_json_datasets(entries: Iterable[str]) -> None:
    """Register each "name=path/records.json" (config key DATASETS.REGISTER_JSON). A name already
    registered for the same file is left alone; for another file it is an error (never a silent reuse).

    A records file holding boxed benign findings (category_id 1) gets both class names (CLASS_NAMES).
    The metadata key is ``records_file``, not ``json_file``: detectron2's COCOEvaluator reads a
    ``json_file`` as a COCO annotation file, and builds its own COCO file from the records without one.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for entry in entries:
        if "=" not in entry:
            raise DatasetError(f"DATASETS.REGISTER_JSON entry {entry!r} must be name=path/records.json")
        name, path = (s.strip() for s in entry.split("=", 1))
        if not name or not path:
            raise DatasetError(f"DATASETS.REGISTER_JSON entry {entry!r} must be name=path/records.json")
        path = os.path.abspath(path)
        if name in DatasetCatalog:
            known = MetadataCatalog.get(name).get("records_file", None)
            if known != path:
                raise DatasetError(f"DATASETS.REGISTER_JSON: {name!r} is already registered "
                                   f"({known or 'by mammo_tl or detectron2'}), not as {path}: choose another name")
            continue
        if not os.path.exists(path):
            raise DatasetError(f"DATASETS.REGISTER_JSON: {path} (for {name}) not found; it is written by "
                               "tools/prepare_dataset.py / tools/split_dataset.py (see datasets/README.md)")
        register_records(name, lambda p=path: load_records(p), class_names=_classes_in(path), records_file=path)


def read_csv_rows(path: str | os.PathLike, required: Iterable[str], delimiter: str = ",",
                  hint: str = "") -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number from 1, row with stripped values) of a UTF-8 CSV whose header must hold
    ``required``; otherwise raise DatasetError naming the file (and the missing columns or bad row)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}: unknown column set, missing column(s) {missing}{hint}")
            for i, raw in enumerate(reader, start=1):
                yield i, {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
    except FileNotFoundError:
        raise DatasetError(f"{path}: CSV file not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8 (e.g. from Latin-1: "
                           f"iconv -f latin1 -t utf-8)") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: malformed CSV ({e})") from None
