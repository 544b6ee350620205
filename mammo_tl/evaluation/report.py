"""Several runs side by side in the layout of the paper's Table 1, with intervals, ROC and FROC plots and a
gallery of chosen test images under every run (gallery.py). Runs of one configuration over several training
seeds are summarised by aggregate.py."""
from __future__ import annotations

import csv
import html
import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from .ceiling import ceiling_section, ceiling_shares
from .gallery import GalleryUnavailable, gallery_html, gallery_markdown, make_gallery
from .metrics import box_iou, paired_difference
from .operating_points import FILE_NAME as OP_FILE_NAME
from .operating_points import load_operating_points, metrics_at_points
from .markup import html_table
from .markup import md_table as _md_table
from .plots import plot_froc, plot_learning_curves, plot_roc, plot_score_distributions
from .runs import FINAL_DIR, load_selection, load_validation_curve, selected_weights, weights_digest

COLUMNS = (("ap50", "mAP (AP50)"), ("auc", "AUC"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
           ("specificity", "specificity"))


def find_eval_dir(run_dir: str, dataset: str | None = None) -> tuple[str, str]:
    """The folder inference/<dataset> of a run that holds patient_metrics.json."""
    base = os.path.join(run_dir, "inference")
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{run_dir}: no inference/ folder; evaluate the run first "
                                "(tools/train_net.py --eval-only ...)")
    names = [dataset] if dataset else sorted(d for d in os.listdir(base)
                                             if os.path.exists(os.path.join(base, d, "patient_metrics.json")))
    if not names or not os.path.exists(os.path.join(base, names[0], "patient_metrics.json")):
        raise FileNotFoundError(f"{base}: no patient_metrics.json (dataset {dataset or 'any'})")
    return os.path.join(base, names[0]), names[0]


