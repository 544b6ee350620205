"""What tools/predict.py writes, one module per format, all fed by one prediction record per input image
(a line of predictions.jsonl):

    {"file_name", "status": "predicted", "patient_id", "unknown_patient", "laterality", "view",
     "source": {"patient_id": ..., "laterality": ..., "view": ...},
     "boxes": [[x1, y1, x2, y2], ...] (the original image's pixels), "scores": [...], "max_score", ["overlay"]}

or ``{"file_name", "status": "skipped", "kind", "reason"}``.

* :mod:`.tables`: predictions.json, patients.csv (with recall decisions at an operating point), skipped.json,
  summary.json;
* :mod:`.overlay`: PNGs of the image with its boxes drawn;
* :mod:`.dicom_pr`: a Grayscale Softcopy Presentation State per DICOM image;
* :mod:`.dicom_sr`: a TID 1500 measurement report (Comprehensive 3D SR) per study;
* :mod:`.dicom`: what the two DICOM writers share, and writing them for a whole run.

JSON, CSV, overlays and logs carry no more of the patient than the patient id; the DICOM objects carry the
source's patient module, as the viewers that show them beside the source need.
"""
from __future__ import annotations

import json
import os
from typing import Any


class OutputError(Exception):
    """An output that cannot be written; the message names the file and the cause."""


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except (OSError, UnicodeError) as e:  # UnicodeError: text the file's encoding cannot hold
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise OutputError(f"{path}: cannot be written ({type(e).__name__}: {e})") from None


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")
