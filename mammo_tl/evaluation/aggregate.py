"""Runs of each configuration over several training seeds, summarised and compared (tools/report.py --aggregate,
tools/run_ablation.py --seeds, tools/demo.py --seeds).

Each configuration is given as the run folders of its seeds, in the same seed order for every configuration.
They are checked first, every refusal naming the folder: the runs of one configuration must share their saved
config.yaml apart from SEED and OUTPUT_DIR, hold distinct seeds, the i-th run of every configuration must have
the same SEED (runs are paired by seed), and every run must be evaluated on the same test patients with the same
labels.

For every metric (AP50, patient AUC / accuracy / sensitivity / specificity at the evaluation threshold, FROC CPM
and sensitivities, and the test figures at the validation-chosen operating points where every run has them) the
report gives the mean and range (min-max) over seeds and the number of seeds. Each configuration is compared with
the first, pooled over seeds: the difference is the mean over seeds of the per-seed difference on the same test
patients; its 95% interval is a bootstrap over patients in which each replicate resamples the test patients once
and averages the per-seed differences on that resample (patient-level metrics only: AP50 and FROC are box-level
and get the mean difference and the seeds' signs, no interval). The report also says how many seeds' differences
share the sign of the pooled one. Runs whose test results are those of a validation-chosen checkpoint also wrote
their final checkpoint's (inference_final/): where every run has them, the patient AUCs of the final checkpoints are
compared the same way, in a section of their own.
"""
from __future__ import annotations

import html
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..config import ConfigFileError, differing_keys, flatten_config, load_yaml_file
from ..files import atomic_write_json
from .ceiling import ceiling_section, ceiling_shares
from .metrics import _interval, _point_metrics, batch_metrics
from .runs import FINAL_DIR
from .report import _md_table, add_gallery, add_learning_curves, find_eval_dir, html_table, load_run, read_patients

PATIENT_KEYS = ("auc", "accuracy", "sensitivity", "specificity")
POINT_KEYS = ("sensitivity", "specificity", "accuracy")
# keys a seed may change: the seed itself and where the run was written
SEED_KEYS = ("SEED", "OUTPUT_DIR")


class AggregateError(ValueError):
    """Runs that cannot be aggregated or compared; the message names the folder."""