def read_patients(path: str) -> tuple[dict[str, float], dict[str, int]]:
    """(patient -> score, patient -> label) of an evaluation's patients.csv."""
    scores, labels = {}, {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            scores[r["patient_id"]] = float(r["score"])
            labels[r["patient_id"]] = int(r["label"])
    return scores, labels


def load_run(run_dir: str, dataset: str | None = None) -> dict:
    """Summary of one evaluated run: metrics, intervals, patient scores, FROC curve."""
    eval_dir, dataset = find_eval_dir(run_dir, dataset)
    with open(os.path.join(eval_dir, "patient_metrics.json")) as f:
        pm = json.load(f)
    patient = pm["results"]["patient"]
    row = OrderedDict((k, patient[k]) for k in ("auc", "accuracy", "sensitivity", "specificity"))
    row["ap50"] = float("nan")
    res_path = os.path.join(run_dir, "inference", "eval_results.json")
    if os.path.exists(res_path):
        with open(res_path) as f:
            res = json.load(f)
        res = res.get(dataset, res)
        ap50 = res.get("bbox", {}).get("AP50")
        row["ap50"] = float(ap50) / 100.0 if ap50 is not None else float("nan")  # the paper writes mAP as a fraction
    ci = {k: (patient.get(f"{k}_ci_low"), patient.get(f"{k}_ci_high")) for k in row if k != "ap50"}
    scores, labels = read_patients(os.path.join(eval_dir, "patients.csv"))
    for k in ("tp", "fp", "tn", "fn", "num_patients"):
        row[k] = int(patient[k])
    row["s_per_iter"] = training_seconds_per_iter(run_dir)
    return {"row": row, "ci": ci, "scores": scores, "labels": labels, "froc": pm["froc"],
            "threshold": pm.get("threshold", 0.5), "dataset": dataset, "points": _stored_points(run_dir),
            "run_dir": run_dir, "eval_dir": eval_dir}


def training_seconds_per_iter(run_dir: str) -> float:
    """Median of the per-iteration times detectron2 logged in the run's metrics.json (NaN without one): the
    whole run's training cost, comparable between runs of one machine."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return float("nan")
    times = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "time" in row and "total_loss" in row:
                times.append(float(row["time"]))
    return float(np.median(times)) if times else float("nan")


def _stored_points(run_dir):
    """The run's operating points (tools/operating_points.py) when they belong to the weights its test results
    belong to (:func:`~mammo_tl.evaluation.runs.selected_weights`; an archived run's by the digest it recorded)."""
    path, weights = os.path.join(run_dir, OP_FILE_NAME), selected_weights(run_dir)
    digest = weights_digest(run_dir, weights) if os.path.exists(path) else None
    if digest is None:
        return None
    return load_operating_points(path, weights, weights_sha256=digest)


def _fmt(v, ci=None):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    s = f"{v:.3f}"
    if ci and ci[0] is not None and np.isfinite(ci[0]):
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def add_gallery(loaded: Mapping[str, dict], output_dir: str, k: int, results: dict) -> tuple[list[str], list[str]]:
    """The gallery section (Markdown lines, HTML parts) of runs loaded by :func:`load_run` (first: baseline,
    last: method), its panels written to output_dir/gallery/; a note instead when a file it needs is missing.
    Stores the chosen patients in ``results["gallery"]``."""
    if not k:
        return [], []
    try:
        g = make_gallery(loaded, output_dir, k)
    except GalleryUnavailable as e:
        print(f"[report] no gallery: {e}", flush=True)
        results["gallery"] = {"unavailable": str(e)}
        note = f"Gallery not drawn: {e}"
        return ["## Gallery", "", note, ""], ["<h2>Gallery</h2>", f"<p>{html.escape(note)}</p>"]
    results["gallery"] = g
    return gallery_markdown(g), gallery_html(g)


def _final_test(run_dir):
    """The final checkpoint's test figures of a run whose test result is a validation-chosen checkpoint."""
    try:
        with open(os.path.join(run_dir, FINAL_DIR, "eval_results.json")) as f:
            r = json.load(f)
    except OSError:
        return None
    return {"auc": r["patient"]["auc"], "specificity": r["patient"]["specificity"],
            "ap50": r.get("bbox", {}).get("AP50", float("nan")) / 100.0, "froc_cpm": r["froc"]["cpm"]}


def learning_curves_png(runs: Mapping[str, Sequence[str]], path: str) -> bool:
    """The validation learning curves of runs (name -> run folders, one per seed; finished or still training) drawn
    to ``path``, each finished run's chosen checkpoint ringed. False, and nothing drawn, when none has a curve."""
    curves = {n: [load_validation_curve(d) or [] for d in dirs] for n, dirs in runs.items()}
    if not any(c for cs in curves.values() for c in cs):
        return False
    selections = {n: [load_selection(d) for d in dirs] for n, dirs in runs.items()}
    plot_learning_curves(curves, path, selected={n: [s["selected"]["iterations_trained"] if s else None for s in ss]
                                                 for n, ss in selections.items()})
    return True


def add_learning_curves(runs: Mapping[str, Sequence[str]], output_dir: str,
                        results: dict) -> tuple[list[str], list[str]]:
    """The model-selection section (Markdown lines, HTML parts) of runs (name -> run folders, one per seed) trained
    with a validation set: learning_curves.png (each row a line, seeds thin lines, chosen checkpoints ringed) and a
    table of each run's chosen checkpoint beside its final one. Nothing for runs without one. Stores the figures
    in ``results["model_selection"]``."""
    if not learning_curves_png(runs, os.path.join(output_dir, "learning_curves.png")):
        return [], []
    selections = {n: [load_selection(d) for d in dirs] for n, dirs in runs.items()}
    head = ["run", "seed", "rule", "chosen at (iterations)", "validation value", "final at",
            "test AUC: chosen", "test AUC: final", "test AP50: chosen", "test AP50: final"]
    rows, out = [], {}
    for name, dirs in runs.items():
        for k, (d, sel) in enumerate(zip(dirs, selections[name])):
            if sel is None:
                continue
            chosen, final = load_run(d)["row"], _final_test(d) or {}
            entry = {"metric": sel["metric"], "validation_set": sel["validation_set"],
                     "chosen_iterations": sel["selected"]["iterations_trained"], "value": sel["selected"]["value"],
                     "final_iterations": sel["final"]["iterations_trained"],
                     "test_chosen": {k2: chosen[k2] for k2 in ("auc", "specificity", "ap50")}, "test_final": final}
            out.setdefault(name, []).append(entry)
            rows.append([name, str(k), f"highest {sel['metric']} on {sel['validation_set']}",
                         str(entry["chosen_iterations"]), _fmt(entry["value"]), str(entry["final_iterations"]),
                         _fmt(chosen["auc"]), _fmt(final.get("auc")), _fmt(chosen["ap50"]), _fmt(final.get("ap50"))])
    results["model_selection"] = out
    text = ("Models chosen on the validation patients: each run's test figures are those of its checkpoint with the "
            "highest validation value, evaluated every TEST.EVAL_PERIOD iterations; the test patients were read "
            "once, at the end of training, on that checkpoint and on the final one (beside it). Learning curves: "
            "each row's mean over seeds (thick), each seed (thin), the chosen checkpoints (rings).")
    md = ["## Model selection on validation", "", text, "", _md_table(head, rows), "",
          "![learning curves](learning_curves.png)", ""]
    parts = ["<h2>Model selection on validation</h2>", f"<p>{html.escape(text)}</p>", html_table(head, rows),
             "<img src='learning_curves.png' alt='learning curves'>"]
    return md, parts


def make_report(runs: Mapping[str, str], output_dir: str, baseline: str | None = None, bootstrap: int = 1000,
                seed: int = 0, title: str = "mammo_tl results", gallery: int = 3) -> tuple[dict, str]:
    """runs: name -> run dir (all evaluated on the same test set). Writes report.md, report.html,
    roc.png, froc.png, results.json and (``gallery`` > 0: that many healthy and that many cancer patients;
    see gallery.py) gallery/*.png to output_dir; returns (results dict, Markdown)."""
    os.makedirs(output_dir, exist_ok=True)
    loaded = OrderedDict((name, load_run(d)) for name, d in runs.items())
    baseline = baseline or next(iter(loaded))
    results = {"runs": OrderedDict(), "differences": OrderedDict()}
    for name, r in loaded.items():
        results["runs"][name] = dict(r["row"], ci={k: list(v) for k, v in r["ci"].items()},
                                     froc_cpm=r["froc"]["cpm"], dataset=r["dataset"])
    base = loaded[baseline]
    for name, r in loaded.items():
        if name == baseline:
            continue
        if set(r["labels"]) != set(base["labels"]):
            raise ValueError(f"runs {baseline!r} and {name!r} were evaluated on different patients")
        d = paired_difference(base["scores"], r["scores"], base["labels"], base["threshold"], bootstrap, seed)
        results["differences"][f"{name} - {baseline}"] = {k: {"diff": v["diff"], "ci": list(v["ci"])}
                                                          for k, v in d.items()}

    ids = sorted(base["labels"], key=str)
    order = [baseline, *(n for n in loaded if n != baseline)]
    ceiling = ceiling_shares({n: [np.array([loaded[n]["scores"][p] for p in ids])] for n in order},
                             {n: runs[n] for n in order}, np.array([base["labels"][p] for p in ids]), bootstrap, seed)
    if ceiling:
        results["ceiling"] = ceiling
    plot_roc({n: (np.array([r["labels"][p] for p in sorted(r["labels"])]),
                  np.array([r["scores"][p] for p in sorted(r["labels"])])) for n, r in loaded.items()},
             os.path.join(output_dir, "roc.png"))
    plot_froc({n: r["froc"] for n, r in loaded.items()}, os.path.join(output_dir, "froc.png"))

    header = ["run"] + [c for _, c in COLUMNS] + ["training s/iter"]
    base_time = base["row"]["s_per_iter"]
    rows = [[name] + [_fmt(r["row"][k], r["ci"].get(k)) for k, _ in COLUMNS]
            + [_fmt(r["row"]["s_per_iter"]) + (f" ({r['row']['s_per_iter'] / base_time:.3f}x)"
                                               if name != baseline and np.isfinite(base_time) else "")]
            for name, r in loaded.items()]
    diff_header = ["difference"] + [c for k, c in COLUMNS if k != "ap50"]
    diff_rows = [[name] + [_fmt(d[k]["diff"], d[k]["ci"]) for k, _ in COLUMNS if k != "ap50"]
                 for name, d in results["differences"].items()]
    n = next(iter(loaded.values()))["row"]
    lines = [f"# {title}", "",
             f"Test set: {next(iter(loaded.values()))['dataset']}, {n['num_patients']} patients. Patient-level "
             f"metrics at score threshold {base['threshold']} with 95% bootstrap intervals over patients; "
             "mAP is COCO AP at IoU 0.5 over boxes; training s/iter is the median per-iteration time of the "
             "run's metrics.json (x: against the first run; comparable on one machine only).", "",
             _md_table(header, rows), ""]
    if diff_rows:
        lines += ["Paired differences (same patients resampled for both runs):", "", _md_table(diff_header, diff_rows),
                  ""]
    point_header = ["run", "operating point", "threshold", "sensitivity", "specificity", "accuracy",
                    "validation sensitivity", "validation specificity"]
    point_rows = []
    for name, r in loaded.items():
        if not r["points"]:
            continue
        stored = r["points"]["points"]
        at = metrics_at_points(r["scores"], r["labels"], stored, bootstrap, seed)
        results["runs"][name]["operating_points"] = {
            "validation_dataset": r["points"]["validation_dataset"],
            "test": {p: {k: m[k] for k in ("threshold", "sensitivity", "specificity", "accuracy", "tp", "fp", "tn",
                                           "fn")} | {"ci": {k: list(v) for k, v in m.get("ci", {}).items()}}
                     for p, m in at.items()}}
        for p, m in at.items():
            v = stored[p]["validation"]
            point_rows.append([name, p, f"{m['threshold']:.4f}"]
                              + [_fmt(m[k], m.get("ci", {}).get(k)) for k in ("sensitivity", "specificity", "accuracy")]
                              + [_fmt(v["sensitivity"]), _fmt(v["specificity"])])
    if point_rows:
        val = sorted({r["points"]["validation_dataset"] for r in loaded.values() if r["points"]})
        lines += [f"Test figures at operating points chosen on the validation set ({', '.join(val)}; "
                  "tools/operating_points.py), never on the test patients:", "", _md_table(point_header, point_rows),
                  ""]
    lines += ["![ROC](roc.png) ![FROC](froc.png)", ""]
    share_md, share_parts = ceiling_section(results, baseline)
    selection_md, selection_parts = add_learning_curves({n: [d] for n, d in runs.items()}, output_dir, results)
    lines += [*share_md, *selection_md]
    scores_md, scores_parts = add_score_distributions(loaded, output_dir, results)
    lines += scores_md
    gallery_md, gallery_parts = add_gallery(loaded, output_dir, gallery, results)
    gallery_parts = [*share_parts, *selection_parts, *scores_parts, *gallery_parts]
    lines += gallery_md
    md = "\n".join(lines)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(md)
    with open(os.path.join(output_dir, "report.html"), "w") as f:
        f.write(_html(title, header, rows, diff_header, diff_rows, point_header, point_rows, gallery_parts))
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results, md


# a finding's score: the highest box whose IoU with the finding's box is at least this (0 when none), as the
# phantom's look-alike cost counts a box "on" a benign finding (mammo_tl/experiments/difficulty.py)
FINDING_IOU = 0.3
NO_CANCER = "no cancer: patient's highest box"


def phantom_truth_of_run(eval_dir: str) -> tuple[dict | None, str]:
    """(image id -> the phantom's truth, "") for a run evaluated on (part of) one synthetic set, found from the
    images it evaluated (eval_dir/images.json: ROOT/images/<file> beside ROOT/annotations.json, every id the
    set's own); (None, why not) otherwise, e.g. for real data."""
    from ..data.synthetic import load_phantom_truth

    path = os.path.join(eval_dir, "images.json")
    if not os.path.exists(path):
        return None, f"{path} not found"
    with open(path) as f:
        images = json.load(f)
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(im["file_name"]))) for im in images}
    if len(roots) != 1:
        return None, f"the images of {path} are not of one synthetic set"
    root = roots.pop()
    ann = os.path.join(root, "annotations.json")
    try:
        with open(ann) as f:
            coco = json.load(f)
    except (OSError, ValueError):
        return None, f"{root} holds no readable annotations.json: not a synthetic set"
    if "generator_version" not in coco.get("info", {}):
        return None, f"{ann} was not written by the phantom's generator"
    files = {im["id"]: os.path.join(root, im["file_name"]) for im in coco["images"]}
    for im in images:
        if files.get(im["image_id"]) != os.path.abspath(im["file_name"]):
            return None, (f"{path}: image {im['image_id']} is {im['file_name']}, but {files.get(im['image_id'])} in "
                          f"{ann}")
    try:
        truth = load_phantom_truth(root)
    except ValueError as e:
        return None, str(e)
    ids = {im["image_id"] for im in images}
    return {i: t for i, t in truth.items() if i in ids}, ""


