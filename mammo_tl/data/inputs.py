"""Input files of tools/predict.py: which files, their pixels, and who, which breast and which view each
shows (the --patients CSV, the DICOM header, the file name), with where each came from."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dicom_header
from .image_checks import has_dicom_preamble
from .image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_stored_image_identified

if TYPE_CHECKING:
    from pydicom import Dataset

    from .resolution import ResolutionRequest

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")
_NAME = re.compile(r"^(?P<patient>.+)_(?P<lat>[LR])_(?P<view>CC|MLO)$", re.IGNORECASE)
# Smaller images hold no mammogram: the model would see a few pixels blown up to its input size.
MIN_IMAGE_SIDE = 32
UNKNOWN_PATIENT_PREFIX = "unknown:"
# Where a patient id, side or view came from, as predictions.json names it ("dicom:<keyword>" besides).
SOURCES = ("patients_csv", "cbis_ddsm_patient_id", "file_name", "unknown", "conflict")
PATIENTS_CSV_COLUMNS = ("file", "patient_id", "laterality", "view")
# Pixel values beyond this magnitude are refused: the model's windowing and resizing compute in float32, where
# differences and sums of such values overflow to infinity (NaN model input). Stored mammograms hold at most
# 65535 (a few thousand after rescaling).
MAX_PIXEL_MAGNITUDE = 1e30
# The most UTF-8 bytes of a file's name kept in :func:`image_key` (file systems allow 255 per name; the key
# gets a hash and a suffix besides).
KEY_STEM_BYTES = 100


class SkippedImage(Exception):
    """An input that is not predicted; ``kind`` is a short category for counts, ``reason`` the full text."""

    def __init__(self, path, kind, reason):
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(f"{path}: {reason}")


class PatientsCsvError(ValueError):
    """A --patients CSV that cannot be used; the message names the file, the row and what was expected."""


def _inside(path, folders):
    real = os.path.realpath(path)
    return any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def _found_in_folder(root, names):
    """The input files among ``names`` in ``root``: an image suffix, or (PACS exports often have no suffix) a
    name without one whose bytes start with the DICOM preamble; other files are left out."""
    found = []
    for n in sorted(names):
        path = os.path.join(root, n)
        if n.lower().endswith(IMAGE_SUFFIXES) or (not os.path.splitext(n)[1] and has_dicom_preamble(path)):
            found.append(path)
    return found


def list_inputs(paths: Iterable[str], exclude: Iterable[str | None] = ()) -> tuple[list[str], int]:
    """Files given directly, plus image files found (recursively, sorted) in folders: names with an image
    suffix, and names without a suffix that hold a DICOM file (its DICM preamble); a file reached twice
    (a folder and a file in it) is listed once. Files in the folders ``exclude`` (predict's own output
    folders, whose overlays are images too) are left out, with a warning giving their number; the count is
    the second value returned."""
    files, excluded = [], 0
    folders = [os.path.realpath(f) for f in exclude if f]
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                found = _found_in_folder(root, names)
                if folders and _inside(root, folders):
                    excluded += len(found)
                    continue
                files += found
        elif os.path.lexists(p):
            if folders and _inside(p, folders):
                excluded += 1
                continue
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p!r} does not exist")
    if excluded:
        logger.warning("%d image file(s) inside the output folders (%s) left out of the inputs", excluded,
                       ", ".join(f for f in exclude if f))
    seen, unique = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if len(unique) < len(files):
        logger.warning("%d input file(s) given more than once, predicted once", len(files) - len(unique))
    return unique, excluded


def printable_name(name: str) -> str:
    """``name`` (a file name as the OS gave it) as text every output can hold: bytes that are not UTF-8
    (held by Python as lone surrogates) become \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_key(path: str | os.PathLike) -> str:
    """A name unique to the file, for overlays and unknown patients: its stem and a hash of its full path
    (a/x.dcm and b/x.dcm differ). The stem is made valid UTF-8 (:func:`printable_name`), without path
    separators, and cut to :data:`KEY_STEM_BYTES` bytes, so the key is always a usable file name."""
    stem = printable_name(os.path.splitext(os.path.basename(path))[0]).replace(os.sep, "_")
    stem = stem.encode("utf-8")[:KEY_STEM_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}_{digest}"


