"""How hard the synthetic phantom is, measured (tools/phantom_difficulty.py; docs/phantom.md).

Trains the baseline, config (a) Faster R-CNN on positive images only, on the built-in synthetic sets at the
demo's budget, with the same code path as the demo (mammo_tl.experiments.rows.run_rows: tools/train_net.py
in a subprocess, evaluated by PatientEvaluator), and reads from its results the two figures that say how
hard the phantom is: the patient ROC AUC and the lesion sensitivity at 1 false positive per image (FROC).
A breakdown against the phantom's truth (mammo_tl.data.synthetic.load_phantom_truth) says where the
difficulty lies: sensitivity per malignant margin and per density category, and how often each kind of
benign look-alike draws a false positive, all at the 1-false-positive-per-image operating point, and
what the benign findings cost the patient AUC (:func:`lookalike_cost`). The contrast-to-noise ratio of the
test set's lesions (:func:`phantom_statistics`) needs no training.

An experiment (it trains and evaluates), so it lives in the engine, above the data and the evaluation it reads.
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from detectron2.data import DatasetCatalog

from ..data.datasets.common import register_json_datasets
from ..data.synthetic import load_phantom_truth
from ..evaluation.metrics import box_iou, patient_metrics
from ..evaluation.report import find_eval_dir, load_run
from ..files import atomic_write_json
from .rows import REPO, load_saved_config, run_rows

FP_RATE = 1.0  # false positives per image at which lesion sensitivity is read
IOU_THRESHOLD = 0.5  # as the FROC of mammo_tl.evaluation.metrics
RESULTS_FILE = "difficulty.json"


def baseline_config() -> str:
    return os.path.join(REPO, "configs", "synthetic", "a_positives_only.yaml")


def operating_point(froc_result: Mapping, rate: float = FP_RATE) -> dict[str, float]:
    """The FROC operating point at ``rate`` false positives per image, by the rule of
    mammo_tl.evaluation.metrics.froc: the highest lesion sensitivity over the curve's points whose false
    positives per image are at most ``rate``; of the points that reach it, the one with the highest score
    threshold (fewest false positives). Returns sensitivity, fppi and threshold."""
    curve = froc_result["curve"]
    fppi = np.asarray(curve["fppi"], dtype=np.float64)
    sens = np.asarray(curve["sensitivity"], dtype=np.float64)
    thr = np.asarray(curve["threshold"], dtype=np.float64)
    ok = fppi <= rate + 1e-12
    best = float(np.max(sens[ok]))
    i = int(np.nonzero(ok & (sens >= best))[0][0])  # the curve runs from the highest threshold down
    return {"sensitivity": best, "fppi": float(fppi[i]), "threshold": float(thr[i])}


def run_figures(run_dir: str, dataset: str | None = None, rate: float = FP_RATE) -> dict:
    """The difficulty figures of an evaluated run (its inference/<dataset>/patient_metrics.json and
    patients.csv, as the report reads them): patient AUC with its bootstrap interval, and lesion
    sensitivity at ``rate`` false positives per image with the score threshold of that point."""
    run = load_run(run_dir, dataset)
    point = operating_point(run["froc"], rate)
    row = run["row"]
    return OrderedDict(
        dataset=run["dataset"], num_patients=int(row["num_patients"]),
        num_positive_patients=int(sum(run["labels"].values())),
        patient_auc=float(row["auc"]),
        patient_auc_ci=[float("nan") if v is None else float(v) for v in run["ci"].get("auc") or (None, None)],
        fp_rate=rate, lesion_sensitivity=point["sensitivity"], operating_fppi=point["fppi"],
        operating_threshold=point["threshold"], froc_cpm=float(run["froc"]["cpm"]),
        num_lesions=int(run["froc"]["num_lesions"]), num_images=int(run["froc"]["num_images"]))


def _hit(box, boxes, iou_threshold) -> bool:
    if len(boxes) == 0:
        return False
    return bool(np.max(box_iou(np.asarray([box], dtype=np.float64), boxes)) >= iou_threshold)


def _rate(hits):
    return {"n": len(hits), "rate": float(np.mean(hits)) if hits else float("nan")}


def lesion_breakdown(predictions: Mapping, truth: Mapping, threshold: float,
                     iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Where the difficulty lies, at one score threshold.

    Args:
        predictions: image id -> (boxes (n, 4) xyxy, scores (n,)).
        truth: image id -> the phantom's truth (:func:`mammo_tl.data.synthetic.load_phantom_truth`).
        threshold: boxes scoring at least this count.

    Returns ``malignant_by_margin`` and ``malignant_by_density`` (the share of masses with a box of IoU >=
    ``iou_threshold``), ``lookalike_flagged_by_kind`` and ``calcifications_flagged`` (the share with such a
    box: a false positive on a benign finding), and ``false_positives``: per image, and the share of them
    that lie on a look-alike or speck cluster (IoU >= ``iou_threshold``; the rest lie on normal tissue).
    """
    by_margin, by_density, by_kind, calcs = defaultdict(list), defaultdict(list), defaultdict(list), []
    fp_total, fp_on_benign = 0, 0
    for image_id, t in truth.items():
        boxes, scores = predictions.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        kept = boxes[np.asarray(scores, dtype=np.float64).reshape(-1) >= threshold]
        masses = [les for les in t["lesions"] if les["class"] == "malignant"]
        for les in masses:
            hit = _hit(les["box"], kept, iou_threshold)
            by_margin[les["kind"]].append(hit)
            by_density[t["density"]].append(hit)
        for les in t["lesions"]:
            if les["class"] == "benign":
                by_kind[les["kind"]].append(_hit(les["box"], kept, iou_threshold))
        calcs.extend(_hit(box, kept, iou_threshold) for box in t["calcification_boxes"])
        # false positives: kept boxes on no malignant mass (FROC's rule, without its one-box-per-lesion greed)
        gt = np.asarray([les["box"] for les in masses], dtype=np.float64).reshape(-1, 4)
        benign = np.asarray([les["box"] for les in t["lesions"] if les["class"] == "benign"]
                            + list(t["calcification_boxes"]), dtype=np.float64).reshape(-1, 4)
        for box in kept:
            if len(gt) and np.max(box_iou(box[None], gt)) >= iou_threshold:
                continue
            fp_total += 1
            fp_on_benign += int(len(benign) > 0 and np.max(box_iou(box[None], benign)) >= iou_threshold)
    n_images = len(truth)
    return OrderedDict(
        threshold=float(threshold), iou_threshold=iou_threshold,
        malignant_by_margin={k: _rate(v) for k, v in sorted(by_margin.items())},
        malignant_by_density={k: _rate(v) for k, v in sorted(by_density.items())},
        lookalike_flagged_by_kind={k: _rate(v) for k, v in sorted(by_kind.items())},
        calcifications_flagged=_rate(calcs),
        false_positives=dict(per_image=fp_total / max(n_images, 1), total=fp_total,
                             on_benign_finding=fp_on_benign,
                             share_on_benign_finding=fp_on_benign / fp_total if fp_total else float("nan")))