def finding_scores(eval_dir: str, patient_scores: Mapping[str, float], patient_labels: Mapping[str, int],
                   truth: Mapping[int, Mapping], iou_threshold: float = FINDING_IOU) -> dict[str, list[float]]:
    """Scores by finding, for one evaluated run: "cancer" (every malignant mass), "look-alike: <kind>" (every
    benign look-alike of that kind), each the highest score of the run's boxes (inference/<dataset>/
    coco_instances_results.json) whose IoU with its box is at least ``iou_threshold`` (0 when none), and
    :data:`NO_CANCER`: the patient score (highest box) of every patient without cancer."""
    from ..data.synthetic import LOOKALIKE_KINDS

    with open(os.path.join(eval_dir, "coco_instances_results.json")) as f:
        detections = json.load(f)
    boxes, scores = {}, {}
    for d in detections:
        x, y, w, h = d["bbox"]
        boxes.setdefault(d["image_id"], []).append([x, y, x + w, y + h])
        scores.setdefault(d["image_id"], []).append(d["score"])
    out = OrderedDict([("cancer", [])] + [(f"look-alike: {k}", []) for k in LOOKALIKE_KINDS])
    for image_id in sorted(truth):
        b = np.asarray(boxes.get(image_id, []), dtype=np.float64).reshape(-1, 4)
        s = np.asarray(scores.get(image_id, []), dtype=np.float64)
        for les in truth[image_id]["lesions"]:
            group = "cancer" if les["class"] == "malignant" else f"look-alike: {les['kind']}"
            on = box_iou(np.asarray([les["box"]], dtype=np.float64), b)[0] >= iou_threshold if len(b) else []
            out.setdefault(group, []).append(float(s[on].max()) if np.any(on) else 0.0)
    out[NO_CANCER] = [float(patient_scores[p]) for p in sorted(patient_labels) if patient_labels[p] == 0]
    return out


