"""The report's gallery: patients chosen by rule on hand-made scores, the image of each, the files it writes.

``write_fake_run`` writes the minimal files of an evaluated run that the reports read (also used by
tests/test_seeds.py): patient_metrics.json, patients.csv, eval_results.json, config.yaml and, when given,
per-image predictions (coco_instances_results.json), images.json with the images, and operating points."""
import csv
import json
import os
import re

import cv2
import numpy as np
import yaml
from sklearn.metrics import roc_auc_score

from mammo_tl.evaluation.metrics import FROC_FP_RATES

DATASET = "fake_test"


def metrics_by_hand(scores, labels, t=0.5):
    """sklearn's AUC and the counts at threshold t (score above t: recalled)."""
    ids = sorted(labels)
    y = np.array([labels[p] for p in ids])
    s = np.array([scores[p] for p in ids])
    pred = s > t
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    tn, fn = int(np.sum(~pred & (y == 0))), int(np.sum(~pred & (y == 1)))
    return {"auc": float(roc_auc_score(y, s)), "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
            "accuracy": (tp + tn) / len(y), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "num_patients": len(y)}


def write_fake_run(run_dir, labels, scores=None, seed=0, ap50=None, froc_sens=0.5, points=None, images=None,
                   predictions=None, config=None):
    """An evaluated run in ``run_dir``. ``scores``: patient -> score, or derived from ``predictions`` (image id
    -> [(x, y, w, h, score), ...]) and ``images`` (image id -> (patient, file, gt boxes xyxy)) as the highest box
    score of the patient's images. ``points``: operating point name -> threshold (with a model_final.pth)."""
    from mammo_tl.files import sha256_file

    if scores is None:
        scores = dict.fromkeys(labels, 0.0)
        for i, boxes in predictions.items():
            p = images[i][0]
            scores[p] = max([scores[p]] + [b[4] for b in boxes])
    ev = os.path.join(run_dir, "inference", DATASET)
    os.makedirs(ev, exist_ok=True)
    m = metrics_by_hand(scores, labels)
    froc = {"fp_rates": list(FROC_FP_RATES), "sensitivity": [froc_sens] * len(FROC_FP_RATES), "cpm": froc_sens,
            "num_lesions": 1, "num_images": 1,
            "curve": {"fppi": [0.0, 1.0], "sensitivity": [0.0, froc_sens], "threshold": [1e9, 0.5]}}
    with open(os.path.join(ev, "patient_metrics.json"), "w") as f:
        json.dump({"results": {"patient": m}, "froc": froc, "threshold": 0.5}, f)
    with open(os.path.join(ev, "patients.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "label", "score"])
        w.writerows((p, labels[p], repr(float(scores[p]))) for p in sorted(labels))
    if ap50 is not None:
        with open(os.path.join(run_dir, "inference", "eval_results.json"), "w") as f:
            json.dump({"bbox": {"AP50": ap50 * 100}}, f)
    cfg = {"SEED": seed, "OUTPUT_DIR": run_dir, "MODEL": {"ROI_HEADS": {"NAME": "StandardROIHeads"}},
           "DATASETS": {"TEST": [DATASET]}}
    for k, v in (config or {}).items():
        node = cfg
        *path, last = k.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = v
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    if predictions is not None:
        with open(os.path.join(ev, "coco_instances_results.json"), "w") as f:
            json.dump([{"image_id": i, "category_id": 0, "bbox": list(b[:4]), "score": b[4]}
                       for i, boxes in predictions.items() for b in boxes], f)
    if images is not None:
        with open(os.path.join(ev, "images.json"), "w") as f:
            json.dump([{"image_id": i, "patient_id": p, "file_name": fn, "height": 48, "width": 40, "boxes": gt}
                       for i, (p, fn, gt) in images.items()], f)
    if points:
        weights = os.path.join(run_dir, "model_final.pth")
        with open(weights, "wb") as f:
            f.write(os.path.basename(run_dir).encode() + str(seed).encode())
        val = {"sensitivity": 1.0, "specificity": 0.5, "accuracy": 0.75, "tp": 1, "fp": 1, "tn": 1, "fn": 0}
        with open(os.path.join(run_dir, "operating_points.json"), "w") as f:
            json.dump({"weights_sha256": sha256_file(weights), "validation_dataset": "fake_val",
                       "points": {n: {"threshold": t, "validation": val} for n, t in points.items()}}, f)
    return run_dir


def test_select_patients_by_rule_with_ties():
    from mammo_tl.evaluation.gallery import select_patients

    labels = {"H1": 0, "H2": 0, "H3": 0, "H4": 0, "C1": 1, "C2": 1, "C3": 1, "C4": 1}
    base = {"H1": 0.9, "H2": 0.95, "H3": 0.9, "H4": 0.1, "C1": 0.99, "C2": 0.0, "C3": 0.5, "C4": 0.7}
    meth = {"H1": 0.1, "H2": 0.2, "H3": 0.3, "H4": 0.4, "C1": 0.6, "C2": 0.6, "C3": 0.95, "C4": 0.2}
    # healthy by the baseline's score, highest first (H1 and H3 tie at 0.9: id order); cancers by the method's
    # lowest (C1 and C2 tie at 0.6); never a cancer among the healthy or the other way round
    assert select_patients(base, meth, labels, k=3) == (["H2", "H1", "H3"], ["C4", "C1", "C2"])
    assert select_patients(base, meth, labels, k=1) == (["H2"], ["C4"])
    assert select_patients(base, meth, labels, k=9) == (["H2", "H1", "H3", "H4"], ["C4", "C1", "C2", "C3"])


def _gallery_runs(root):
    """Two fake runs over 4 healthy and 4 cancer patients with two images each, on real PNG files."""
    labels = {"H1": 0, "H2": 0, "H3": 0, "H4": 0, "C1": 1, "C2": 1, "C3": 1, "C4": 1}
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir)
    images, i = {}, 0
    for p in sorted(labels):
        for view in ("CC", "MLO"):
            i += 1
            fn = os.path.join(img_dir, f"{p}_{view}.png")
            cv2.imwrite(fn, np.full((48, 40), 1000 + 100 * i, np.uint16))
            gt = [[10.0, 10.0, 30.0, 30.0]] if labels[p] and view == "CC" else []
            images[i] = (p, fn, gt)
    ids = {(p, v): n for n, (p, fn, _) in images.items() for v in ("CC", "MLO") if fn.endswith(f"{p}_{v}.png")}

    def box(s):
        return (12.0, 12.0, 16.0, 16.0, s)

    # baseline (a): the look-alikes of H2, H3, H1 score high; H1's highest box lies on its MLO image
    a = {ids["H1", "CC"]: [box(0.5)], ids["H1", "MLO"]: [box(0.8), box(0.3)], ids["H2", "CC"]: [box(0.97)],
         ids["H3", "MLO"]: [box(0.9)], ids["H4", "CC"]: [box(0.2)],
         ids["C1", "CC"]: [box(0.9)], ids["C2", "MLO"]: [box(0.95)], ids["C3", "CC"]: [box(0.7)],
         ids["C4", "CC"]: [box(0.6)]}
    # method (d): low on the healthy; C2 has no box at all, C4's highest box lies on its MLO image
    d = {ids["H1", "CC"]: [box(0.1)], ids["H2", "CC"]: [box(0.3)], ids["H4", "MLO"]: [box(0.05)],
         ids["C1", "CC"]: [box(0.99)], ids["C3", "CC"]: [box(0.4)], ids["C4", "CC"]: [box(0.2)],
         ids["C4", "MLO"]: [box(0.25)]}
    runs = {"a": write_fake_run(os.path.join(root, "a"), labels, predictions=a, images=images),
            "d": write_fake_run(os.path.join(root, "d"), labels, predictions=d, images=images)}
    return runs, ids


def _relative_refs(text):
    return re.findall(r"\]\(([^)]+)\)", text) + re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", text)


def test_gallery_picks_the_rule_s_patients_and_writes_the_files_it_references(tmp_path):
    from mammo_tl.evaluation.report import make_report

    runs, ids = _gallery_runs(str(tmp_path))
    out = tmp_path / "report"
    results, md = make_report(runs, str(out), bootstrap=0, gallery=2)
    g = results["gallery"]
    # healthy by a's scores: H2 0.97, H3 0.9, H1 0.8; cancers by d's: C2 0 (no box), C4 0.25, C3 0.4
    assert [e["patient_id"] for e in g["patients"]] == ["H2", "H3", "C2", "C4"]
    assert [e["label"] for e in g["patients"]] == [0, 0, 1, 1]
    chosen = {e["patient_id"]: e["image_id"] for e in g["patients"]}
    # the image holding the patient's highest score under the run that chose it; C2 has no box under d: its
    # image with a lesion (CC); C4's highest under d is on MLO although a's is on CC
    assert chosen == {"H2": str(ids["H2", "CC"]), "H3": str(ids["H3", "MLO"]), "C2": str(ids["C2", "CC"]),
                      "C4": str(ids["C4", "MLO"])}
    c4 = g["patients"][3]["panels"]
    assert (c4["a"]["score"], c4["d"]["score"]) == (0.6, 0.25)
    assert (c4["a"]["image_score"], c4["d"]["image_score"]) == (0.0, 0.25)  # a has no box on C4's MLO image

    assert "## Gallery" in md and "the 2 healthy test patients that the baseline (a) scores highest" in md
    html = (out / "report.html").read_text()
    assert "the 2 cancer patients that the method (d) scores lowest" in html
    refs_md, refs_html = _relative_refs(md), _relative_refs(html)
    gallery_refs = [r for r in refs_md if r.startswith("gallery/")]
    assert len(gallery_refs) == 4 * 2 and sorted(gallery_refs) == sorted(r for r in refs_html if "gallery/" in r)
    for ref in refs_md + refs_html:
        assert not ref.startswith(("/", "http:", "https:", "file:")) and ":" not in ref, ref
        assert (out / ref).is_file(), ref
    assert sorted(os.listdir(out / "gallery")) == sorted(os.path.basename(r) for r in gallery_refs)

    # H2's panel under a: its 0.97 box in red (above 0.5); C4's MLO under d: its 0.25 box in amber; C2's CC
    # image: the ground-truth lesion in green
    panel = {(e["patient_id"], n): cv2.imread(str(out / v["file"]))
             for e in g["patients"] for n, v in e["panels"].items()}

    def count(img, bgr):
        return int(np.all(img == np.array(bgr, np.uint8), axis=2).sum())

    assert panel["H2", "a"].shape == (384, 320, 3)  # 48 x 40 enlarged to 384 pixels on the long side
    assert count(panel["H2", "a"], (0, 0, 255)) > 0 and count(panel["H2", "a"], (0, 200, 255)) == 0
    assert count(panel["C4", "d"], (0, 200, 255)) > 0 and count(panel["C4", "d"], (0, 0, 255)) == 0
    assert count(panel["C2", "d"], (0, 200, 0)) > 0 and count(panel["H2", "a"], (0, 200, 0)) == 0

    # a second report into the same folder replaces the panels, never leaves stale ones
    (out / "gallery" / "mine.txt").write_text("not the report's")
    make_report(runs, str(out), bootstrap=0, gallery=1)
    assert sorted(os.listdir(out / "gallery")) == sorted(
        ["mine.txt"] + [f"g{i:02d}_{p}_{j}_{n}.png" for i, p in enumerate(["H2", "C2"]) for j, n in enumerate("ad")])


def test_gallery_without_images_json_is_a_note_not_a_failure(tmp_path):
    from mammo_tl.evaluation.report import make_report

    runs, _ = _gallery_runs(str(tmp_path))
    os.remove(os.path.join(runs["a"], "inference", DATASET, "images.json"))
    results, md = make_report(runs, str(tmp_path / "report"), bootstrap=0)
    assert "Gallery not drawn" in md and "images.json not found" in md and "--eval-only" in md
    assert "unavailable" in results["gallery"]
    assert not (tmp_path / "report" / "gallery").exists()


def test_gallery_refuses_an_image_replaced_since_evaluation(tmp_path):
    from mammo_tl.evaluation.report import make_report

    runs, _ = _gallery_runs(str(tmp_path))
    cv2.imwrite(str(tmp_path / "images" / "H2_CC.png"), np.zeros((60, 40), np.uint16))
    _, md = make_report(runs, str(tmp_path / "report"), bootstrap=0, gallery=1)
    assert "Gallery not drawn" in md and "H2_CC.png is 40 x 60 pixels, not the 40 x 48" in md