def read_run_config(run_dir: str) -> dict[str, Any]:
    """A run's saved config.yaml (read as data: mammo_tl.config.load_yaml_file), flattened (KEY.SUB -> value)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise AggregateError(f"{run_dir}: no config.yaml (not a training run folder): runs are aggregated over "
                             "seeds only when their configs can be checked to differ in SEED alone")
    try:
        return flatten_config(load_yaml_file(path))
    except ConfigFileError as e:
        raise AggregateError(str(e)) from None


def check_evaluated(run_dir: str) -> None:
    """Refuse a run without inference/eval_results.json holding a bbox AP50: its AP50 would be NaN, and a mean
    "over seeds" would silently be over fewer seeds than listed."""
    import json

    path = os.path.join(run_dir, "inference", "eval_results.json")
    if not os.path.isfile(path):
        raise AggregateError(f"{run_dir}: no inference/eval_results.json (the run was not evaluated, or its "
                             "evaluation was stopped): evaluate it (tools/train_net.py --eval-only) or leave it out")
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        raise AggregateError(f"{path}: unreadable ({type(e).__name__}: {e}); evaluate the run again") from None
    _, dataset = find_eval_dir(run_dir)
    res = res.get(dataset, res) if isinstance(res, dict) else None  # as load_run reads it
    ap50 = res.get("bbox", {}).get("AP50") if isinstance(res, dict) and isinstance(res.get("bbox"), dict) else None
    if not (isinstance(ap50, (int, float)) and not isinstance(ap50, bool) and ap50 == ap50):
        raise AggregateError(f"{path}: no bbox AP50 of {dataset} in the run's evaluation results; evaluate the "
                             "run again (tools/train_net.py --eval-only) or leave it out")


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Sequence[str] = SEED_KEYS) -> list[str]:
    """Keys (other than ``ignore``) whose values differ between two flattened configs."""
    return differing_keys(a, b, ignore)


def check_runs(configs: Mapping[str, Sequence[str]]) -> OrderedDict[str, list]:
    """configs: name -> list of run folders (one per seed). Returns name -> list of seeds (their config SEED)
    after the checks of the module docstring."""
    if not configs:
        raise AggregateError("no configurations to aggregate")
    seeds = OrderedDict()
    for name, dirs in configs.items():
        if not dirs:
            raise AggregateError(f"configuration {name!r}: no run folders")
        first = read_run_config(dirs[0])
        seeds[name] = []
        for d in dirs:
            cfg = read_run_config(d)
            check_evaluated(d)
            diff = config_differences(first, cfg)
            if diff:
                raise AggregateError(f"{d}: its config.yaml differs from that of {dirs[0]} in {diff[:8]}"
                                     f"{' ...' if len(diff) > 8 else ''}; the runs of one configuration ({name!r}) "
                                     f"may differ only in {' and '.join(SEED_KEYS)}")
            s = cfg.get("SEED")
            if s is not None and s >= 0 and s in seeds[name]:
                raise AggregateError(f"{d}: SEED {s} again in configuration {name!r}: give each seed's run once")
            seeds[name].append(s)
    names = list(configs)
    base = names[0]
    for name in names[1:]:
        if len(configs[name]) != len(configs[base]):
            raise AggregateError(f"configuration {name!r} has {len(configs[name])} runs, {base!r} "
                                 f"{len(configs[base])}: give every configuration the same seeds")
        for d, s, s0 in zip(configs[name], seeds[name], seeds[base]):
            if s != s0:
                raise AggregateError(f"{d}: SEED {s}, but the run of {base!r} in the same position has SEED {s0}: "
                                     "list the runs of every configuration in the same seed order")
    return seeds


def _check_patients(ref_dir, ref, d, r):
    if r["labels"] != ref["labels"]:
        a, b = set(ref["labels"]), set(r["labels"])
        if a != b:
            raise AggregateError(f"{d}: evaluated on other test patients than {ref_dir} ({len(b - a)} not there, "
                                 f"{len(a - b)} missing, e.g. {sorted(b ^ a, key=str)[:3]}): runs are compared only "
                                 "on the same test patients")
        bad = sorted((p for p in a if ref["labels"][p] != r["labels"][p]), key=str)
        raise AggregateError(f"{d}: the test patients' labels differ from those of {ref_dir} (e.g. {bad[:3]})")


def _values(r, points):
    """metric -> value of one loaded run (patient metrics at its threshold, AP50, FROC; operating points)."""
    from .operating_points import metrics_at_points

    v = OrderedDict((k, float(r["row"][k])) for k in ("ap50", *PATIENT_KEYS))
    v["froc_cpm"] = float(r["froc"]["cpm"])
    for rate, sens in zip(r["froc"]["fp_rates"], r["froc"]["sensitivity"]):
        v[f"froc_sens@{rate:g}"] = float(sens)
    at = metrics_at_points(r["scores"], r["labels"], points, bootstrap=0) if points else {}
    ops = {p: {"threshold": float(m["threshold"]), **{k: float(m[k]) for k in POINT_KEYS}} for p, m in at.items()}
    return v, ops


def summarise(values: Iterable[float]) -> dict[str, Any]:
    """mean, min, max and number of the finite values (NaN when none), with all values."""
    vals = [float(x) for x in values]
    finite = [x for x in vals if np.isfinite(x)]
    nan = float("nan")
    return {"mean": float(np.mean(finite)) if finite else nan, "min": min(finite) if finite else nan,
            "max": max(finite) if finite else nan, "n": len(finite), "values": vals}


def pooled_difference(y: ArrayLike, pairs: Iterable[Sequence[ArrayLike]], metrics: Sequence[str], bootstrap: int = 1000,
                      seed: int = 0, alpha: float = 0.05, chunk: int = 500) -> dict[str, dict[str, Any]]:
    """Pooled paired difference over seeds on the same patients.

    ``y``: labels (patients); ``pairs``: one (s_base, t_base, s_other, t_other) per seed, scores in the order of
    ``y`` and the thresholds each run is read at. Returns metric -> {"diff": mean over seeds of the per-seed
    difference, "per_seed": [...], "ci": (low, high)}: the (alpha/2, 1 - alpha/2) percentiles, over replicates
    in which it is defined, of the mean over seeds of the differences on one resample of the patients."""
    y = np.asarray(y)
    pairs = [tuple(np.asarray(p, dtype=np.float64) for p in q) for q in pairs]
    with_auc = "auc" in metrics
    per_seed = {m: [] for m in metrics}
    for sb, tb, so, to in pairs:
        mb, mo = _point_metrics(y, sb, tb), _point_metrics(y, so, to)
        for m in metrics:
            per_seed[m].append(float(mo[m] - mb[m]))
    out = {m: {"diff": float(np.mean(per_seed[m])), "per_seed": per_seed[m], "ci": (float("nan"), float("nan"))}
           for m in metrics}
    if not bootstrap:
        return out
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in metrics}
    done = 0
    while done < bootstrap:
        n = min(chunk, bootstrap - done)
        idx = rng.integers(0, len(y), (n, len(y)))
        y_resampled = y[idx]
        acc = {m: np.zeros(n) for m in metrics}
        for sb, tb, so, to in pairs:
            mb = batch_metrics(y_resampled, sb[idx], tb, with_auc)
            mo = batch_metrics(y_resampled, so[idx], to, with_auc)
            for m in metrics:
                acc[m] += mo[m] - mb[m]
        for m in metrics:
            samples[m].append(acc[m] / len(pairs))
        done += n
    for m in metrics:
        out[m]["ci"] = _interval(np.concatenate(samples[m]), alpha)
    return out


def _signs(per_seed, diff):
    pos = sum(d > 0 for d in per_seed)
    neg = sum(d < 0 for d in per_seed)
    zero = sum(d == 0 for d in per_seed)
    agree = pos if diff > 0 else neg if diff < 0 else zero
    return {"positive": pos, "negative": neg, "zero": zero, "agree": agree, "n": len(per_seed)}


def aggregate(configs: Mapping[str, Sequence[str]], bootstrap: int = 1000, seed: int = 0,
              alpha: float = 0.05) -> tuple[dict[str, Any], OrderedDict[str, list[dict]]]:
    """configs: name -> run folders (one per seed, the same seed order for every name; the first name is the
    baseline). Returns (results, loaded runs)."""
    seeds = check_runs(configs)
    loaded = OrderedDict((n, [load_run(d) for d in dirs]) for n, dirs in configs.items())
    names = list(configs)
    ref_dir, ref = configs[names[0]][0], loaded[names[0]][0]
    for n in names:
        for d, r in zip(configs[n], loaded[n]):
            _check_patients(ref_dir, ref, d, r)
    ids = sorted(ref["labels"], key=str)
    y = np.array([int(ref["labels"][p]) for p in ids])

    # operating points present in every run of every configuration are compared; others only summarised
    values, points = OrderedDict(), OrderedDict()
    for n in names:
        per = [_values(r, (r["points"] or {}).get("points")) for r in loaded[n]]
        values[n] = per
        common = set.intersection(*(set(ops) for _, ops in per)) if per else set()
        points[n] = sorted(common)
    results = {"kind": "aggregate over training seeds", "configs": OrderedDict(),
               "test": {"dataset": ref["dataset"], "num_patients": len(ids),
                        "positive": int(y.sum()), "negative": int(len(y) - y.sum())},
               "bootstrap": bootstrap, "differences": OrderedDict()}
    for n in names:
        metrics = OrderedDict((k, summarise([v[k] for v, _ in values[n]])) for k in values[n][0][0])
        ops = OrderedDict((p, OrderedDict((k, summarise([o[p][k] for _, o in values[n]]))
                                          for k in ("threshold", *POINT_KEYS))) for p in points[n])
        val = sorted({r["points"]["validation_dataset"] for r in loaded[n] if r["points"]})
        results["configs"][n] = {"runs": list(configs[n]), "seeds": seeds[n], "num_seeds": len(configs[n]),
                                 "metrics": metrics, "operating_points": ops, "validation_datasets": val}
    base = names[0]
    for n in names[1:]:
        pairs = []
        for rb, ro in zip(loaded[base], loaded[n]):
            t = rb["threshold"]  # as make_report: both runs read at the baseline's threshold
            pairs.append((np.array([rb["scores"][p] for p in ids]), t, np.array([ro["scores"][p] for p in ids]), t))
        d = pooled_difference(y, pairs, PATIENT_KEYS, bootstrap, seed, alpha)
        entry = OrderedDict()
        for k in ("ap50", *PATIENT_KEYS, "froc_cpm", *[k for k in values[n][0][0] if k.startswith("froc_sens")]):
            if k in d:
                per, diff, ci = d[k]["per_seed"], d[k]["diff"], list(d[k]["ci"])
            else:  # box-level: no resampling over patients
                per = [vo[k] - vb[k] for (vb, _), (vo, _) in zip(values[base], values[n])]
                diff, ci = float(np.mean(per)), None
            entry[k] = {"diff": diff, "ci": ci, "per_seed": per, "signs": _signs(per, diff)}
        ops = OrderedDict()
        for p in sorted(set(points[base]) & set(points[n])):
            pp = [(np.array([rb["scores"][q] for q in ids]), ob[p]["threshold"],
                   np.array([ro["scores"][q] for q in ids]), oo[p]["threshold"])
                  for rb, ro, (_, ob), (_, oo) in zip(loaded[base], loaded[n], values[base], values[n])]
            dp = pooled_difference(y, pp, POINT_KEYS, bootstrap, seed, alpha)
            ops[p] = {k: {"diff": dp[k]["diff"], "ci": list(dp[k]["ci"]), "per_seed": dp[k]["per_seed"],
                          "signs": _signs(dp[k]["per_seed"], dp[k]["diff"])} for k in POINT_KEYS}
        entry["operating_points"] = ops
        results["differences"][f"{n} - {base}"] = entry
    ceiling = ceiling_shares({n: [np.array([r["scores"][p] for p in ids]) for r in loaded[n]] for n in names},
                             {n: configs[n][0] for n in names}, y, bootstrap, seed, alpha)
    if ceiling:
        results["ceiling"] = ceiling
    final = final_checkpoint_scores(configs, ref["labels"], ids, ref["dataset"])
    if final is not None:
        results["final_checkpoints"] = final_checkpoint_comparison(final, configs, y, bootstrap, seed, alpha)
    return results, loaded


def final_checkpoint_scores(configs: Mapping[str, Sequence[str]], labels: Mapping[str, int], ids: Sequence[str],
                            dataset: str) -> OrderedDict[str, list[np.ndarray]] | None:
    """name -> per seed the patient scores (in the order of ``ids``) of each run's final checkpoint
    (inference_final/<dataset>/patients.csv, written when the test results are those of a validation-chosen
    checkpoint); None unless every run has one. A file holding other patients or labels is refused, naming it."""
    paths = {n: [os.path.join(d, FINAL_DIR, dataset, "patients.csv") for d in dirs] for n, dirs in configs.items()}
    if not all(os.path.exists(p) for ps in paths.values() for p in ps):
        return None
    out = OrderedDict()
    for n, ps in paths.items():
        out[n] = []
        for path in ps:
            scores, got = read_patients(path)
            _check_patients("the runs' test results", {"labels": labels}, path, {"labels": got})
            out[n].append(np.array([scores[p] for p in ids]))
    return out


def final_checkpoint_comparison(final: Mapping[str, Sequence[np.ndarray]], configs: Mapping[str, Sequence[str]],
                                y: np.ndarray, bootstrap: int, seed: int, alpha: float) -> dict[str, Any]:
    """The patient AUC of each configuration's final checkpoints (mean over seeds) and their differences against the
    baseline pooled over seeds as for the selected checkpoints (the same bootstrap), with the ceiling's share."""
    names = list(final)
    base = names[0]
    out = {"auc": OrderedDict((n, summarise([_point_metrics(y, s, 0.5)["auc"] for s in final[n]])) for n in names),
           "differences": OrderedDict()}
    for n in names[1:]:
        d = pooled_difference(y, [(sb, 0.5, so, 0.5) for sb, so in zip(final[base], final[n])], ["auc"], bootstrap,
                              seed, alpha)["auc"]
        out["differences"][f"{n} - {base}"] = {"auc": {"diff": d["diff"], "ci": list(d["ci"]),
                                                       "per_seed": d["per_seed"],
                                                       "signs": _signs(d["per_seed"], d["diff"])}}
    ceiling = ceiling_shares(final, {n: configs[n][0] for n in names}, y, bootstrap, seed, alpha)
    if ceiling:
        out["ceiling"] = ceiling
    return out


