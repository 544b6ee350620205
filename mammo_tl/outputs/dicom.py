"""DICOM results of a run: per source image a Grayscale Softcopy Presentation State (:mod:`.dicom_pr`), per
study a TID 1500 measurement report (:mod:`.dicom_sr`), written with highdicom into one folder.

Both reference the source study, series and image by their UIDs and carry the source's patient and study
modules as the source holds them (Type 2 attributes it lacks are present and empty, as the IODs require).
"Reported" boxes are those of the prediction record: every box at or above --min-score.

What is trusted, and what is left out (still predicted; counted in the summary by reason and named per image):

* the header is read from the same bytes that are hashed; when the prediction record carries the sha256 of the
  file whose pixels were predicted (``file_sha256``), an image whose file differs now gets no DICOM output
  (``changed_since_predicted``); records without it (runs before the hash was recorded) are used unchecked
  and counted (``unverified_images``);
* inputs that are not DICOM, whose header lacks a Study, Series, SOP Instance or SOP Class UID, or holds one
  that is not a valid UID (PS3.5 9.1), are left out (``not_dicom``, ``missing_uids``, ``invalid_uids``);
* images whose SOP Instance UID another input shares (copies included) are all left out
  (``duplicate_sop_instance_uid``): one UID names one image, and their outputs would reference either;
* an image with a box outside its Rows x Columns is left out (``boxes_outside_image``): its boxes do not
  describe this image;
* a report is one patient's: a study whose images disagree on the patient module (PatientID, issuer, name,
  birth date, sex) gets no report (counted in ``studies_without_report`` and warned about by file names,
  never by the values); its images keep their presentation states;
* a study in which no image has a box gets no report (``studies_without_boxes``): OHIF Viewer fails on a
  report without measurements; its presentation states say that none is at or above the threshold.

Both name the algorithm in their Contributing Equipment Sequence, as the IHE AI Results profile asks
(:func:`.dicom_common.add_contributing_equipment`: manufacturer, model = the config, software version, the
weights' sha256 as serial number, a Device UID of config and weights; the report's observer device is the same).

UIDs are derived from what the object shows (name-based UUIDs under the 2.25 root): writing the same results
again, e.g. after --resume, gives the same objects, never a second copy of them in an archive.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.dicom_header import (PATIENT_MODULE, invalid_references, missing_references, patient_module, quiet,
                                 read_header_and_hash)
from ..data.image_checks import ImageReadError, is_dicom_path
from . import OutputError
from .dicom_common import Algorithm, derived_uid  # Algorithm: part of this module's API

logger = logging.getLogger(__name__)
def _refused(what, e):
    # highdicom's message may quote the header value it refused, a name say: only its type is passed on
    return (f"{what} not made: highdicom refused the source header ({type(e).__name__}); check the source "
            f"with dcmdump")


def _save(ds, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise OutputError(f"{path}: cannot be written ({type(e).__name__}: {e})") from None


def is_output_file(name: str) -> bool:
    """A file name this module writes."""
    return name.startswith(("PR_", "SR_")) and name.endswith(".dcm")


def sr_file_name(study_uid: str) -> str:
    return f"SR_{hashlib.sha1(str(study_uid).encode()).hexdigest()[:16]}.dcm"


def write_dicom_outputs(folder: str, items: Sequence[tuple[Mapping[str, Any], str]], algorithm: Algorithm,
                        previous_reports: Mapping[str, Any] | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """Write the presentation states and reports of a run into ``folder``.

    ``items``: (prediction record, name) per predicted image in input order; the name is unique to the file
    (its GSPS is ``PR_<name>.dcm``). Headers are read again here, from the bytes whose sha256 is compared with
    the record's ``file_sha256`` when it has one. ``previous_reports``: {Study Instance UID: the header of the
    report sent earlier for it}, which a new report of that study names as its predecessor; None: the report
    this folder already holds for the study, if any (an earlier run, or --resume). Returns ({file name:
    {"presentation_state", "report"} (and "report_skipped" with why), or {"skipped", "reason"} for an image
    without DICOM output}, counts for summary.json)."""
    with quiet():
        return _write_dicom_outputs(folder, items, algorithm, previous_reports)


def report_reference(path: str) -> Any | None:
    """The header of the report at ``path`` (what a successor names: patient, study, series, SOP class and
    instance UIDs), or None when there is none, or it is not a readable SR."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            *PATIENT_MODULE, "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "Modality",
            "PredecessorDocumentsSequence"])
    except (OSError, ValueError, TypeError, AttributeError, EOFError, InvalidDicomError):
        return None
    if ds.get("Modality") != "SR" or missing_references(ds):
        return None
    return ds


