"""DICOM results of a run: per source image a Grayscale Softcopy Presentation State (:mod:`.dicom_pr`), per
study a TID 1500 measurement report (:mod:`.dicom_sr`), written with highdicom into one folder.

Both reference the source study, series and image by their UIDs and carry the source's patient and study
modules as the source holds them (Type 2 attributes it lacks are present and empty, as the IODs require).
"Reported" boxes are those of the prediction record: every box at or above --min-score. Inputs that are
not DICOM, or whose header lacks a needed UID, are counted and left out here, and still predicted.

UIDs are derived from what the object shows (name-based UUIDs under the 2.25 root): writing the same results
again, e.g. after --resume, gives the same objects, never a second copy of them in an archive.
"""
import hashlib
import logging
import os
from collections import Counter

from ..data.dicom_header import missing_references, quiet, read_header
from ..data.image_checks import ImageReadError, is_dicom_path
from . import OutputError
from .dicom_common import Algorithm, derived_uid  # noqa: F401  (Algorithm: part of this module's API)

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


def is_output_file(name) -> bool:
    """A file name this module writes."""
    return (name.startswith("PR_") or name.startswith("SR_")) and name.endswith(".dcm")


def sr_file_name(study_uid) -> str:
    return f"SR_{hashlib.sha1(str(study_uid).encode()).hexdigest()[:16]}.dcm"


def write_dicom_outputs(folder, items, algorithm):
    """Write the presentation states and reports of a run into ``folder``.

    ``items``: (prediction record, name) per predicted image in input order; the name is unique to the file
    (its GSPS is ``PR_<name>.dcm``). Headers are read again here, without pixels. Returns ({file name:
    {"presentation_state", "report"}, or {"skipped", "reason"} for an image without DICOM output}, counts
    for summary.json)."""
    with quiet():
        return _write_dicom_outputs(folder, items, algorithm)


def _write_dicom_outputs(folder, items, algorithm):
    from .dicom_pr import presentation_state
    from .dicom_sr import measurement_report

    results, studies = {}, {}
    for record, name in items:
        path = record["file_name"]
        if not is_dicom_path(path):
            results[path] = {"skipped": "not_dicom", "reason": "not a DICOM file: there is no study to reference"}
            continue
        try:
            header = read_header(path)
        except ImageReadError as e:
            results[path] = {"skipped": "header_unreadable", "reason": e.cause}
            continue
        missing = missing_references(header)
        if missing:
            results[path] = {"skipped": "missing_uids", "reason": f"its header has no {', '.join(missing)}"}
            continue
        studies.setdefault(str(header.StudyInstanceUID), []).append((record, header, name))

    written = Counter()
    for study_uid, members in studies.items():
        pr_series = derived_uid("PR series", study_uid, algorithm.key())
        for number, (record, header, name) in enumerate(members, 1):
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
        patients = {str(h.get("PatientID", "")) for _, h, _ in members}
        if len(patients) > 1:
            reason = f"its study holds images of {len(patients)} different PatientIDs; no report made"
            for record, _, _ in members:
                results[record["file_name"]].setdefault("report_skipped", reason)
            written["studies_without_report"] += 1
            logger.warning("%s and %d more image(s): %s", members[0][0]["file_name"], len(members) - 1, reason)
            continue
        sr_series = derived_uid("SR series", study_uid, algorithm.key())
        try:
            ds = measurement_report([(h, r) for r, h, _ in members], algorithm, sr_series, 1)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            reason = _refused("report", e)
            for record, _, _ in members:
                results[record["file_name"]].setdefault("report_skipped", reason)
            written["studies_without_report"] += 1
            logger.warning("%s and %d more image(s) of its study: %s", members[0][0]["file_name"], len(members) - 1,
                           reason)
            continue
        name = sr_file_name(study_uid)
        _save(ds, os.path.join(folder, name))
        for record, _, _ in members:
            results[record["file_name"]]["report"] = name
        written["reports"] += 1
        written["images_in_reports"] += len(members)
    skipped = Counter(v["skipped"] for v in results.values() if "skipped" in v)
    summary = {"folder": folder, "presentation_states": written["presentation_states"],
               "reports": written["reports"], "images_in_reports": written["images_in_reports"],
               "studies_without_report": written["studies_without_report"],
               "images_without_dicom_output": sum(skipped.values()),
               "without_dicom_output_by_reason": dict(sorted(skipped.items()))}
    return results, summary