def final_checkpoint_section(results: Mapping[str, Any], base: str) -> tuple[list[str], list[str]]:
    """What the final checkpoints give (Markdown lines, HTML parts); nothing for runs without model selection."""
    f = results.get("final_checkpoints")
    if not f:
        return [], []
    head = ["configuration", "test AUC, final checkpoints", "difference against " + base + " [95% CI]"]
    rows = [[n, _range(s), "" if n == base else _diff_cell(f["differences"][f"{n} - {base}"]["auc"])]
            for n, s in f["auc"].items()]
    text = ("The same comparison at each run's final checkpoint instead of its validation-chosen one (the test "
            "patients' scores each run's end wrote beside its test results, inference_final/): mean (min-max) over "
            "seeds, differences pooled over seeds with the same bootstrap.")
    c = f.get("ceiling")
    share = []
    if c:
        share = ["Share of the ceiling's gain at the final checkpoints: " + "; ".join(
            f"{n}: " + ("n/a (no ceiling gain)" if not np.isfinite(s["share"]) else
                        f"{s['share']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]")
            + f" ({s['replicates_without_gain']} of {s['replicates']} replicates without a ceiling gain)"
            for n, s in c["shares"].items()) + ".", ""]
    md = ["## At the final checkpoints", "", text, "", _md_table(head, rows), "", *share]
    parts = ["<h2>At the final checkpoints</h2>", f"<p>{html.escape(text)}</p>", html_table(head, rows)]
    parts += [f"<p>{html.escape(share[0])}</p>"] if share else []
    return md, parts