def lookalike_cost(predictions: Mapping, truth: Mapping, iou_threshold: float = 0.3) -> dict:
    """What the benign findings cost the patient AUC: the patient ROC AUC from the detections as they are
    (a patient's score: its highest box score, 0 without boxes, as PatientEvaluator scores it), and again
    with every box on a look-alike or speck cluster (IoU >= ``iou_threshold`` with its box) removed. The
    difference is what a detector that never fired on benign findings, and was otherwise the same, would
    gain; it is the room the paper's method has. Labels: a patient is positive when any image holds a mass."""
    scores = {"as_is": defaultdict(float), "without_benign_findings": defaultdict(float)}
    labels = defaultdict(int)
    for image_id, t in truth.items():
        pid = t["patient_id"]
        labels[pid] |= int(any(les["class"] == "malignant" for les in t["lesions"]))
        boxes, s = predictions.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        benign = np.asarray([les["box"] for les in t["lesions"] if les["class"] == "benign"]
                            + list(t["calcification_boxes"]), dtype=np.float64).reshape(-1, 4)
        on_benign = (box_iou(boxes, benign).max(axis=1) >= iou_threshold) if len(benign) and len(boxes) \
            else np.zeros(len(boxes), dtype=bool)
        for key, kept in (("as_is", s), ("without_benign_findings", s[~on_benign])):
            scores[key][pid] = max(scores[key][pid], float(kept.max()) if len(kept) else 0.0)
    out = OrderedDict((f"patient_auc_{k}", float(patient_metrics(dict(v), dict(labels), bootstrap=0)["auc"]))
                      for k, v in scores.items())
    out["iou_threshold"] = iou_threshold
    return out


def load_predictions(eval_dir: str) -> dict:
    """image id -> (boxes xyxy, scores) from a run's inference/<dataset>/coco_instances_results.json
    (detectron2's COCOEvaluator output: the same detections the patient evaluator scored)."""
    path = os.path.join(eval_dir, "coco_instances_results.json")
    with open(path) as f:
        rows = json.load(f)
    boxes, scores = defaultdict(list), defaultdict(list)
    for r in rows:
        x, y, w, h = r["bbox"]
        boxes[r["image_id"]].append([x, y, x + w, y + h])
        scores[r["image_id"]].append(r["score"])
    return {i: (np.asarray(boxes[i], dtype=np.float64), np.asarray(scores[i], dtype=np.float64)) for i in boxes}


