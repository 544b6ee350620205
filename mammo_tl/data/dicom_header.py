"""What a DICOM header says about its image, read without the pixels: patient, breast, view and the UIDs
that place it in its study.

The header dataset returned by :func:`read_header` holds every identifying field of the source. Only the
DICOM writers (:mod:`mammo_tl.outputs.dicom_pr`, :mod:`mammo_tl.outputs.dicom_sr`) pass it on; what the
rest of mammo_tl takes from it is the patient id, the side and the view, each with where it came from.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .image_checks import ImageReadError, check_regular_file, read_whole_file

if TYPE_CHECKING:
    from pydicom import Dataset

# The mammography views (ACR MQCM abbreviations, the values View Position uses) and their codes in the View
# Code Sequence: SNOMED CT and the older SNOMED RT ids of DICOM CID 4014 "View for Mammography" (the Y-X
# codes are the deprecated ones of that group's first version).
_VIEW_CODES = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399099002": "LMO", "R-10230": "LMO",
    "399192008": "XCCL", "R-1024A": "XCCL", "Y-X1770": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM", "Y-X1771": "XCCM",
    "R-10244": "FB", "R-102D0": "SIO", "R-40AAA": "ISO",
}
_SNOMED_SCHEMES = ("SCT", "SRT", "SNM3")
VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "ISO")
_SIDES = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}

# TCIA's CBIS-DDSM PatientID: data set (abnormality, split), patient, side and view in one string, plus the
# abnormality number on ROI and crop files.
CBIS_DDSM_PATIENT_ID = re.compile(
    r"^(?P<abnormality>Mass|Calc)-(?P<split>Training|Test)_(?P<patient>P_\d{5})_(?P<side>LEFT|RIGHT)_"
    r"(?P<view>CC|MLO)(?:_(?P<number>\d+))?$", re.IGNORECASE)

# What a DICOM output must reference to place its content on the source image.
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# The patient module's identifying attributes: a report is one patient's when its images agree on all of them.
PATIENT_MODULE = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")
# PS3.5 9.1: components of digits without leading zeros (0 alone allowed), joined by dots; at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pydicom's warnings about malformed elements quote the values, names included: neither warned nor
    logged while this is active."""
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def read_header(path: str | os.PathLike) -> Dataset:
    """The pydicom dataset of ``path`` up to its pixel data. Raises
    :class:`~mammo_tl.data.image_checks.ImageReadError` naming the file when it is not a readable DICOM."""
    import pydicom

    path = str(path)
    check_regular_file(path)
    with quiet():
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # truncated or mangled headers surface as many exception types
            raise ImageReadError(path, f"DICOM header cannot be read ({type(e).__name__})") from None


def read_header_and_hash(path: str | os.PathLike) -> tuple[Dataset, str, int]:
    """(header, sha256 hex, size in bytes) of ``path`` from one read of its bytes: the header is parsed from the
    very bytes that are hashed, so a file replaced between the two cannot pair one file's header with another's
    hash. Raises :class:`~mammo_tl.data.image_checks.ImageReadError` as :func:`read_header` does."""
    import pydicom

    path = str(path)
    check_regular_file(path)
    data, identity = read_whole_file(path)
    with quiet():
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as e:  # truncated or mangled headers surface as many exception types
            raise ImageReadError(path, f"DICOM header cannot be read ({type(e).__name__})") from None
    return header, identity.sha256, identity.size