LABELS = OrderedDict([("ap50", "mAP (AP50)"), ("auc", "AUC"), ("accuracy", "accuracy"),
                      ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("froc_cpm", "FROC CPM")])


def _label(k):
    return LABELS.get(k) or (f"FROC sens @{k.split('@')[1]} FP/image" if k.startswith("froc_sens@") else k)


def _range(s):
    if not np.isfinite(s["mean"]):
        return "n/a"
    return f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def _diff_cell(d):
    if not np.isfinite(d["diff"]):
        return "n/a"
    s = f"{d['diff']:+.3f}"
    if d["ci"] is not None:
        lo, hi = d["ci"]
        s += f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else " [n/a]"
    g = d["signs"]
    sign = ">0" if d["diff"] > 0 else "<0" if d["diff"] < 0 else "=0"
    return s + f"; {g['agree']}/{g['n']} seeds {sign}"


def write_aggregate_report(configs: Mapping[str, Sequence[str]], output_dir: str, bootstrap: int = 1000, seed: int = 0,
                           title: str = "mammo_tl: over training seeds",
                           per_seed_reports: Sequence[tuple[int, str]] = (), gallery: int = 3,
                           note: str | None = None) -> tuple[dict[str, Any], str]:
    """Aggregate ``configs`` (name -> run folders, one per seed) and write report.md, report.html and
    results.json to ``output_dir`` (and the gallery of the first seed's runs to output_dir/gallery/).
    ``per_seed_reports``: (seed, path relative to output_dir) of each seed's own report, linked from it.
    ``note``: a sentence on how the runs were made (e.g. that the data sets are the same for every seed).
    Returns (results, Markdown)."""
    results, loaded = aggregate(configs, bootstrap, seed)
    os.makedirs(output_dir, exist_ok=True)
    names = list(configs)
    base = names[0]
    test = results["test"]
    seeds = results["configs"][base]["seeds"]
    keys = list(results["configs"][base]["metrics"])
    main = [k for k in ("ap50", *PATIENT_KEYS) if k in keys]
    froc_keys = [k for k in keys if k.startswith("froc")]
    thresholds = sorted({r["threshold"] for rs in loaded.values() for r in rs})

    head = ["configuration", "seeds"] + [_label(k) for k in main]
    rows = [[n, str(c["num_seeds"])] + [_range(c["metrics"][k]) for k in main] for n, c in results["configs"].items()]
    froc_head = ["configuration"] + [_label(k) for k in froc_keys]
    froc_rows = [[n] + [_range(c["metrics"][k]) for k in froc_keys] for n, c in results["configs"].items()]
    diff_keys = [*PATIENT_KEYS, "ap50", "froc_cpm"]
    diff_head = ["difference"] + [_label(k) + ("" if k in PATIENT_KEYS else ", no interval") for k in diff_keys]
    diff_rows = [[name] + [_diff_cell(d[k]) for k in diff_keys] for name, d in results["differences"].items()]
    pt_head = ["configuration", "operating point", "threshold", "sensitivity", "specificity", "accuracy"]
    pt_rows = [[n, p] + [_range(m[k]) for k in ("threshold", *POINT_KEYS)]
               for n, c in results["configs"].items() for p, m in c["operating_points"].items()]
    ptd_head = ["difference", "operating point", "sensitivity", "specificity", "accuracy"]
    ptd_rows = [[name, p] + [_diff_cell(m[k]) for k in POINT_KEYS]
                for name, d in results["differences"].items() for p, m in d["operating_points"].items()]

    intro = (f"Each configuration trained once per training seed (config SEED: {', '.join(map(str, seeds))}); "
             f"every run evaluated on the same {test['num_patients']} test patients of {test['dataset']} "
             f"({test['positive']} with cancer, {test['negative']} healthy). "
             + (note + " " if note else "")
             + "Cells: mean over seeds (min-max over seeds); patient-level metrics at score threshold "
             f"{', '.join(f'{t:g}' for t in thresholds)}, mAP is COCO AP at IoU 0.5 over boxes.")
    diff_text = (f"Differences against {base}, pooled over seeds: the mean over seeds of the per-seed difference on "
                 f"the same test patients, with a 95% bootstrap interval over patients ({bootstrap} replicates; each "
                 "resamples the test patients once and averages the per-seed differences on that resample); "
                 "'k/n seeds >0' says how many of the n seeds' own differences have the pooled difference's sign. "
                 "mAP and FROC are box-level: mean difference and signs only.")
    lines = [f"# {title}", "", intro, "", _md_table(head, rows), "",
             "FROC (lesion sensitivity at false positives per image), mean (min-max) over seeds:", "",
             _md_table(froc_head, froc_rows), ""]
    if diff_rows:
        lines += [diff_text, "", _md_table(diff_head, diff_rows), ""]
    if pt_rows:
        val = sorted({v for c in results["configs"].values() for v in c["validation_datasets"]})
        lines += [f"Test figures at the operating points each run chose on the validation set ({', '.join(val)}), "
                  "never on the test patients; mean (min-max) over seeds:", "", _md_table(pt_head, pt_rows), ""]
    if ptd_rows:
        lines += [f"Differences against {base} at those operating points (each run at its own threshold), pooled "
                  "over seeds as above:", "", _md_table(ptd_head, ptd_rows), ""]
    share_md, share_parts = ceiling_section(results, base)
    lines += share_md
    final_md, final_parts = final_checkpoint_section(results, base)
    lines += final_md
    selection_md, selection_parts = add_learning_curves(configs, output_dir, results)
    lines += selection_md
    if per_seed_reports:
        lines += ["Each seed's own report (tables, ROC and FROC plots, gallery): "
                  + ", ".join(f"[seed {s}]({p})" for s, p in per_seed_reports), ""]
    first = OrderedDict((n, rs[0]) for n, rs in loaded.items())
    gallery_md, gallery_parts = add_gallery(first, output_dir, gallery, results)
    if gallery_md:
        lines += [f"The gallery shows the runs of the first seed (SEED {seeds[0]}).", "", *gallery_md]
    md = "\n".join(lines)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(md)
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", html_table(head, rows),
             "<h2>FROC</h2>", html_table(froc_head, froc_rows)]
    if diff_rows:
        parts += ["<h2>Paired differences, pooled over seeds</h2>", f"<p>{html.escape(diff_text)}</p>",
                  html_table(diff_head, diff_rows)]
    if pt_rows:
        parts += ["<h2>Operating points chosen on validation (test figures)</h2>", html_table(pt_head, pt_rows)]
    if ptd_rows:
        parts += ["<h2>Differences at the operating points</h2>", html_table(ptd_head, ptd_rows)]
    parts += [*share_parts, *final_parts, *selection_parts]
    if per_seed_reports:
        links = ", ".join(f"<a href='{html.escape(os.path.splitext(p)[0] + '.html', quote=True)}'>seed {s}</a>"
                          for s, p in per_seed_reports)
        parts += [f"<p>Each seed's own report: {links}</p>"]
    if gallery_parts:
        parts += [f"<p>The gallery shows the runs of the first seed (SEED {seeds[0]}).</p>", *gallery_parts]
    parts += ["</body></html>"]
    with open(os.path.join(output_dir, "report.html"), "w") as f:
        f.write("\n".join(parts))
    atomic_write_json(results, os.path.join(output_dir, "results.json"), indent=1, default=float)
    return results, md
