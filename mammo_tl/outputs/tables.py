"""predictions.json, patients.csv, skipped.json and summary.json from the run's prediction records.

Scores: an image's score is its highest box score (``max_score``, 0 when no box is kept), a breast's the
highest over the patient's images of that side, a patient's the highest over all their images. At an
operating point a patient or breast is recalled when its score is above the point's threshold, the rule
the thresholds were chosen with (:mod:`mammo_tl.evaluation.operating_points`).

CSV cells: text that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return, e.g. a --patients id) is written with a leading ``'``, as OWASP's CSV injection
guidance says; the JSON files keep the text as it is.

Patients: images are one patient's when they share the patient id and the header's IssuerOfPatientID
(``issuer_of_patient_id`` of the record, absent for none): the same PatientID from two issuers (two hospitals'
numbering) is two patients, each with its own score and decision, and counted in summary.json
(``patient_ids_with_several_issuers``). patients.csv then has an ``issuer_of_patient_id`` column.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

RECALL, NO_RECALL = "recall", "no recall"
SIDES = (("L", "left"), ("R", "right"))
_RECORD_ONLY = ("status", "unknown_patient")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: Any) -> str:
    """``text`` safe to open in a spreadsheet: a leading ``'`` when it starts like a formula."""
    text = str(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def image_score(record: Mapping[str, Any]) -> float:
    """The image's highest box score; records of runs before ``max_score`` existed give it from ``scores``."""
    return float(record.get("max_score", max(record["scores"], default=0.0)))


def patient_of(record: Mapping[str, Any]) -> tuple[str, str]:
    """The key images are grouped into patients by: (patient id, IssuerOfPatientID or "")."""
    return record["patient_id"], record.get("issuer_of_patient_id") or ""


def decision(score: float, threshold: float) -> str:
    return RECALL if score > threshold else NO_RECALL


def build(files: Sequence[str], records: Mapping[str, Mapping[str, Any]],
          threshold: float | None = None) -> dict[str, Any]:
    """The tables of a run, in input order: {"predictions", "skipped", "patients", "summary"}.

    ``records``: file name -> prediction record (see :mod:`mammo_tl.outputs`). ``patients``: one dict per
    patient (sorted by id) with ``score`` and, per side seen, ``L``/``R`` scores; with ``threshold``, the
    predictions and patients also carry the recall decisions."""
    predictions, skipped, patients = [], [], {}
    for path in files:
        r = records[path]
        if r["status"] == "skipped":
            skipped.append({k: r[k] for k in ("file_name", "kind", "reason")})
            continue
        predictions.append({k: v for k, v in r.items() if k not in _RECORD_ONLY})
        p = patients.setdefault(patient_of(r), {"patient_id": r["patient_id"], "score": 0.0,
                                                **({"issuer_of_patient_id": r["issuer_of_patient_id"]}
                                                   if r.get("issuer_of_patient_id") else {})})
        s = image_score(r)
        p["score"] = max(p["score"], s)
        if r["laterality"] in ("L", "R"):
            p[r["laterality"]] = max(p.get(r["laterality"], 0.0), s)
    if threshold is not None:
        for p in patients.values():
            p["decision"] = decision(p["score"], threshold)
            for side, _ in SIDES:
                if side in p:
                    p[f"{side}_decision"] = decision(p[side], threshold)
        for e in predictions:
            p = patients[patient_of(e)]
            e["patient_decision"] = p["decision"]
            e["breast_decision"] = p.get(f"{e['laterality']}_decision")  # None: side unknown
    predicted = [records[p] for p in files if records[p]["status"] == "predicted"]
    by_reason = Counter(s["kind"] for s in skipped)
    summary = {
        "inputs": len(files), "predicted": len(predictions), "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "unknown_patient": sum(bool(r["unknown_patient"]) for r in predicted),
        "unknown_laterality": sum(r["laterality"] not in ("L", "R") for r in predicted),
        "laterality_conflicts": sum(bool(r.get("laterality_conflict")) for r in predicted),
        "patient_conflicts": sum(bool(r.get("patient_conflict")) for r in predicted),
        "patients": len(patients),
        "patient_ids_with_several_issuers": sum(n > 1 for n in Counter(pid for pid, _ in patients).values()),
    }
    return {"predictions": predictions, "skipped": skipped,
            "patients": [patients[k] for k in sorted(patients)], "summary": summary}


def recall_counts(patients: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{"patients_recalled", "breasts", "breasts_recalled"} of :func:`build`'s patients at a threshold."""
    breasts = [p[f"{side}_decision"] for p in patients for side, _ in SIDES if f"{side}_decision" in p]
    return {"patients_recalled": sum(p["decision"] == RECALL for p in patients), "breasts": len(breasts),
            "breasts_recalled": breasts.count(RECALL)}


def patients_csv(patients: Sequence[Mapping[str, Any]], with_decisions: bool = False) -> str:
    """patients.csv: patient_id, score; with decisions also decision and, per side, its score and decision
    (empty when no image of that side was predicted). When any patient has an IssuerOfPatientID, an
    ``issuer_of_patient_id`` column follows patient_id. Patient ids go through :func:`csv_cell`; a row with a
    carriage return in a cell is written fully quoted (csv quotes only the line terminator, a newline)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    issuers = any(p.get("issuer_of_patient_id") for p in patients)

    def who(p: Mapping) -> list[str]:
        return [csv_cell(p["patient_id"])] + ([csv_cell(p.get("issuer_of_patient_id", ""))] if issuers else [])

    head = ["patient_id"] + (["issuer_of_patient_id"] if issuers else [])
    if not with_decisions:
        rows = [[*head, "score"]] + [[*who(p), f"{p['score']:.6f}"] for p in patients]
    else:
        rows = [[*head, "score", "decision"]
                + [f"{name}_{k}" for _, name in SIDES for k in ("score", "decision")]]
        for p in patients:
            row = [*who(p), f"{p['score']:.6f}", p["decision"]]
            for side, _ in SIDES:
                row += [f"{p[side]:.6f}", p[f"{side}_decision"]] if side in p else ["", ""]
            rows.append(row)
    for row in rows:
        (quoted if any("\r" in c for c in row) else w).writerow(row)
    return buf.getvalue()
