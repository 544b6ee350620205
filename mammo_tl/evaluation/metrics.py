"""Clinical metrics as pure functions: per-patient classification (the paper's eq. 5) and FROC."""
from collections.abc import Mapping, Sequence

import numpy as np

PATIENT_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
# False positives per image at which FROC sensitivity is read (and the CPM averaged), the usual seven.
FROC_FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)


def _as_arrays(scores: Mapping, labels: Mapping):
    missing = sorted(set(labels) - set(scores), key=str)
    if missing:
        raise KeyError(f"no score for {len(missing)} labelled patient(s), e.g. {missing[:5]}: give every "
                       "patient a score (0 when none of its images has a box)")
    extra = sorted(set(scores) - set(labels), key=str)
    if extra:
        raise KeyError(f"{len(extra)} scored patient(s) have no label, e.g. {extra[:5]}")
    ids = sorted(labels, key=str)
    y = np.array([int(labels[i]) for i in ids])
    bad = sorted({int(v) for v in y} - {0, 1})
    if bad:
        raise ValueError(f"labels must be 0 or 1, got {bad}")
    s = np.array([float(scores[i]) for i in ids], dtype=np.float64)
    return ids, y, s


def _point_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    nan = float("nan")
    return {
        "auc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else nan,
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "accuracy": (tp + tn) / len(y) if len(y) else nan,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def patient_metrics(scores: Mapping, labels: Mapping, threshold: float = 0.5, bootstrap: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> dict:
    """Per-patient AUC, sensitivity, specificity and accuracy (the paper's eq. 5).

    Args:
        scores: patient id -> patient score (the highest box score over its images; 0 when none).
        labels: patient id -> 1 (has a malignant lesion) or 0.
        threshold: a patient is predicted positive when its score is above it (paper: 0.5).
        bootstrap: number of resamples of the patients (with replacement) for the intervals; 0: none.
        seed: seed of the bootstrap.

    Returns:
        dict with ``auc``, ``sensitivity``, ``specificity``, ``accuracy`` (fractions; NaN where undefined,
        e.g. AUC with one class), counts ``tp``, ``fp``, ``tn``, ``fn``, ``num_patients`` and, with
        bootstrap, ``ci``: metric -> (low, high), the (alpha/2, 1 - alpha/2) percentiles over resamples
        in which the metric is defined.
    """
    _, y, s = _as_arrays(scores, labels)
    out = _point_metrics(y, s, threshold)
    out["num_patients"] = len(y)
    out["threshold"] = threshold
    if bootstrap:
        samples = _bootstrap(y, s, threshold, bootstrap, seed)
        out["ci"] = {m: _interval(samples[m], alpha) for m in PATIENT_METRICS}
    return out


def _bootstrap(y, s, threshold, n, seed, s_other=None, chunk=500):
    """The metrics on ``n`` resamples of the patients (with ``s_other``: its metrics minus ``s``'s on the same
    resample). Resamples are drawn ``chunk`` at a time and their metrics computed at once (:func:`batch_metrics`);
    the draws are those of one resample at a time from the same generator."""
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in PATIENT_METRICS}
    done = 0
    while done < n:
        k = min(chunk, n - done)
        idx = rng.integers(0, len(y), (k, len(y)))
        m = batch_metrics(y[idx], s[idx], threshold)
        if s_other is not None:
            other = batch_metrics(y[idx], s_other[idx], threshold)
            m = {key: other[key] - m[key] for key in PATIENT_METRICS}
        for key in PATIENT_METRICS:
            samples[key].append(m[key])
        done += k
    return {key: np.concatenate(v).astype(np.float64) if v else np.zeros(0) for key, v in samples.items()}


def batch_metrics(y: np.ndarray, s: np.ndarray, t: float, with_auc: bool = True) -> dict[str, np.ndarray]:
    """Patient metrics of each row of (replicates x patients) labels y and scores s at threshold t, as
    :func:`_point_metrics` computes them for one row (NaN where undefined), vectorised over the rows."""
    pred = s > t
    pos = y == 1
    tp = np.sum(pred & pos, axis=1)
    fp = np.sum(pred & ~pos, axis=1)
    n1 = pos.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sensitivity": np.where(n1 > 0, tp / np.maximum(n1, 1), np.nan),
               "specificity": np.where(n0 > 0, (n0 - fp) / np.maximum(n0, 1), np.nan),
               "accuracy": (tp + n0 - fp) / y.shape[1]}
        if with_auc:  # Mann-Whitney: equals sklearn's roc_auc_score, ties counting one half
            from scipy.stats import rankdata

            ranks = rankdata(s, axis=1)
            u = np.sum(np.where(pos, ranks, 0.0), axis=1) - n1 * (n1 + 1) / 2.0
            out["auc"] = np.where((n1 > 0) & (n0 > 0), u / np.maximum(n1 * n0, 1), np.nan)
    return out