def _named_predecessors(report):
    """The reports ``report``'s Predecessor Documents Sequence names, as headers highdicom takes."""
    from pydicom import Dataset

    out = []
    for study in report.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for sop in series.get("ReferencedSOPSequence", []):
                ds = Dataset()
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study.StudyInstanceUID, series.SeriesInstanceUID
                ds.SOPClassUID, ds.SOPInstanceUID = sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID
                out.append(ds)
    return out


def _predecessors(earlier, header, study_uid, uid):
    """What the report ``uid`` of the study names as predecessors: the earlier report and those it named when
    it is another report of this study about the same patient (every report it replaces, also one that was
    never delivered); what the earlier one named when it is this same report (written again); else nothing.
    An earlier report about another patient (the study's patient corrected since) is not named, and warned
    about."""
    if earlier is None or str(earlier.StudyInstanceUID) != study_uid:
        return []
    if str(earlier.SOPInstanceUID) == uid:
        return _named_predecessors(earlier)
    if patient_module(earlier) != patient_module(header):
        logger.warning("study %s: its patient identity changed since its earlier report (%s): the new report does "
                       "not name that one, filed under the earlier identity: remove it there", study_uid,
                       earlier.SOPInstanceUID)
        return []
    return [earlier, *(p for p in _named_predecessors(earlier) if str(p.SOPInstanceUID) != uid)]


def _image_size(header):
    try:
        rows, cols = int(header.Rows), int(header.Columns)
    except (AttributeError, TypeError, ValueError):
        return None
    return (rows, cols) if rows > 0 and cols > 0 else None


def _boxes_outside(record, size):
    """How many of the record's boxes are not within [0, Columns] x [0, Rows] (non-finite or reversed included)."""
    import numpy as np

    boxes = np.asarray(record.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
    rows, cols = size
    # no tolerance: predicted boxes are clipped to the image, and rounding a coordinate <= Columns to 2 decimals
    # keeps it <= Columns; highdicom refuses a presentation state's point beyond the image anyway
    inside = (np.isfinite(boxes).all(1) & (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= cols)
              & (boxes[:, 3] <= rows) & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3]))
    return int((~inside).sum()), len(boxes)


def _check(record, path):
    """(header, None) for an image the DICOM outputs can describe, else (None, {"skipped", "reason"})."""
    if not is_dicom_path(path):
        return None, {"skipped": "not_dicom", "reason": "not a DICOM file: there is no study to reference"}
    try:
        header, sha256, _ = read_header_and_hash(path)
    except ImageReadError as e:
        return None, {"skipped": "header_unreadable", "reason": e.cause}
    expected = record.get("file_sha256")
    if expected is not None and sha256 != expected:
        return None, {"skipped": "changed_since_predicted",
                      "reason": "changed since predicted: the file's sha256 differs from that of the file whose "
                                "pixels were predicted; predict it again"}
    missing = missing_references(header)
    if missing:
        return None, {"skipped": "missing_uids", "reason": f"its header has no {', '.join(missing)}"}
    invalid = invalid_references(header)
    if invalid:
        return None, {"skipped": "invalid_uids", "reason": "its header's " + "; ".join(
            f"{k} is not a valid DICOM UID ({why})" for k, why in invalid)}
    size = _image_size(header)
    if size is None:
        return None, {"skipped": "missing_image_size", "reason": "its header has no valid Rows and Columns"}
    outside, n = _boxes_outside(record, size)
    if outside:
        return None, {"skipped": "boxes_outside_image",
                      "reason": f"{outside} of its {n} box(es) lie outside its {size[0]} x {size[1]} pixels "
                                "(Rows x Columns): they do not describe this image"}
    return header, None