def read_regular_file(path: str | os.PathLike, error: type[Exception] = PatientsCsvError) -> bytes:
    """The bytes of ``path``, read once; ``error`` naming it for anything but a regular file (a FIFO or
    ``<(...)`` would block or read differently on a second look) or a file that cannot be read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            what = "a FIFO or pipe" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) \
                else "not a file"
            raise error(f"{path}: not a regular file ({what}); give a file saved on disk")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None


def read_patients_csv(path: str, data: bytes | None = None) -> dict[str, dict[str, Any]]:
    """--patients: {real path of an image: {"patient_id", "laterality", "view", "row"}} from a CSV with the
    columns file, patient_id and optionally laterality (L/R/LEFT/RIGHT) and view (one of
    :data:`~mammo_tl.data.dicom_header.VIEWS`). ``file`` is absolute or relative to the CSV's folder; an empty
    laterality or view leaves it to the image's header or name. ``data``: the file's bytes, when already
    read (see :func:`read_regular_file`). Raises :class:`PatientsCsvError` naming the file and row at
    fault, and for anything but a regular file."""
    base = os.path.dirname(os.path.abspath(path))
    if data is None:
        data = read_regular_file(path)
    try:
        with io.TextIOWrapper(io.BytesIO(data), newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            unknown = [h for h in header if h not in PATIENTS_CSV_COLUMNS]
            if unknown:
                raise PatientsCsvError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; expected "
                                       f"file, patient_id and optionally laterality, view")
            missing = [c for c in PATIENTS_CSV_COLUMNS[:2] if c not in header]
            if missing:
                raise PatientsCsvError(f"{path}: no {' or '.join(missing)} column (header: "
                                       f"{', '.join(header) or 'empty file'}); expected file, patient_id and "
                                       f"optionally laterality, view")
            reader.fieldnames = header
            entries, rows = {}, {}
            for record in reader:
                row = reader.line_num
                if None in record:
                    raise PatientsCsvError(f"{path}: row {row} has more cells than the header's {len(header)}")
                entry = _patients_csv_entry(path, row, record, base)
                key = os.path.realpath(entry["path"])
                if key in rows:
                    raise PatientsCsvError(f"{path}: rows {rows[key]} and {row} both name {record['file']!r}")
                rows[key] = row
                entries[key] = entry
    except OSError as e:
        raise PatientsCsvError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise PatientsCsvError(f"{path}: not a UTF-8 CSV file ({type(e).__name__}: {e})") from None
    if not entries:
        raise PatientsCsvError(f"{path}: no rows under the header")
    return entries


def _patients_csv_entry(path, row, record, base):
    values = {k: (record.get(k) or "").strip() for k in PATIENTS_CSV_COLUMNS}
    if not values["file"]:
        raise PatientsCsvError(f"{path}: row {row}: file is empty")
    if not values["patient_id"]:
        raise PatientsCsvError(f"{path}: row {row} ({values['file']}): patient_id is empty")
    side = dicom_header.side(values["laterality"])
    if values["laterality"] and not side:
        raise PatientsCsvError(f"{path}: row {row} ({values['file']}): laterality {values['laterality']!r}; "
                               f"expected L, R, LEFT, RIGHT or empty")
    view = values["view"].upper()
    if view and view not in dicom_header.VIEWS:
        raise PatientsCsvError(f"{path}: row {row} ({values['file']}): view {values['view']!r}; expected one of "
                               f"{', '.join(dicom_header.VIEWS)} or empty")
    file = values["file"] if os.path.isabs(values["file"]) else os.path.join(base, values["file"])
    return {"path": file, "patient_id": values["patient_id"], "laterality": side, "view": view, "row": row}


def _from_file_name(path):
    """{"patient_id", "laterality", "view"} from a name <patient>_<L|R>_<CC|MLO> or a CBIS-DDSM PatientID
    used as the name; {} otherwise."""
    stem = printable_name(os.path.splitext(os.path.basename(path))[0])
    cbis = dicom_header.parse_cbis_ddsm_patient_id(stem)
    if cbis:
        return cbis
    m = _NAME.match(stem)
    return {"patient_id": m["patient"], "laterality": m["lat"].upper(), "view": m["view"].upper()} if m else {}


def identify(path: str, header: Dataset | None = None, patient: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Who, which breast and which view an input shows: {"patient_id", "laterality", "view", "source",
    "laterality_conflict", "patient_conflict", "issuer_of_patient_id"}. Each of patient_id, laterality and view is
    taken from the first that gives it: the --patients CSV entry ``patient``, the DICOM ``header`` (its own fields,
    and a CBIS-DDSM PatientID), the file name; ``source`` says which for each ("patients_csv", "dicom:<keyword>",
    "cbis_ddsm_patient_id", "file_name" or "unknown").

    A CSV laterality that the header contradicts (L against R) is not used, nor is the header's: the
    laterality is "" with source "conflict", so no output states a side, and ``laterality_conflict`` is
    {"patients_csv": side, <the header's source>: side}; None otherwise. Likewise a CSV patient_id that the
    header's PatientID contradicts (compared as splits compare ids: case, spaces and Unicode forms aside): the
    patient_id is "" with source "conflict" (the image is then a patient of its own, never merged with either
    patient's images) and ``patient_conflict`` is {"patients_csv": id, <the header's source>: id}.
    ``issuer_of_patient_id``: the header's IssuerOfPatientID when the patient id is the header's (or the CSV's
    agreeing with it), else "": one PatientID from two issuers is two patients."""
    from .datasets.common import patient_key

    candidates = []
    if patient:
        candidates.append({k: (patient[k], "patients_csv") for k in ("patient_id", "laterality", "view")})
    from_header = dicom_header.identify(header) if header is not None else None
    if from_header is not None:
        candidates.append(from_header)
    candidates.append({k: (v, "file_name") for k, v in _from_file_name(path).items()})
    values, source = {}, {}
    for key in ("patient_id", "laterality", "view"):
        values[key], source[key] = next(((c[key][0], c[key][1]) for c in candidates if c.get(key, ("",))[0]),
                                        ("", "unknown"))
    laterality_conflict = patient_conflict = None
    if patient and patient.get("laterality") and from_header is not None:
        side, where = from_header["laterality"]
        if side and side != patient["laterality"]:
            laterality_conflict = {"patients_csv": patient["laterality"], where: side}
            values["laterality"], source["laterality"] = "", "conflict"
    header_id, header_source = from_header["patient_id"] if from_header is not None else ("", None)
    if patient and patient.get("patient_id") and header_id \
            and patient_key(patient["patient_id"]) != patient_key(header_id):
        patient_conflict = {"patients_csv": patient["patient_id"], header_source: header_id}
        values["patient_id"], source["patient_id"] = "", "conflict"
    issuer = dicom_header.issuer_of_patient_id(header) if header_id and values["patient_id"] else ""
    return {**values, "source": source, "laterality_conflict": laterality_conflict,
            "patient_conflict": patient_conflict, "issuer_of_patient_id": issuer}


