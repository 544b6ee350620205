"""The budget curve (mammo_tl/experiments/budget_curve.py, tools/budget_curve.py) and the pre-registered commands of
docs/experiments.md, run as typed on tiny sets of the phantom's DDSM protocol."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from mammo_tl.experiments.budget_curve import (METRICS, BudgetError, budget_opts, collect, mean_rows, parse_budgets,
                                          write_budget_curve)
from tests.common import REPO, TINY_SPEC, config_path, run_in_process


def test_parse_budgets():
    assert parse_budgets(["2400:0", "600:0,1", "1200:0,1"]) == [(600, [0, 1]), (1200, [0, 1]), (2400, [0])]
    for bad in (["600"], ["600:a"], ["2:0"], ["600:0,0"], ["600:0", "600:1"], []):
        with pytest.raises(BudgetError, match="--budgets"):
            parse_budgets(bad)


def test_budget_opts_drop_the_rate_at_three_quarters():
    # the CPU configs' own schedule at 600 iterations: SOLVER.STEPS (450,)
    assert budget_opts(600) == ["SOLVER.MAX_ITER", "600", "SOLVER.STEPS", "(450,)"]
    assert budget_opts(2400)[-1] == "(1800,)" and budget_opts(4)[-1] == "(3,)"


def _seed_results(output, iters, seed, runs):
    d = output / f"iters_{iters}" / f"seed_{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"runs": runs}))


def _run(auc, sens, spec, ap50, cpm, points=None):
    r = {"auc": auc, "sensitivity": sens, "specificity": spec, "ap50": ap50, "froc_cpm": cpm, "accuracy": 0.5}
    if points is not None:
        r["operating_points"] = {"validation_dataset": "v", "test": points}
    return r


def test_table_and_plot_from_hand_made_runs(tmp_path):
    """Two lengths (600 over seeds 0 and 1, 2400 over seed 0), two configs: the CSV holds every run as written,
    the means are those computed by hand, a missing operating point is n/a (NaN), not a zero."""
    pts = {"sensitivity_0.9": {"sensitivity": 0.9, "specificity": 0.4}, "youden": {"sensitivity": 0.7,
                                                                                  "specificity": 0.8}}
    _seed_results(tmp_path, 600, 0, {"a": _run(0.70, 0.9, 0.2, 0.30, 0.40, pts), "d": _run(0.60, 1.0, 0.0, 0.2, 0.3)})
    _seed_results(tmp_path, 600, 1, {"a": _run(0.80, 0.8, 0.4, 0.50, 0.60, pts), "d": _run(0.70, 0.9, 0.1, 0.4, 0.5)})
    _seed_results(tmp_path, 2400, 0, {"a": _run(0.90, 0.7, 0.9, 0.60, 0.70, pts),
                                      "d": _run(0.95, 0.8, 0.8, 0.65, 0.75, pts)})
    budgets = [(600, [0, 1]), (2400, [0])]
    rows = write_budget_curve(str(tmp_path), ["a", "d"], budgets)
    assert len(rows) == 6
    means = {(m["iterations"], m["config"]): m for m in mean_rows(rows)}
    assert means[(600, "a")]["auc"] == pytest.approx(0.75)
    assert means[(600, "a")]["specificity"] == pytest.approx(0.3)
    assert means[(600, "d")]["ap50"] == pytest.approx(0.3)
    assert means[(600, "a")]["specificity@sensitivity_0.9"] == pytest.approx(0.4)
    assert math.isnan(means[(600, "d")]["specificity@youden"])  # no operating points in d's 600 runs
    assert means[(2400, "d")]["froc_cpm"] == pytest.approx(0.75) and means[(2400, "d")]["seeds"] == [0]
    with open(tmp_path / "budget_curve.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["iterations"], r["config"], r["seed"]) for r in table] == [
        ("600", "a", "0"), ("600", "d", "0"), ("600", "a", "1"), ("600", "d", "1"), ("2400", "a", "0"),
        ("2400", "d", "0")]
    assert float(table[1]["auc"]) == 0.6 and table[1]["specificity@youden"] == "nan"
    md = (tmp_path / "budget_curve.md").read_text()
    assert "| 600 | a | 0 1 | 0.750 |" in md and "n/a" in md
    assert (tmp_path / "budget_curve.png").stat().st_size > 1000
    assert set(json.loads((tmp_path / "budget_curve.json").read_text())["metrics"]) == {k for k, _ in METRICS}
    with pytest.raises(BudgetError, match="seed_1"):
        collect(str(tmp_path), ["a"], [(2400, [0, 1])])
    with pytest.raises(BudgetError, match="no run 'b'"):
        collect(str(tmp_path), ["b"], budgets)
    r = run_in_process(["tools/budget_curve.py", "--output", str(tmp_path), "--budgets", "600:0,1", "2400:0",
                        "--table-only", "--configs", "configs/x/a.yaml", "configs/x/d.yaml"])
    assert r.returncode == 0, r.stderr
    bad = run_in_process(["tools/budget_curve.py", "--output", str(tmp_path), "--budgets", "600", "--configs", "a"])
    assert bad.returncode == 2 and "ITERATIONS:SEED" in bad.stderr


@pytest.fixture(scope="module")
def tiny_ddsm(tmp_path_factory):
    """Tiny sets of the DDSM protocol as records JSON: training 3 malignant + 3 benign cases (also with the
    look-alikes boxed as benign, for the ceiling row), test and validation 1 + 1 (two images each): their folder
    and the config overrides that name them."""
    from mammo_tl.data.datasets.synthetic import load_with_benign_boxes
    from mammo_tl.data.records import save_records
    from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic

    root = tmp_path_factory.mktemp("tiny_ddsm")
    paths = {}
    for split, seed, n in (("train", 30, 3), ("test", 31, 1), ("val", 32, 1)):
        generate(str(root / split), SyntheticSpec(num_positive_patients=n, num_negative_patients=n, seed=seed,
                                                  protocol="ddsm", **TINY_SPEC), progress=False)
        paths[split] = str(root / f"{split}.json")
        save_records(load_synthetic(str(root / split)), paths[split])
    paths["train_benign"] = str(root / "train_benign.json")
    save_records(load_with_benign_boxes(str(root / "train")), paths["train_benign"])
    from tests.test_records import TRAIN_OPTS

    opts = [v for i, v in enumerate(TRAIN_OPTS) if not (v == "SEED" or (i and TRAIN_OPTS[i - 1] == "SEED"))]
    register = (f"['td_train={paths['train']}', 'td_test={paths['test']}', 'td_val={paths['val']}', "
                f"'td_train_benign={paths['train_benign']}']")
    return {"root": root, "opts": [*opts, "DATASETS.REGISTER_JSON", register, "DATASETS.TRAIN", "('td_train',)",
                                   "DATASETS.TEST", "('td_test',)", "DATASETS.VALIDATION", "('td_val',)"]}


@pytest.mark.slow
def test_budget_curve_as_typed(tiny_ddsm, tmp_path):
    """docs/experiments.md's budget curve command at 4 and 6 iterations (one seed each) on the tiny DDSM sets,
    the baseline and the forced-sampling row (which holds every idea of the rows before it): each run trained to
    its length, the table's figures those of each seed's report."""
    out = tmp_path / "budget"
    cmd = [sys.executable, "tools/budget_curve.py", "--output", str(out), "--budgets", "4:0", "6:1",
           "--validation-set", "td_val", "--bootstrap", "20",
           "--configs", config_path("synthetic_ddsm/a_positives_only.yaml"),
           config_path("synthetic_ddsm/e_forced_sampling.yaml"), "--opts", *tiny_ddsm["opts"]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "budget_curve.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["iterations"], r["config"], r["seed"]) for r in table] == [
        ("4", "a_positives_only", "0"), ("4", "e_forced_sampling", "0"), ("6", "a_positives_only", "1"),
        ("6", "e_forced_sampling", "1")]
    for r in table:
        run = out / f"iters_{r['iterations']}" / f"seed_{r['seed']}" / r["config"]
        saved = (run / "config.yaml").read_text()
        assert f"MAX_ITER: {r['iterations']}\n" in saved and f"\nSEED: {r['seed']}\n" in saved
        assert (run / "operating_points.json").exists()
        report = json.loads((run.parent / "results.json").read_text())["runs"][r["config"]]
        assert float(r["auc"]) == pytest.approx(report["auc"], nan_ok=True)
        assert float(r["froc_cpm"]) == pytest.approx(report["froc_cpm"], nan_ok=True)
    assert (out / "budget_curve.png").exists() and (out / "budget_curve.md").exists()
    # models chosen on the validation set: each length's learning curves in its report and the curve's page
    for n in (4, 6):
        assert (out / f"iters_{n}" / "learning_curves.png").stat().st_size > 1000
        assert f"![learning curves, {n} iterations](iters_{n}/learning_curves.png)" in (
            out / "budget_curve.md").read_text()
    # each seed's report shows the scores by finding: every cancer of the test set's annotations, the benign case
    test_set = json.loads((tiny_ddsm["root"] / "test" / "annotations.json").read_text())
    seed_report = json.loads((out / "iters_4" / "seed_0" / "results.json").read_text())
    dist = seed_report["score_distributions"]["e_forced_sampling"]
    assert dist["cancer"]["n"] == len(test_set["annotations"]) > 0
    assert dist["no cancer: patient's highest box"]["n"] == 1
    assert sum(d["n"] for g, d in dist.items() if g.startswith("look-alike")) == sum(
        len(im["lookalike_kinds"]) for im in test_set["images"])
    assert "## Scores by finding" in (out / "iters_4" / "seed_0" / "report.md").read_text()

    # docs/experiments.md: the finished runs kept without their weights, the output folder gone (a new machine),
    # the runs restored into it, and the same command reuses them (no training) and writes the same table,
    # operating points included
    kept = tmp_path / "kept"
    assert run_in_process(["tools/archive_runs.py", "archive", str(out), str(kept)]).returncode == 0
    shutil.rmtree(out)
    done = run_in_process(["tools/archive_runs.py", "restore", str(kept), str(out)])
    assert done.returncode == 0 and done.stdout.startswith("restored: 4 ("), done.stderr
    assert not list(out.rglob("*.pth")) and len(list(out.rglob("archived.json"))) == 4
    for image in tiny_ddsm["root"].rglob("*.png"):  # another machine: the same images, other mtimes
        os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ": trained and evaluated in" not in done.stdout  # no training
    for r in table:
        run = out / f"iters_{r['iterations']}" / f"seed_{r['seed']}" / r["config"]
        assert f"already trained and evaluated in {run} with this config, reusing it" in done.stdout
    with open(out / "budget_curve.csv") as f:
        assert list(csv.DictReader(f)) == table
    assert "an archived run keeps no per-box results" in (out / "iters_4" / "seed_0" / "report.md").read_text()
    # the reused runs archive again as they were (their run_inputs.json not rewritten for the new mtimes) ...
    done = run_in_process(["tools/archive_runs.py", "archive", str(out), str(kept)])
    assert done.returncode == 0 and done.stdout.splitlines()[:2] == ["archived: 0", "unchanged: 4 (iters_4/seed_0/"
        "a_positives_only, iters_4/seed_0/e_forced_sampling, iters_6/seed_1/a_positives_only, "
        "iters_6/seed_1/e_forced_sampling)"], done.stdout + done.stderr
    # ... and a restored run edited since is not reused: the command names the file
    edited = out / "iters_6" / "seed_1" / "a_positives_only" / "metrics.json"
    edited.write_text(edited.read_text() + "\n")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 2 and f"{edited}: its content differs" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def _on_tiny_data(tmp_path, row, train):
    """configs/synthetic_ddsm/<row>.yaml trained on the tiny set ``train`` instead of the built-in one: a config
    file of its own, so that rows whose training sets differ (the ceiling's boxed look-alikes) run in one command."""
    path = tmp_path / f"{row}.yaml"
    path.write_text(f'_BASE_: "{config_path("synthetic_ddsm/" + row + ".yaml")}"\nDATASETS:\n  TRAIN: ("{train}",)\n')
    return str(path)


@pytest.mark.slow
def test_preregistered_rows_command_as_typed(tiny_ddsm, tmp_path):
    """docs/experiments.md's rows command (tools/demo.py over seeds on configs/synthetic_ddsm/), at 2 iterations
    on the tiny DDSM sets, for rows the budget curve test does not train (b: paired negatives with detectron2's
    losses; d1: the similarity loss on the box head's features; o: the ceiling, look-alikes boxed): models chosen on
    the validation set, learning curves, and the share of the ceiling's gain in the aggregate, equal to the ratio
    of the runs' own AUC gains (scikit-learn on each run's patients.csv)."""
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "rows"
    configs = [_on_tiny_data(tmp_path, "b_paired_negatives", "td_train"),
               _on_tiny_data(tmp_path, "d1_similarity_penultimate", "td_train"),
               _on_tiny_data(tmp_path, "o_benign_annotated", "td_train_benign")]
    opts = [v for i, v in enumerate(tiny_ddsm["opts"]) if v != "DATASETS.TRAIN" and tiny_ddsm["opts"][i - 1] !=
            "DATASETS.TRAIN"]
    cmd = [sys.executable, "tools/demo.py", "--output", str(out), "--seeds", "0", "--validation-set", "td_val",
           "--bootstrap", "20", "--jobs", "2", "--configs", *configs,
           "--opts", *opts, "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "TEST.EVAL_PERIOD", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    agg = json.loads((out / "results.json").read_text())
    assert set(agg["configs"]) == {"b_paired_negatives", "d1_similarity_penultimate", "o_benign_annotated"}
    assert agg["test"]["num_patients"] == 2
    saved = (out / "seed_0" / "d1_similarity_penultimate" / "config.yaml").read_text()
    assert "FEATURE: penultimate" in saved and "IMS_PER_BATCH: 2" in saved
    o_run = out / "seed_0" / "o_benign_annotated"
    assert "NUM_CLASSES: 2" in (o_run / "config.yaml").read_text() and "td_train_benign" in (
        o_run / "config.yaml").read_text()
    auc = {}
    for name in agg["configs"]:
        run = out / "seed_0" / name
        selection = json.loads((run / "selection.json").read_text())
        assert selection["validation_set"] == "td_val" and selection["final"]["iterations_trained"] == 2
        curve = json.loads((run / "validation_curve.json").read_text())  # TEST.EVAL_PERIOD 1: after each iteration
        assert [e["iterations_trained"] for e in curve] == [1, 2]
        assert (run / "inference_final" / "eval_results.json").exists()
        rows = list(csv.DictReader(open(run / "inference" / "td_test" / "patients.csv")))
        auc[name] = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert "## Model selection on validation" in (out / "report.md").read_text()
    assert set(agg["model_selection"]) == set(agg["configs"])
    ceiling = agg["ceiling"]
    assert ceiling["row"] == "o_benign_annotated" and list(ceiling["shares"]) == ["d1_similarity_penultimate"]
    share = ceiling["shares"]["d1_similarity_penultimate"]
    gain, top = auc["d1_similarity_penultimate"] - auc["b_paired_negatives"], auc["o_benign_annotated"] - auc[
        "b_paired_negatives"]
    assert (share["method_gain"], share["ceiling_gain"]) == pytest.approx((gain, top))
    if top > 0:
        assert share["share"] == pytest.approx(gain / top)
    else:
        assert share["share"] is None or math.isnan(share["share"])
    assert "## Share of the ceiling's gain" in (out / "report.md").read_text()
    lo = agg["differences"]["o_benign_annotated - b_paired_negatives"]["auc"]["ci"][0]
    verdict = ("**Whether the ceiling stands above b_paired_negatives is not known" if lo is None or math.isnan(lo)
               else "**The ceiling stands above b_paired_negatives" if lo > 0
               else "**The ceiling does not stand above b_paired_negatives")
    assert verdict in (out / "report.md").read_text()
    # the seed's own report (one run per row, as make demo writes it) shows the same share
    seed_report = json.loads((out / "seed_0" / "results.json").read_text())
    assert seed_report["ceiling"]["shares"]["d1_similarity_penultimate"]["method_gain"] == pytest.approx(gain)
    assert "## Share of the ceiling's gain" in (out / "seed_0" / "report.md").read_text()
    assert "## Model selection on validation" in (out / "seed_0" / "report.md").read_text()


def test_scores_by_finding_on_a_hand_made_run(tmp_path):
    """A run made by hand on a 2-case DDSM set: boxes exactly on every cancer of the CC views (0.9) and on the
    first look-alike of the benign case's CC view (0.7), one box on no finding (0.2). Expected by hand: CC cancers
    0.9, MLO cancers 0 (no box), that look-alike 0.7, every other look-alike 0; the benign case's highest box is
    its patient score. A run on images that are not a synthetic set gets a note, not a section."""
    from collections import defaultdict

    from mammo_tl.data.synthetic import SyntheticSpec, generate, load_phantom_truth
    from mammo_tl.evaluation.report import NO_CANCER, add_score_distributions

    root = tmp_path / "set"
    generate(str(root), SyntheticSpec(num_positive_patients=1, num_negative_patients=1, seed=40, protocol="ddsm",
                                      **TINY_SPEC), progress=False)
    truth = load_phantom_truth(str(root))
    coco = json.loads((root / "annotations.json").read_text())
    eval_dir = tmp_path / "run" / "inference" / "set"
    eval_dir.mkdir(parents=True)
    images = [{"image_id": im["id"], "patient_id": im["patient_id"], "file_name": str(root / im["file_name"]),
               "height": im["height"], "width": im["width"]} for im in coco["images"]]
    (eval_dir / "images.json").write_text(json.dumps(images))
    view = {im["id"]: im["view"] for im in coco["images"]}
    detections, expected = [], defaultdict(list)
    for image_id, t in truth.items():
        first_lookalike = True
        for les in t["lesions"]:
            x1, y1, x2, y2 = les["box"]
            if les["class"] == "malignant":
                score = 0.9 if view[image_id] == "CC" else 0.0
                expected["cancer"].append(score)
            else:
                score = 0.7 if (view[image_id] == "CC" and first_lookalike and not any(
                    m["class"] == "malignant" for m in t["lesions"])) else 0.0
                first_lookalike = first_lookalike and score == 0.0
                expected[f"look-alike: {les['kind']}"].append(score)
            if score:
                detections.append({"image_id": image_id, "category_id": 0, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                   "score": score})
    detections.append({"image_id": 1, "category_id": 0, "bbox": [0, 0, 3, 3], "score": 0.2})  # on no finding
    (eval_dir / "coco_instances_results.json").write_text(json.dumps(detections))
    labels = {}
    for im in coco["images"]:  # a patient has cancer when any of its images holds a mass
        labels[im["patient_id"]] = max(labels.get(im["patient_id"], 0), int(bool(truth[im["id"]]["mass_margins"])))
    benign = next(p for p, y in labels.items() if y == 0)
    patient_scores = {p: (0.9 if y else 0.7) for p, y in labels.items()}
    results = {}
    md, _ = add_score_distributions({"hand": {"eval_dir": str(eval_dir), "scores": patient_scores,
                                              "labels": labels, "threshold": 0.5}}, str(tmp_path), results)
    got = results["score_distributions"]["hand"]
    assert expected["cancer"] and any(k.startswith("look-alike") for k in expected)
    for group, values in expected.items():
        assert sorted(got[group]["scores"]) == sorted(values), group
        assert got[group]["share_at_threshold"] == pytest.approx(sum(v >= 0.5 for v in values) / len(values))
    assert got[NO_CANCER]["scores"] == [patient_scores[benign]]
    assert all(got[g]["n"] == 0 for g in got if g not in expected and g != NO_CANCER)  # kinds absent from the set
    assert "## Scores by finding" in md and "![scores by finding](scores.png)" in md
    assert (tmp_path / "scores.png").stat().st_size > 1000
    # images of no synthetic set: a note naming why, no table
    other = tmp_path / "other" / "inference" / "x"
    other.mkdir(parents=True)
    (other / "images.json").write_text(json.dumps([{"image_id": 1, "file_name": str(tmp_path / "a" / "b.png")}]))
    results = {}
    md, _ = add_score_distributions({"real": {"eval_dir": str(other), "scores": {}, "labels": {}, "threshold": 0.5}},
                                    str(tmp_path / "o"), results)
    assert "not a synthetic set" in results["score_distributions"]["unavailable"]["real"]
    assert any("No phantom truth for real" in line for line in md)