def lesion_cnr(image: np.ndarray, box: Sequence[float], exclude: np.ndarray) -> float:
    """Contrast-to-noise ratio of a lesion: mean of its core (within half its equivalent radius of the box
    centre) minus the mean of a ring of tissue around it (1.6 to 2.6 radii, outside ``exclude`` and the
    background), over the ring's standard deviation. NaN when the ring holds under 20 pixels."""
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, np.sqrt((x2 - x1) * (y2 - y1)) / 2
    h, w = image.shape
    ya, yb = max(int(cy - 2.7 * r), 0), min(int(cy + 2.7 * r) + 1, h)
    xa, xb = max(int(cx - 2.7 * r), 0), min(int(cx + 2.7 * r) + 1, w)
    yy, xx = np.mgrid[ya:yb, xa:xb]
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    img = image[ya:yb, xa:xb]
    core = d < 0.5 * r
    ring = (d > 1.6 * r) & (d < 2.6 * r) & ~exclude[ya:yb, xa:xb] & (img > 0.05)
    if ring.sum() < 20 or core.sum() == 0:
        return float("nan")
    return float((img[core].mean() - img[ring].mean()) / (img[ring].std() + 1e-9))


def phantom_statistics(root: str, image_ids: Collection[int] | None = None) -> dict:
    """Contrast-to-noise ratio of every mass and look-alike of a synthetic set, or of its images ``image_ids``
    (:func:`lesion_cnr`, on the image scaled to [0, 1], other findings excluded from the ring), summarised
    (n, mean, 10th/50th/90th percentile) by class, by class and kind, and by class and density category."""
    import cv2

    with open(os.path.join(root, "annotations.json")) as f:
        files = {im["id"]: im["file_name"] for im in json.load(f)["images"]}
    groups = defaultdict(list)
    for image_id, t in load_phantom_truth(root).items():
        if image_ids is not None and image_id not in image_ids:
            continue
        image = cv2.imread(os.path.join(root, files[image_id]), cv2.IMREAD_UNCHANGED).astype(np.float32) / 65535.0
        exclude = np.zeros(image.shape, bool)
        for x1, y1, x2, y2 in [les["box"] for les in t["lesions"]] + list(t["calcification_boxes"]):
            exclude[max(int(y1) - 3, 0):int(y2) + 3, max(int(x1) - 3, 0):int(x2) + 3] = True
        for les in t["lesions"]:
            v = lesion_cnr(image, les["box"], exclude)
            if np.isfinite(v):
                for key in (les["class"], f"{les['class']}/{les['kind']}", f"{les['class']}/density {t['density']}"):
                    groups[key].append(v)

    def summary(v: Sequence[float]) -> dict[str, float]:
        v = np.asarray(v)
        p10, p50, p90 = np.percentile(v, [10, 50, 90])
        return {"n": len(v), "mean": float(v.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}

    return OrderedDict((k, summary(groups[k])) for k in sorted(groups))


def phantom_root(records: Sequence[Mapping], dataset: str) -> tuple[str, dict] | tuple[None, None]:
    """(root, annotations info) of the synthetic set whose images the ``records`` (of ``dataset``) are, or
    (None, None) for a set of other images. Found from the records themselves (ROOT/images/<file> beside
    ROOT/annotations.json, as mammo_tl.data.synthetic.generate writes them), so the built-in sets, a set
    written by tools/make_synthetic.py and registered through DATASETS.REGISTER_JSON, or any part of one, all
    get their breakdown. Every record's image must be the image of that id in the set's annotations.json."""
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(r["file_name"]))) for r in records}
    if len(roots) != 1:
        return None, None
    root = roots.pop()
    try:
        with open(os.path.join(root, "annotations.json")) as f:
            coco = json.load(f)
    except (OSError, ValueError):
        return None, None
    info = coco.get("info", {})
    if "generator_version" not in info:
        return None, None
    files = {im["id"]: os.path.join(root, im["file_name"]) for im in coco["images"]}
    for r in records:
        if files.get(r["image_id"]) != os.path.abspath(r["file_name"]):
            raise ValueError(f"{dataset}: image {r['image_id']} is {r['file_name']} in the records but "
                             f"{files.get(r['image_id'])} in {root}/annotations.json: the records are not of that "
                             "synthetic set")
    return root, info


