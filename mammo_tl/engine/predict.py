"""The work behind tools/predict.py."""
import csv
import json
import logging
import os

import cv2
import numpy as np
from tqdm import tqdm

from ..config import get_mammo_tl_cfg
from ..data.image_io import ImageReadError
from .predictor import MammoPredictor, describe, list_inputs

logger = logging.getLogger(__name__)


def draw_overlay(image, boxes, scores, path, max_side=1024):
    lo, hi = float(image.min()), float(image.max())
    u8 = ((image - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    f = min(1.0, max_side / max(image.shape))
    u8 = cv2.resize(u8, (int(image.shape[1] * f), int(image.shape[0] * f)), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)
    for (x1, y1, x2, y2), s in zip(boxes * f, scores):
        color = (0, 0, 255) if s > 0.5 else (0, 200, 255)
        cv2.rectangle(rgb, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(rgb, f"{s:.2f}", (int(x1), max(12, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1)
    cv2.imwrite(path, rgb)


def run_predict(config_file, inputs, output, opts=(), overlay=False, min_score=0.05):
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, min_score)
    cfg.freeze()
    files = list_inputs(inputs)
    if not files:
        raise SystemExit(f"no image files found in {inputs}")
    predictor = MammoPredictor(cfg)
    os.makedirs(output, exist_ok=True)
    if overlay:
        os.makedirs(os.path.join(output, "overlays"), exist_ok=True)
    results, skipped, patients = [], [], {}
    for path in tqdm(files, desc="predict", unit="image"):
        try:
            image, meta = describe(path)
        except ImageReadError as e:
            skipped.append({"file_name": path, "reason": e.cause})
            logger.warning("skipped %s", e)
            continue
        boxes, scores = predictor(image)
        keep = scores >= min_score
        boxes, scores = boxes[keep], scores[keep]
        results.append({"file_name": path, "patient_id": meta["patient_id"], "laterality": meta["laterality"],
                        "view": meta["view"], "boxes": np.round(boxes, 2).tolist(),
                        "scores": np.round(scores, 5).tolist()})
        pid = meta["patient_id"]
        patients[pid] = max(patients.get(pid, 0.0), float(scores.max()) if len(scores) else 0.0)
        if overlay:
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            draw_overlay(image, boxes, scores, os.path.join(output, "overlays", name))
    with open(os.path.join(output, "predictions.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(output, "patients.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "score"])
        w.writerows((p, f"{s:.6f}") for p, s in sorted(patients.items()))
    if skipped:
        with open(os.path.join(output, "skipped.json"), "w") as f:
            json.dump(skipped, f, indent=1)
    print(f"{len(results)} image(s) predicted, {len(skipped)} skipped"
          f"{' (see skipped.json)' if skipped else ''}; wrote {output}/predictions.json and patients.csv")
    return results, skipped
