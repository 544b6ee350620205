"""A report's gallery: the same test images under every run, with each run's boxes and scores drawn.

Patients are chosen by rule, never by hand: the first run's (the baseline's) ``k`` highest-scoring healthy
patients -- the look-alikes it flags -- and the last run's (the method's) ``k`` lowest-scoring cancer patients
-- the cancers it is most likely to miss (ties: patient id). For each, the image shown is the one holding the
patient's highest box score under the run that selected it (no box at all: its first image with a lesion, else
its first image), drawn under every run: that run's ``MAX_BOXES`` highest-scoring boxes on the image with their
scores (red above the run's threshold, amber below: mammo_tl/drawing.py), the ground-truth lesions in
green.

Per-image boxes come from each run's inference/<dataset>/coco_instances_results.json (detectron2's
COCOEvaluator, boxes as xywh); which patient and file an image is, and its ground truth, from images.json beside
it (written by PatientEvaluator; a run evaluated before it existed gets a note instead of a gallery until it is
evaluated again). Images are written as PNG files to OUTPUT/gallery/ and referenced by relative
paths, so the report folder opens anywhere without a network.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GALLERY_DIR = "gallery"
MAX_BOXES = 5
MAX_SIDE = 512  # panels are shrunk to at most this many pixels on a side,
MIN_SIDE = 384  # and small images enlarged to at least this many, so the scores stay legible
GT_COLOR = (0, 200, 0)  # BGR green
_FILE_RE = re.compile(r"^g\d\d_.*\.png$")


class GalleryUnavailable(RuntimeError):
    """A file the gallery needs (predictions, image index or the image itself) is missing or unreadable."""


def _key(image_id):
    return str(image_id)


def select_patients(baseline_scores: Mapping[str, float], method_scores: Mapping[str, float],
                    labels: Mapping[str, int], k: int = 3) -> tuple[list[str], list[str]]:
    """(healthy, cancers): the ``k`` healthy patients with the highest ``baseline_scores`` and the ``k`` cancer
    patients with the lowest ``method_scores``; ties broken by patient id (as a string)."""
    healthy = sorted((p for p, y in labels.items() if int(y) == 0), key=lambda p: (-baseline_scores[p], str(p)))
    cancers = sorted((p for p, y in labels.items() if int(y) == 1), key=lambda p: (method_scores[p], str(p)))
    return healthy[:k], cancers[:k]


def load_predictions(eval_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image id (str) -> (boxes xyxy (n, 4), scores (n,)) from COCOEvaluator's coco_instances_results.json."""
    path = os.path.join(eval_dir, "coco_instances_results.json")
    if not os.path.exists(path):
        raise GalleryUnavailable(f"{path} not found (written by COCOEvaluator when the run is evaluated)")
    with open(path) as f:
        rows = json.load(f)
    out = {}
    for r in rows:
        x, y, w, h = (float(v) for v in r["bbox"])
        out.setdefault(_key(r["image_id"]), []).append((x, y, x + w, y + h, float(r["score"])))
    return {i: (np.array([b[:4] for b in v], dtype=np.float64).reshape(-1, 4), np.array([b[4] for b in v]))
            for i, v in out.items()}


def load_image_index(run_dir: str, eval_dir: str) -> dict[str, dict]:
    """image id (str) -> {"patient_id", "file_name", "size", "boxes" (ground truth, xyxy)} of a run's test set,
    from the images.json its PatientEvaluator wrote (never from the data set now registered under that name,
    which may have been regenerated since)."""
    path = os.path.join(eval_dir, "images.json")
    if not os.path.exists(path):
        raise GalleryUnavailable(f"{path} not found: it is written by PatientEvaluator since the gallery exists; "
                                 f"evaluate {run_dir} again (tools/train_net.py --eval-only) to draw it")
    with open(path) as f:
        images = json.load(f)
    return {_key(r["image_id"]): {"patient_id": str(r["patient_id"]), "file_name": r["file_name"],
                                  "size": (r.get("height"), r.get("width")),
                                  "boxes": np.array(r["boxes"], dtype=np.float64).reshape(-1, 4)} for r in images}