def describe(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, patient: Mapping[str, Any] | None = None,
             resolution: ResolutionRequest | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(image, meta) of an input file. meta: patient_id, laterality, view and their ``source`` (see
    :func:`identify`; ``patient`` is the file's --patients CSV entry, if any), ``laterality_conflict``,
    ``patient_conflict``, ``issuer_of_patient_id``, and
    ``file_size``, ``file_mtime_ns``, ``file_sha256`` of the bytes decoded (see
    :func:`~mammo_tl.data.image_io.read_stored_image_identified`). A missing patient id becomes
    ``unknown:<image_key>`` (never shared by two files) with ``meta["unknown_patient"]`` True. The image
    may come back in its stored integer type. Raises :class:`SkippedImage` for a file the readers refuse
    (not a regular file, more than ``max_pixels`` pixels, unreadable, changed while read), one smaller than
    MIN_IMAGE_SIDE or a constant one. ``resolution``: a JPEG 2000 DICOM is decoded at the level it picks; the
    image is then smaller than the stored one and ``meta["decode_geometry"]`` maps it (see
    :func:`~mammo_tl.data.dicom.read_dicom`)."""
    path = str(path)
    try:
        (image, meta, header), identity = read_stored_image_identified(path, max_pixels=max_pixels,
                                                                       keep_integers=True, resolution=resolution)
    except ImageReadError as e:
        raise SkippedImage(path, e.kind, e.cause) from None
    meta = dict(meta)
    meta["file_size"], meta["file_mtime_ns"], meta["file_sha256"] = identity
    meta.update(identify(path, header, patient))
    meta["unknown_patient"] = not meta["patient_id"]
    if meta["unknown_patient"]:
        meta["patient_id"] = UNKNOWN_PATIENT_PREFIX + image_key(path)
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise SkippedImage(path, "too_small", f"{image.shape[1]} x {image.shape[0]} pixels, smaller than "
                                              f"{MIN_IMAGE_SIDE} pixels on a side: not a mammogram")
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise SkippedImage(path, "non_finite", "pixel values that are not finite numbers (NaN or infinity)")
    if max(abs(lo), abs(hi)) > MAX_PIXEL_MAGNITUDE:
        raise SkippedImage(path, "non_finite", f"pixel values from {lo:g} to {hi:g}, beyond +-{MAX_PIXEL_MAGNITUDE:g}: "
                                               "windowing and resizing them overflow (no mammogram holds such values)")
    if not hi > lo:
        raise SkippedImage(path, "constant_image", f"every pixel is {lo:g}: nothing to detect")
    meta["min"], meta["max"] = lo, hi
    return image, meta