def uid_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid DICOM UID (PS3.5 9.1: at most 64 characters, digit components without
    leading zeros joined by dots), or None when it is one. The value itself is never quoted."""
    text = str(value)
    if len(text) > 64:
        return f"{len(text)} characters, over 64"
    if not _UID.fullmatch(text):
        return "not digits and dots, or a component with a leading zero"
    return None


def invalid_references(ds: Dataset) -> list[tuple[str, str]]:
    """[(keyword, why)] for each of :data:`REFERENCE_UIDS` the header holds but that is not a valid UID."""
    out = []
    for keyword in REFERENCE_UIDS:
        value = _text(ds, keyword)
        why = uid_problem(value) if value else None
        if why:
            out.append((keyword, why))
    return out


def patient_module(ds: Dataset) -> tuple[str, ...]:
    """The values of :data:`PATIENT_MODULE` as text ("" when absent), leading and trailing spaces removed."""
    return tuple(_text(ds, k) for k in PATIENT_MODULE)


def _text(ds, keyword):
    with quiet():
        try:
            v = ds.get(keyword)
        except Exception:  # a damaged element fails when its value is decoded: the same as absent
            return ""
    return "" if v is None else str(v).strip()


def side(value: Any) -> str:
    """"L" or "R" for L/R/LEFT/RIGHT in any case, else "" (U unpaired, B both and anything else)."""
    return _SIDES.get(str(value or "").strip().upper(), "")


def laterality(ds: Dataset) -> tuple[str, str | None]:
    """(side, source) from ImageLaterality, then Laterality (series level), then the FrameLaterality of an
    enhanced image's shared frame anatomy; ("", None) when none holds L or R."""
    for keyword in ("ImageLaterality", "Laterality"):
        s = side(_text(ds, keyword))
        if s:
            return s, f"dicom:{keyword}"
    try:
        frame = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
        s = side(_text(frame, "FrameLaterality"))
    except (AttributeError, IndexError, TypeError, KeyError):
        s = ""
    return (s, "dicom:FrameLaterality") if s else ("", None)


def view_from_code(item: Dataset) -> str:
    """The view abbreviation of a coded view (an item with CodeValue and CodingSchemeDesignator), or ""."""
    scheme = _text(item, "CodingSchemeDesignator").upper()
    if scheme not in _SNOMED_SCHEMES:
        return ""
    return _VIEW_CODES.get(_text(item, "CodeValue").upper(), "")


def view(ds: Dataset) -> tuple[str, str | None]:
    """(view, source): the coded View Code Sequence (Type 1 in the mammography IOD), then View Position
    when it holds one of :data:`VIEWS`; ("", None) otherwise."""
    try:
        items = list(ds.get("ViewCodeSequence") or [])
    except Exception:
        items = []
    for item in items[:1]:
        v = view_from_code(item)
        if v:
            return v, "dicom:ViewCodeSequence"
    v = _text(ds, "ViewPosition").upper()
    if v in VIEWS:
        return v, "dicom:ViewPosition"
    return "", None


def parse_cbis_ddsm_patient_id(text: str | None) -> dict[str, str] | None:
    """{"patient_id": "P_xxxxx", "laterality": "L"|"R", "view": "CC"|"MLO"} for a CBIS-DDSM PatientID such
    as ``Mass-Test_P_00820_LEFT_CC`` (or ``..._CC_1``); None for anything else."""
    m = CBIS_DDSM_PATIENT_ID.match(str(text or "").strip())
    if not m:
        return None
    return {"patient_id": m["patient"].upper(), "laterality": side(m["side"]), "view": m["view"].upper()}


def identify(ds: Dataset) -> dict[str, tuple[str, str | None]]:
    """{"patient_id": (value, source), "laterality": (...), "view": (...)} from the header alone: a
    CBIS-DDSM PatientID gives its patient, and its side and view where the header's own fields hold none.
    Values are "" with source None when the header does not say."""
    raw_id = _text(ds, "PatientID")
    cbis = parse_cbis_ddsm_patient_id(raw_id)
    out = {"patient_id": (cbis["patient_id"], "cbis_ddsm_patient_id") if cbis
           else ((raw_id, "dicom:PatientID") if raw_id else ("", None)),
           "laterality": laterality(ds), "view": view(ds)}
    for key in ("laterality", "view"):
        if not out[key][0] and cbis:
            out[key] = (cbis[key], "cbis_ddsm_patient_id")
    return out


def issuer_of_patient_id(ds: Dataset) -> str:
    """The header's IssuerOfPatientID (surrounding spaces stripped), "" when absent or empty."""
    return _text(ds, "IssuerOfPatientID")


def missing_references(ds: Dataset) -> list[str]:
    """The names of :data:`REFERENCE_UIDS` the header lacks (empty values count as missing)."""
    return [k for k in REFERENCE_UIDS if not _text(ds, k)]