def pick_image(patient: str, index: Mapping[str, dict],
               predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Image id holding ``patient``'s highest box score under ``predictions`` (ties: the smaller id); with no
    box on any of its images, its first image with a lesion, else its first image."""
    ids = sorted((i for i, r in index.items() if r["patient_id"] == str(patient)),
                 key=lambda i: (len(i), i))  # numeric ids in numeric order
    if not ids:
        raise GalleryUnavailable(f"patient {patient!r} has no image in the run's images.json")
    scored = [(float(predictions[i][1].max()), i) for i in ids if i in predictions and len(predictions[i][1])]
    if scored:
        best = max(s for s, _ in scored)
        return next(i for s, i in scored if s == best)
    return next((i for i in ids if len(index[i]["boxes"])), ids[0])


def _resolve(file_name):
    if os.path.exists(file_name):
        return file_name
    alt = os.path.join(REPO, file_name)
    if os.path.exists(alt):
        return alt
    raise GalleryUnavailable(f"image {file_name} not found (paths in the records are relative to where the run "
                             "was evaluated)")


def _safe(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:60]


def draw(file_name: str, gt_boxes: ArrayLike, boxes: ArrayLike, scores: ArrayLike, threshold: float | None,
         path: str, size: tuple[int | None, int | None] | None = None) -> None:
    """One panel: the image with the ``MAX_BOXES`` highest-scoring ``boxes`` (and scores) and ``gt_boxes``;
    ``size``: (height, width) the image had when evaluated (refused when it no longer has it). Raises
    :class:`GalleryUnavailable` when the image is missing or changed, :class:`~mammo_tl.drawing.DrawingError`
    when the panel cannot be written."""
    import cv2

    from ..data.image_io import read_image
    from ..drawing import draw_overlay, overlay_base

    try:
        image = read_image(_resolve(file_name))
    except GalleryUnavailable:
        raise
    except Exception as e:
        raise GalleryUnavailable(f"image {file_name} cannot be read ({e})") from None
    if size and None not in size and tuple(image.shape[:2]) != tuple(int(v) for v in size):
        raise GalleryUnavailable(f"image {file_name} is {image.shape[1]} x {image.shape[0]} pixels, not the "
                                 f"{size[1]} x {size[0]} it had when evaluated: the file was replaced since")
    base, f = overlay_base(image, max_side=MAX_SIDE)
    if max(base.shape[:2]) < MIN_SIDE:
        u = MIN_SIDE / max(base.shape[:2])
        base = cv2.resize(base, (round(base.shape[1] * u), round(base.shape[0] * u)), interpolation=cv2.INTER_NEAREST)
        f *= u
    for x1, y1, x2, y2 in np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4) * f:
        cv2.rectangle(base, (int(x1), int(y1)), (int(x2), int(y2)), GT_COLOR, 1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:MAX_BOXES]
    draw_overlay(base, f, np.asarray(boxes).reshape(-1, 4)[order], np.asarray(scores)[order], path, threshold)


def make_gallery(runs: Mapping[str, dict], output_dir: str, k: int = 3) -> dict:
    """``runs``: name -> {"run_dir", "eval_dir", "dataset", "scores", "labels", "threshold"} (report.load_run's
    summary), first the baseline, last the method. Draws the panels into ``output_dir``/gallery/ and returns
    {"rule", "baseline", "method", "patients": [{"patient_id", "label", "group", "image_id", "file_name",
    "selected_by", "panels": {run: {"score", "image_score", "file"}}}]}; raises GalleryUnavailable when a file
    it needs is missing."""
    names = list(runs)
    baseline, method = names[0], names[-1]
    base, meth = runs[baseline], runs[method]
    healthy, cancers = select_patients(base["scores"], meth["scores"], base["labels"], k)
    preds = {n: load_predictions(r["eval_dir"]) for n, r in runs.items()}
    index = load_image_index(base["run_dir"], base["eval_dir"])
    folder = os.path.join(output_dir, GALLERY_DIR)
    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):  # panels of an earlier report, never other files
        if _FILE_RE.match(old):
            os.remove(os.path.join(folder, old))
    patients = []
    for group, chosen, selector in (("healthy, baseline's highest scores", healthy, baseline),
                                    ("cancer, method's lowest scores", cancers, method)):
        for p in chosen:
            image_id = pick_image(p, index, preds[selector])
            img = index[image_id]
            entry = {"patient_id": p, "label": int(base["labels"][p]), "group": group, "selected_by": selector,
                     "image_id": image_id, "file_name": img["file_name"], "panels": {}}
            for j, (n, r) in enumerate(runs.items()):
                boxes, scores = preds[n].get(image_id, (np.zeros((0, 4)), np.zeros(0)))
                rel = f"{GALLERY_DIR}/g{len(patients):02d}_{_safe(p)}_{j}_{_safe(n)}.png"
                draw(img["file_name"], img["boxes"], boxes, scores, r["threshold"], os.path.join(output_dir, rel),
                     img["size"])
                entry["panels"][n] = {"score": float(r["scores"][p]),
                                      "image_score": float(scores.max()) if len(scores) else 0.0, "file": rel}
            patients.append(entry)
    rule = (f"Gallery, patients chosen by rule: the {len(healthy)} healthy test patients that the baseline "
            f"({baseline}) scores highest (the look-alikes it flags) and the {len(cancers)} cancer patients that "
            f"the method ({method}) scores lowest (the cancers it is closest to missing); ties by patient id. "
            "Each row shows one image of the patient -- the one holding its highest score under the run that "
            "chose it -- under every run: that run's "
            f"{MAX_BOXES} highest-scoring boxes on the image with their scores (red above the run's patient "
            "threshold, amber below), ground-truth lesions in green. Patient score: the highest box score over "
            "all its images.")
    return {"rule": rule, "baseline": baseline, "method": method, "patients": patients}


def gallery_markdown(g: Mapping) -> list[str]:
    names = list(g["patients"][0]["panels"]) if g["patients"] else []
    lines = ["## Gallery", "", g["rule"], ""]
    if not names:
        return lines + ["(no patients to show)", ""]
    lines += ["| patient | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for e in g["patients"]:
        head = f"{e['patient_id']} ({'cancer' if e['label'] else 'healthy'}; image {e['image_id']})"
        cells = [f"![{n}: patient score {v['score']:.3f}]({v['file']})<br>patient score {v['score']:.3f}"
                 for n, v in e["panels"].items()]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return lines + [""]


def gallery_html(g: Mapping) -> list[str]:
    import html

    names = list(g["patients"][0]["panels"]) if g["patients"] else []
    parts = ["<h2>Gallery</h2>", f"<p>{html.escape(g['rule'])}</p>"]
    if not names:
        return parts + ["<p>(no patients to show)</p>"]
    head = "<th>patient</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for e in g["patients"]:
        label = f"{e['patient_id']} ({'cancer' if e['label'] else 'healthy'}; image {e['image_id']})"
        cells = "".join(f"<td><img src='{html.escape(v['file'], quote=True)}' alt='{html.escape(n, quote=True)}'>"
                        f"<br>patient score {v['score']:.3f}</td>" for n, v in e["panels"].items())
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return parts + [f"<table border=1 cellpadding=4><tr>{head}</tr>{''.join(rows)}</table>"]