def measure_difficulty(output: str, config_file: str | None = None, extra_opts: Sequence[str] = (),
                       bootstrap: int = 1000, rate: float = FP_RATE, run_dir: str | None = None) -> dict:
    """Train and evaluate the baseline (config (a) unless ``config_file``) into ``output/<config name>``
    with run_rows (a finished run with this config and these records is reused), or, with ``run_dir``, take
    that evaluated run as it is (nothing trained, nothing written beside it: e.g. one run of a seeds folder,
    whose reports stay untouched); then write ``output/difficulty.json``: the figures (:func:`run_figures`), the
    breakdown against the phantom's truth (:func:`lesion_breakdown`), what the benign findings cost the patient
    AUC (:func:`lookalike_cost`), the test set's contrast-to-noise ratios (:func:`phantom_statistics`), spec and
    generator version, and the wall time. Returns what it writes."""
    start = time.time()
    if run_dir is None:
        config_file = config_file or baseline_config()
        run_rows([config_file], output, list(extra_opts), bootstrap, title="phantom difficulty: the baseline",
                 tag="difficulty")
        run_dir = os.path.join(output, os.path.splitext(os.path.basename(config_file))[0])
    else:  # the run's own data sets, as it was trained and evaluated
        config_file = os.path.join(run_dir, "config.yaml")
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"{run_dir}: no config.yaml; give the OUTPUT_DIR of a trained and evaluated run")
        register_json_datasets(load_saved_config(config_file).DATASETS.REGISTER_JSON)
    figures = run_figures(run_dir, rate=rate)
    result = OrderedDict(figures=figures, config=config_file, opts=list(extra_opts), run_dir=run_dir)
    records = DatasetCatalog.get(figures["dataset"])
    root, info = phantom_root(records, figures["dataset"])
    if root is not None:
        eval_dir, _ = find_eval_dir(run_dir, figures["dataset"])
        ids = {r["image_id"] for r in records}
        truth = {i: t for i, t in load_phantom_truth(root).items() if i in ids}
        predictions = load_predictions(eval_dir)
        result["breakdown"] = lesion_breakdown(predictions, truth, figures["operating_threshold"])
        result["lookalike_cost"] = lookalike_cost(predictions, truth)
        result["phantom"] = OrderedDict(root=root, generator_version=info["generator_version"],
                                        spec=info.get("spec"), cnr=phantom_statistics(root, ids))
    else:
        result["breakdown_skipped"] = (f"{figures['dataset']} is not a set written by the synthetic generator "
                                       "(ROOT/images/ beside ROOT/annotations.json): no phantom truth to break "
                                       "the figures down by")
    result["wall_seconds"] = time.time() - start
    atomic_write_json(result, os.path.join(output, RESULTS_FILE), indent=1)
    return result


def format_summary(result: Mapping) -> str:
    """The figures and the breakdown as text."""
    f = result["figures"]
    lo, hi = f["patient_auc_ci"]
    ci = f"95% CI {lo:.3f}, {hi:.3f}" if np.isfinite([lo, hi]).all() else "no bootstrap interval"
    lines = [f"baseline {os.path.basename(result['config'])} on {f['dataset']} ({f['num_patients']} patients, "
             f"{f['num_positive_patients']} with cancer; {f['num_images']} images, {f['num_lesions']} masses)",
             f"  patient ROC AUC                         {f['patient_auc']:.3f} [{ci}]",
             f"  lesion sensitivity at {f['fp_rate']:g} FP/image       {f['lesion_sensitivity']:.3f} "
             f"(score >= {f['operating_threshold']:.3f}, {f['operating_fppi']:.2f} FP/image)",
             f"  FROC CPM (0.125-8 FP/image)             {f['froc_cpm']:.3f}"]
    b = result.get("breakdown")
    if b:
        def fmt(d: Mapping[str, Mapping]) -> str:
            return ", ".join(f"{k} {v['rate']:.2f} (n={v['n']})" for k, v in d.items())
        lines += [f"  at that point: masses found by margin:  {fmt(b['malignant_by_margin'])}",
                  f"                 by density:            {fmt(b['malignant_by_density'])}",
                  f"                 look-alikes flagged:   {fmt(b['lookalike_flagged_by_kind'])}",
                  f"                 speck clusters flagged {b['calcifications_flagged']['rate']:.2f} "
                  f"(n={b['calcifications_flagged']['n']})",
                  f"                 false positives/image  {b['false_positives']['per_image']:.2f}, "
                  f"{b['false_positives']['share_on_benign_finding']:.0%} of them on a benign finding"]
    if result.get("breakdown_skipped"):
        lines.append(f"  no breakdown: {result['breakdown_skipped']}")
    cost = result.get("lookalike_cost")
    if cost:
        lines.append(f"  patient AUC with the boxes on benign findings removed: "
                     f"{cost['patient_auc_without_benign_findings']:.3f} (as is {cost['patient_auc_as_is']:.3f})")
    cnr = result.get("phantom", {}).get("cnr")
    if cnr:
        lines.append("  lesion contrast-to-noise (test set):   " + ", ".join(
            f"{k} {cnr[k]['mean']:.2f}" for k in ("malignant", "benign") if k in cnr))
    lines.append(f"  wall time {result['wall_seconds'] / 60:.1f} min")
    return "\n".join(lines)