def _interval(values, alpha):
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def paired_difference(scores_a: Mapping, scores_b: Mapping, labels: Mapping, threshold: float = 0.5,
                      bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Metric of run b minus run a on the same patients, with a paired bootstrap interval
    (both runs resampled with the same patients). metric -> {"diff": d, "ci": (low, high)}."""
    _, y, sa = _as_arrays(scores_a, labels)
    _, _, sb = _as_arrays(scores_b, labels)
    a, b = _point_metrics(y, sa, threshold), _point_metrics(y, sb, threshold)
    samples = _bootstrap(y, sa, threshold, bootstrap, seed, s_other=sb)
    return {m: {"diff": b[m] - a[m], "ci": _interval(samples[m], alpha)} for m in PATIENT_METRICS}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 4) and (m, 4) xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(gt: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5,
                criterion: str = "iou") -> np.ndarray:
    """Greedy VOC-style matching in descending score order; returns a bool "hit" per box (input order).

    A box hits the not-yet-hit lesion with the highest IoU, provided that IoU is at least
    ``iou_threshold`` (criterion "iou") or the box centre lies inside that lesion (criterion "center").
    Every other box, including a second box on an already-hit lesion, is a false positive.
    """
    if criterion not in ("iou", "center"):
        raise ValueError(f"criterion must be 'iou' or 'center', got {criterion!r}")
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    hits = np.zeros(len(boxes), dtype=bool)
    if len(gt) == 0 or len(boxes) == 0:
        return hits
    iou = box_iou(boxes, gt)
    if criterion == "iou":
        eligible = iou >= iou_threshold
    else:
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        eligible = ((cx[:, None] >= gt[None, :, 0]) & (cx[:, None] <= gt[None, :, 2])
                    & (cy[:, None] >= gt[None, :, 1]) & (cy[:, None] <= gt[None, :, 3]))
    taken = np.zeros(len(gt), dtype=bool)
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        candidates = eligible[i] & ~taken
        if candidates.any():
            j = int(np.argmax(np.where(candidates, iou[i], -1.0)))
            taken[j] = True
            hits[i] = True
    return hits


def froc(gt_boxes: Mapping, pred_boxes: Mapping, pred_scores: Mapping,
         fp_rates: Sequence[float] = FROC_FP_RATES, iou_threshold: float = 0.5,
         criterion: str = "iou") -> dict:
    """Free-response ROC: lesion-level sensitivity at given mean numbers of false positives per image.

    Args:
        gt_boxes, pred_boxes, pred_scores: image id -> (n, 4) xyxy lesion boxes / (m, 4) predicted boxes /
            (m,) scores. Every test image must be in all three (negatives with a (0, 4) ground truth).
        fp_rates: false positives per image at which sensitivity is read.
        iou_threshold, criterion: see :func:`match_image`.

    Returns:
        ``sensitivity`` (one per rate: the highest sensitivity at a score threshold whose false positives
        per image are at most the rate), ``cpm`` (their mean), ``fp_rates``, ``num_lesions``,
        ``num_images`` and ``curve`` (``fppi``, ``sensitivity``, ``threshold`` per operating point).
    """
    ids = set(gt_boxes)
    if ids != set(pred_boxes) or ids != set(pred_scores):
        raise KeyError("gt_boxes, pred_boxes and pred_scores must have the same image ids "
                       f"(missing predictions for {sorted(ids - set(pred_boxes), key=str)[:5]}...)")
    all_scores, all_hits = [], []
    num_lesions = 0
    for i in ids:
        gt = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(pred_scores[i], dtype=np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"image {i!r}: {len(boxes)} boxes but {len(scores)} scores")
        num_lesions += len(gt)
        all_hits.append(match_image(gt, boxes, scores, iou_threshold, criterion))
        all_scores.append(scores)
    num_images = len(ids)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    hits = np.concatenate(all_hits) if all_hits else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    # one operating point per distinct score: the last box of each run of equal scores
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    fppi = np.r_[0.0, fp[last] / max(num_images, 1)]
    sens = np.r_[0.0, tp[last] / num_lesions if num_lesions else np.full(last.sum(), np.nan)]
    thresholds = np.r_[np.inf, scores[last]]
    at_rate = [float(np.max(sens[fppi <= r])) for r in fp_rates]
    return {
        "fp_rates": list(fp_rates),
        "sensitivity": at_rate,
        "cpm": float(np.mean(at_rate)),
        "num_lesions": int(num_lesions),
        "num_images": int(num_images),
        "curve": {"fppi": fppi.tolist(), "sensitivity": sens.tolist(), "threshold": thresholds.tolist()},
    }