def _summary(values: Sequence[float], threshold: float) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": len(v), "median": float(med), "q1": float(q1), "q3": float(q3),
            "share_at_threshold": float(np.mean(v >= threshold)), "scores": [float(x) for x in v]}


def add_score_distributions(loaded: Mapping[str, dict], output_dir: str, results: dict) -> tuple[list[str], list[str]]:
    """The section on what moved (Markdown lines, HTML parts): per run, the scores of cancers, of each look-alike
    kind and of the patients without cancer (their highest box), from the phantom's truth, with scores.png; a
    note instead for runs not evaluated on a synthetic set. Stores them in ``results["score_distributions"]``."""
    dists, skipped = OrderedDict(), OrderedDict()
    for name, r in loaded.items():
        truth, why = phantom_truth_of_run(r["eval_dir"])
        boxes = os.path.join(r["eval_dir"], "coco_instances_results.json")
        if truth is not None and not os.path.exists(boxes):
            truth, why = None, f"{boxes} not found (an archived run keeps no per-box results)"
        if truth is None:
            skipped[name] = why
            continue
        groups = finding_scores(r["eval_dir"], r["scores"], r["labels"], truth)
        dists[name] = OrderedDict((g, _summary(v, r["threshold"])) for g, v in groups.items())
    results["score_distributions"] = dict(dists, **({"unavailable": dict(skipped)} if skipped else {}))
    lines, parts = ["## Scores by finding", ""], ["<h2>Scores by finding</h2>"]
    if skipped:
        note = "No phantom truth for " + "; ".join(f"{n} ({w})" for n, w in skipped.items()) + "."
        lines += [note, ""]
        parts.append(f"<p>{html.escape(note)}</p>")
    if not dists:
        return lines, parts
    threshold = next(iter(loaded.values()))["threshold"]
    intro = (f"Per run, the score of every cancer and every look-alike of the test images (its highest box with IoU "
             f">= {FINDING_IOU} with it; 0 when none) and the highest box of every patient without cancer: median "
             f"[quartiles], the share scoring at least {threshold:g}, and how many there are.")
    every = list(dict.fromkeys(g for groups in dists.values() for g in groups))
    findings = [g for g in every if any(groups.get(g, {}).get("n") for groups in dists.values())]
    if len(findings) < len(every):
        intro += f" None in the test images: {', '.join(g for g in every if g not in findings)}."

    def cell(d: Mapping | None) -> str:
        if not d or not d["n"]:
            return "none"
        return (f"{d['median']:.3f} [{d['q1']:.3f}, {d['q3']:.3f}]; {_fmt(d['share_at_threshold'])} >= "
                f"{threshold:g}; n {d['n']}")

    header = ["finding", *dists]
    rows = [[g, *(cell(groups.get(g)) for groups in dists.values())] for g in findings]
    plot_score_distributions({n: {g: d.get("scores", []) for g, d in gs.items()} for n, gs in dists.items()},
                             os.path.join(output_dir, "scores.png"), threshold)
    lines += [intro, "", _md_table(header, rows), "", "![scores by finding](scores.png)", ""]
    parts += [f"<p>{html.escape(intro)}</p>", html_table(header, rows), "<p><img src='scores.png'></p>"]
    return lines, parts


def _html(title, header, rows, diff_header, diff_rows, point_header=(), point_rows=(), extra=()):
    table = html_table
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>", table(header, rows)]
    if diff_rows:
        parts += ["<h2>Paired differences</h2>", table(diff_header, diff_rows)]
    if point_rows:
        parts += ["<h2>Operating points chosen on validation (test figures)</h2>", table(point_header, point_rows)]
    parts += ["<p><img src='roc.png'> <img src='froc.png'></p>", *extra, "</body></html>"]
    return "\n".join(parts)