def _write_dicom_outputs(folder, items, algorithm, previous_reports):
    from .dicom_pr import presentation_state
    from .dicom_sr import measurement_report, report_uid

    results, usable, unverified = {}, [], 0
    for record, name in items:
        path = record["file_name"]
        header, skipped = _check(record, path)
        if skipped:
            results[path] = skipped
            continue
        unverified += "file_sha256" not in record
        usable.append((record, header, name))

    if unverified:
        logger.warning("%d image(s) have no file_sha256 in their prediction record (a run before hashes were "
                       "recorded): their headers are not checked against the predicted pixels", unverified)
    by_uid = defaultdict(list)
    for record, header, _ in usable:
        by_uid[str(header.SOPInstanceUID)].append(record["file_name"])
    studies, duplicates = {}, 0
    for record, header, name in usable:
        path = record["file_name"]
        sharing = by_uid[str(header.SOPInstanceUID)]
        if len(sharing) > 1:
            others = [p for p in sharing if p != path]
            results[path] = {"skipped": "duplicate_sop_instance_uid",
                             "reason": f"its SOPInstanceUID is also that of {', '.join(others)}: one UID names one "
                                       "image, so none of them gets DICOM output"}
            duplicates += 1
            continue
        studies.setdefault(str(header.StudyInstanceUID), []).append((record, header, name))
    if duplicates:
        logger.warning("%d image(s) share a SOPInstanceUID with another input (copies of one file, or a source that "
                       "reuses UIDs): no DICOM output for them; see summary.json", duplicates)

    written = Counter()
    for study_uid, study in studies.items():
        for number, (record, header, name) in enumerate(study, 1):
            pr_series = derived_uid("PR series", patient_module(header), study_uid, algorithm.key())
            try:
                ds = presentation_state(header, record, algorithm, pr_series, number)
            except (ValueError, TypeError, AttributeError, KeyError) as e:  # a header highdicom cannot use
                reason = _refused("presentation state", e)
                results[record["file_name"]] = {"skipped": "not_encodable", "reason": reason}
                logger.warning("%s: %s", record["file_name"], reason)
                continue
            _save(ds, os.path.join(folder, f"PR_{name}.dcm"))
            results[record["file_name"]] = {"presentation_state": f"PR_{name}.dcm"}
            written["presentation_states"] += 1
        members = [m for m in study if "skipped" not in results[m[0]["file_name"]]]
        if not members:
            continue
        modules = [patient_module(h) for _, h, _ in members]
        if len(set(modules)) > 1:
            differ = [k for i, k in enumerate(PATIENT_MODULE) if len({m[i] for m in modules}) > 1]
            reason = (f"its study's images disagree on the patient ({', '.join(differ)} differ): one report is one "
                      "patient's, so none is made")
            for record, _, _ in members:
                results[record["file_name"]]["report_skipped"] = reason
            written["studies_without_report"] += 1
            written["studies_with_several_patients"] += 1
            logger.warning("%s: %s", ", ".join(r["file_name"] for r, _, _ in members), reason)
            continue
        if not any(r.get("boxes") for r, _, _ in members):
            reason = (f"no box in its study ({algorithm.reported}): no report, since OHIF Viewer fails on a report "
                      "without measurements; its presentation states say so")
            for record, _, _ in members:
                results[record["file_name"]]["report_skipped"] = reason
            written["studies_without_boxes"] += 1
            continue
        sr_series = derived_uid("SR series", modules[0], study_uid, algorithm.key())
        name = sr_file_name(study_uid)
        earlier = report_reference(os.path.join(folder, name)) if previous_reports is None \
            else previous_reports.get(study_uid)
        images = [(h, r) for r, h, _ in members]
        previous = _predecessors(earlier, members[0][1], study_uid, report_uid(images, algorithm))
        try:
            ds = measurement_report(images, algorithm, sr_series, 1, previous)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            reason = _refused("report", e)
            for record, _, _ in members:
                results[record["file_name"]]["report_skipped"] = reason
            written["studies_without_report"] += 1
            logger.warning("%s and %d more image(s) of its study: %s", members[0][0]["file_name"], len(members) - 1,
                           reason)
            continue
        _save(ds, os.path.join(folder, name))
        for record, _, _ in members:
            results[record["file_name"]]["report"] = name
        written["reports"] += 1
        written["images_in_reports"] += len(members)
    skipped = Counter(v["skipped"] for v in results.values() if "skipped" in v)
    summary = {"folder": folder, "presentation_states": written["presentation_states"],
               "reports": written["reports"], "images_in_reports": written["images_in_reports"],
               "studies_without_report": written["studies_without_report"],
               "studies_with_several_patients": written["studies_with_several_patients"],
               "studies_without_boxes": written["studies_without_boxes"],
               "images_without_dicom_output": sum(skipped.values()),
               "without_dicom_output_by_reason": dict(sorted(skipped.items())),
               "unverified_images": unverified}
    return results, summary
