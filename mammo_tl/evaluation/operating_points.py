"""Operating points: decision thresholds on patient scores, chosen on a validation set, never on test.

A patient is recalled when its score (the highest box score over its images) is above the threshold, as in
the paper. Named points:

* ``paper_0.5``: the paper's fixed threshold;
* ``sensitivity_<s>``: the highest threshold whose validation sensitivity is at least s (the most specific
  way to reach it);
* ``specificity_<s>``: the lowest threshold whose validation specificity is at least s (the most sensitive);
* ``youden``: the threshold maximising sensitivity + specificity - 1 (the highest among ties).

Thresholds are taken between distinct validation scores (midpoints), so the rule "score above threshold"
gives exactly the validation figures stored with each point. The file ``operating_points.json`` is written
beside the weights and keyed by their sha256: it is refused for any other weights.
"""
from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..files import atomic_write_json, sha256_file
from .metrics import _as_arrays, _point_metrics, patient_metrics

FILE_NAME = "operating_points.json"
FORMAT_VERSION = 1


class OperatingPointError(ValueError):
    """A missing, unknown or mismatched operating point; the message names the file and the point."""


def _candidates(s: np.ndarray) -> np.ndarray:
    """Thresholds that separate every pair of distinct scores, plus one below all and one above all."""
    u = np.unique(s)
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] - 1.0], mids, [u[-1]]])


def choose_operating_points(scores: Mapping, labels: Mapping, sensitivities: Sequence[float] = (0.90, 0.95),
                            specificities: Sequence[float] = (0.90,)) -> dict[str, dict]:
    """name -> {"threshold", "validation": {sensitivity, specificity, accuracy, tp, fp, tn, fn}} chosen on the
    given (validation) patients. A target that no threshold reaches is left out, with the reason under
    ``"unreachable"``."""
    _, y, s = _as_arrays(scores, labels)
    if not (0 < y.sum() < len(y)):
        raise OperatingPointError(f"choosing operating points needs positive and negative patients; the "
                                  f"validation set has {int(y.sum())} positive of {len(y)}")
    cands = _candidates(s)
    table = [(float(t), _point_metrics(y, s, float(t))) for t in cands]
    points, unreachable = {"paper_0.5": (0.5, _point_metrics(y, s, 0.5))}, {}
    # the most specific threshold reaching a sensitivity is the highest, the most sensitive reaching a
    # specificity the lowest
    for metric, targets, pick in (("sensitivity", sensitivities, max), ("specificity", specificities, min)):
        for target in targets:
            ok = [(t, m) for t, m in table if m[metric] >= target - 1e-12]
            if ok:
                points[f"{metric}_{target:g}"] = pick(ok, key=lambda tm: tm[0])
            else:
                unreachable[f"{metric}_{target:g}"] = "no threshold reaches it"
    best = max(m["sensitivity"] + m["specificity"] - 1.0 for _, m in table)
    points["youden"] = max(((t, m) for t, m in table if m["sensitivity"] + m["specificity"] - 1.0 >= best - 1e-12),
                           key=lambda tm: tm[0])
    out = {name: {"threshold": t, "validation": {k: m[k] for k in ("sensitivity", "specificity", "accuracy",
                                                                    "tp", "fp", "tn", "fn")}}
           for name, (t, m) in points.items()}
    if unreachable:
        out["unreachable"] = unreachable
    return out


def write_operating_points(points: dict[str, Any], weights_path: str, validation_dataset: str, num_patients: int,
                           path: str | None = None) -> str:
    """Write ``operating_points.json`` beside the weights (or at ``path``); returns the path."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(weights_path)), FILE_NAME)
    unreachable = points.pop("unreachable", {})
    atomic_write_json({"format_version": FORMAT_VERSION, "weights": os.path.abspath(weights_path),
                       "weights_sha256": sha256_file(weights_path), "validation_dataset": validation_dataset,
                       "validation_patients": num_patients, "points": points, "unreachable": unreachable},
                      path, indent=1)
    return path


# Scores are in [0, 1]; a threshold below every validation score is written as (lowest score - 1), so a
# stored threshold lies in [-1, 1] (below 0: every patient is recalled).
THRESHOLD_RANGE = (-1.0, 1.0)


def describe_threshold(threshold: float) -> str:
    """A stored threshold in words for a tool's output: "recall above 0.42", or, for one below 0 (below every
    score a model gives), that every patient is recalled."""
    if threshold < 0:
        return f"threshold {threshold:g}, below every score: recalls every patient and every breast"
    return f"recall above {threshold:g}"


def load_operating_points(path: str, weights_path: str | None = None,
                          weights_sha256: str | None = None) -> dict[str, Any]:
    """The ``points`` of an operating_points.json, checked against ``weights_path`` (by sha256) when given, or
    against ``weights_sha256`` (the digest of weights no longer at hand: an archived run's).
    Every threshold must be a number (not a boolean) in :data:`THRESHOLD_RANGE`; the file must be a regular
    file (a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise OperatingPointError(f"{path}: no operating points file; write it with tools/operating_points.py "
                                  "on a validation set") from None
    except OSError as e:
        raise OperatingPointError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise OperatingPointError(f"{path}: not a regular file (a FIFO, pipe or folder); give the "
                                  f"operating_points.json file itself")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except OSError as e:
        raise OperatingPointError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OperatingPointError(f"{path}: not a valid operating points file ({e})") from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, dict) or not points:
        raise OperatingPointError(f"{path}: holds no operating points")
    lo, hi = THRESHOLD_RANGE
    for name, p in points.items():
        t = p.get("threshold") if isinstance(p, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise OperatingPointError(f"{path}: point {name!r} has no finite threshold (it is {t!r})")
        if not lo <= t <= hi:
            raise OperatingPointError(f"{path}: point {name!r} has threshold {t!r}, outside [{lo:g}, {hi:g}] "
                                      f"(scores are in [0, 1])")
    if weights_sha256 is None and weights_path is not None:
        weights_sha256 = sha256_file(weights_path)
    if weights_sha256 is not None and data.get("weights_sha256") != weights_sha256:
        raise OperatingPointError(f"{path} was chosen for other weights ({data.get('weights')}), not "
                                  f"{weights_path}: choose the points again for these weights")
    return data


def metrics_at_points(scores: Mapping, labels: Mapping, points: Mapping, bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, dict]:
    """name -> patient_metrics at each point's threshold (test figures for thresholds chosen elsewhere)."""
    return {name: patient_metrics(scores, labels, float(p["threshold"]), bootstrap, seed)
            for name, p in points.items()}
