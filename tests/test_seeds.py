"""Runs over training seeds: the aggregate report on hand-made runs (mean, range, pooled paired differences, signs),
its refusals, tools/report.py --aggregate, and tools/demo.py --seeds as a user types it."""
import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.common import REPO, config_path, run_in_process
from tests.test_gallery import DATASET, write_fake_run

LABELS = {"H1": 0, "H2": 0, "H3": 0, "C1": 1, "C2": 1, "C3": 1}
# per seed; at threshold 0.5 (score above it: recalled). Pairs (cancer above healthy) out of 9 by hand:
A = [{"H1": .9, "H2": .2, "H3": .1, "C1": .8, "C2": .7, "C3": .3},    # AUC 6/9; sens 2/3, spec 2/3, acc 4/6
     {"H1": .6, "H2": .4, "H3": .1, "C1": .9, "C2": .5, "C3": .2},    # AUC 6/9; sens 1/3, spec 2/3, acc 3/6
     {"H1": .7, "H2": .3, "H3": .2, "C1": .95, "C2": .8, "C3": .6}]   # AUC 8/9; sens 1,   spec 2/3, acc 5/6
D = [{"H1": .4, "H2": .2, "H3": .1, "C1": .8, "C2": .7, "C3": .3},    # AUC 8/9; sens 2/3, spec 1,   acc 5/6
     {"H1": .3, "H2": .2, "H3": .1, "C1": .9, "C2": .6, "C3": .55},   # AUC 1;   sens 1,   spec 1,   acc 1
     dict(A[2])]                                                      # as A's seed 2
AP50 = {"a": [0.5, 0.6, 0.7], "d": [0.65, 0.7, 0.75]}
CPM = {"a": [0.4, 0.5, 0.9], "d": [0.6, 0.5, 0.9]}


def _make(root, name, scores, seeds=(0, 1, 2), points=None, config=None):
    return [write_fake_run(os.path.join(root, f"seed_{s}", name), LABELS, scores[i], seed=s, ap50=AP50[name][i],
                           froc_sens=CPM[name][i], points=points, config=config)
            for i, s in enumerate(seeds)]


def test_hand_made_runs_aggregate_to_hand_computed_figures(tmp_path):
    from mammo_tl.evaluation.aggregate import write_aggregate_report

    runs = {"a": _make(str(tmp_path), "a", A, points={"youden": 0.25}),
            "d": _make(str(tmp_path), "d", D, points={"youden": 0.5})}
    out = tmp_path / "agg"
    res, md = write_aggregate_report(runs, str(out), bootstrap=300, gallery=0)
    ca, cd = res["configs"]["a"]["metrics"], res["configs"]["d"]["metrics"]
    assert res["configs"]["a"]["seeds"] == [0, 1, 2] and res["configs"]["d"]["num_seeds"] == 3
    assert res["test"] == {"dataset": DATASET, "num_patients": 6, "positive": 3, "negative": 3}
    # mean, min, max by hand
    assert (ca["auc"]["mean"], ca["auc"]["min"], ca["auc"]["max"]) == pytest.approx((20 / 27, 6 / 9, 8 / 9))
    assert ca["auc"]["mean"] == pytest.approx(np.mean([roc_auc_score([LABELS[p] for p in sorted(LABELS)],
                                                                     [s[p] for p in sorted(LABELS)]) for s in A]))
    assert (ca["sensitivity"]["mean"], ca["sensitivity"]["min"], ca["sensitivity"]["max"]) == pytest.approx(
        (2 / 3, 1 / 3, 1.0))
    assert (ca["accuracy"]["mean"], ca["accuracy"]["min"], ca["accuracy"]["max"]) == pytest.approx(
        (4 / 6, 3 / 6, 5 / 6))
    assert (cd["auc"]["mean"], cd["specificity"]["mean"], cd["specificity"]["min"]) == pytest.approx(
        (25 / 27, 8 / 9, 2 / 3))
    assert (ca["ap50"]["mean"], ca["ap50"]["min"], ca["ap50"]["max"], ca["ap50"]["n"]) == pytest.approx(
        (0.6, 0.5, 0.7, 3))
    assert (cd["froc_cpm"]["mean"], cd["froc_sens@0.125"]["mean"]) == pytest.approx((2.0 / 3, 2.0 / 3))

    d = res["differences"]["d - a"]
    # pooled: the mean over seeds of the per-seed differences on the same patients
    assert d["auc"]["per_seed"] == pytest.approx([2 / 9, 3 / 9, 0.0])
    assert d["auc"]["diff"] == pytest.approx(5 / 27)
    assert d["sensitivity"]["diff"] == pytest.approx(2 / 9) and d["specificity"]["diff"] == pytest.approx(2 / 9)
    assert d["accuracy"]["per_seed"] == pytest.approx([1 / 6, 1 / 2, 0.0])
    for k in ("auc", "accuracy", "sensitivity", "specificity"):
        lo, hi = d[k]["ci"]
        assert lo <= d[k]["diff"] <= hi and lo < hi
    # signs: AUC up in seeds 0 and 1, equal in seed 2
    assert d["auc"]["signs"] == {"positive": 2, "negative": 0, "zero": 1, "agree": 2, "n": 3}
    assert d["ap50"]["diff"] == pytest.approx(0.1) and d["ap50"]["ci"] is None
    assert d["ap50"]["signs"]["agree"] == 3
    assert d["froc_cpm"]["per_seed"] == pytest.approx([0.2, 0.0, 0.0])
    # operating points: each run at its own threshold (a: 0.25, d: 0.5), by hand
    oa = res["configs"]["a"]["operating_points"]["youden"]
    assert (oa["sensitivity"]["mean"], oa["specificity"]["mean"], oa["accuracy"]["mean"]) == pytest.approx(
        (8 / 9, 4 / 9, 2 / 3))
    assert oa["threshold"]["mean"] == 0.25
    od = d["operating_points"]["youden"]
    assert od["sensitivity"]["per_seed"] == pytest.approx([-1 / 3, 1 / 3, 0.0])
    assert od["sensitivity"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert od["specificity"]["diff"] == pytest.approx(4 / 9) and od["accuracy"]["diff"] == pytest.approx(2 / 9)

    assert "| a | 3 | 0.600 (0.500-0.700) | 0.741 (0.667-0.889) |" in md
    assert "+0.185 [" in md and "2/3 seeds >0" in md
    assert "| d - a | youden |" in md and "SEED: 0, 1, 2" in md
    assert json.load(open(out / "results.json"))["differences"]["d - a"]["auc"]["diff"] == pytest.approx(5 / 27)
    html = (out / "report.html").read_text()
    assert "Paired differences, pooled over seeds" in html and "http" not in html


def test_identical_runs_differ_by_exactly_zero(tmp_path):
    from mammo_tl.evaluation.aggregate import aggregate

    runs = {"a": _make(str(tmp_path / "x"), "a", A), "a2": _make(str(tmp_path / "y"), "a", A)}
    res, _ = aggregate(runs, bootstrap=200)
    for k in ("auc", "accuracy", "sensitivity", "specificity"):
        e = res["differences"]["a2 - a"][k]
        assert e["diff"] == 0.0 and e["ci"] == [0.0, 0.0] and e["signs"]["zero"] == 3 and e["signs"]["agree"] == 3


def test_pooled_bootstrap_auc_matches_sklearn_on_resamples():
    """The vectorised resample metrics equal sklearn's (AUC with ties) and the plain counts."""
    from mammo_tl.evaluation.metrics import batch_metrics as _batch_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (40, 12))
    y[:, 0], y[:, 1] = 0, 1
    s = rng.integers(0, 5, (40, 12)) / 4.0  # ties
    m = _batch_metrics(y, s, 0.5, True)
    for i in range(40):
        assert m["auc"][i] == pytest.approx(roc_auc_score(y[i], s[i]))
        tp = np.sum((s[i] > 0.5) & (y[i] == 1))
        assert m["sensitivity"][i] == pytest.approx(tp / y[i].sum())
        assert m["accuracy"][i] == pytest.approx((tp + np.sum((s[i] <= 0.5) & (y[i] == 0))) / 12)


def test_refusals_name_the_folder(tmp_path):
    from mammo_tl.evaluation.aggregate import AggregateError, aggregate

    a = _make(str(tmp_path), "a", A)
    d = _make(str(tmp_path), "d", D)
    # SEED and OUTPUT_DIR may differ: accepted
    aggregate({"a": a, "d": d}, bootstrap=0)
    # another key differs within one configuration
    other = write_fake_run(str(tmp_path / "other"), LABELS, A[1], seed=1, ap50=0.5,
                           config={"MODEL.ROI_HEADS.NAME": "MammoROIHeads"})
    with pytest.raises(AggregateError, match=re.escape(f"{other}: its config.yaml differs from that of {a[0]} in "
                                                       "['MODEL.ROI_HEADS.NAME']")):
        aggregate({"a": [a[0], other, a[2]], "d": d}, bootstrap=0)
    # other test patients
    fewer = {p: v for p, v in LABELS.items() if p != "C3"}
    missing = write_fake_run(str(tmp_path / "fewer"), fewer, {p: A[1][p] for p in fewer}, seed=1, ap50=0.5)
    with pytest.raises(AggregateError, match=re.escape(f"{missing}: evaluated on other test patients than {a[0]}")):
        aggregate({"a": a, "d": [d[0], missing, d[2]]}, bootstrap=0)
    relabelled = write_fake_run(str(tmp_path / "relabelled"), dict(LABELS, C3=0), A[1], seed=1, ap50=0.5)
    with pytest.raises(AggregateError, match=re.escape(f"{relabelled}: the test patients' labels differ")):
        aggregate({"a": [a[0], relabelled, a[2]]}, bootstrap=0)
    # seeds in another order, a seed twice, no config.yaml
    with pytest.raises(AggregateError,
                       match=re.escape(f"{d[1]}: SEED 1, but the run of 'a' in the same position has SEED 0")):
        aggregate({"a": a, "d": [d[1], d[0], d[2]]}, bootstrap=0)
    with pytest.raises(AggregateError, match=re.escape(f"{a[0]}: SEED 0 again")):
        aggregate({"a": [a[0], a[0]]}, bootstrap=0)
    os.remove(os.path.join(d[2], "config.yaml"))
    with pytest.raises(AggregateError, match=re.escape(f"{d[2]}: no config.yaml")):
        aggregate({"a": a, "d": d}, bootstrap=0)


@pytest.mark.slow
def test_tools_report_aggregate_as_typed(tmp_path):
    a = _make(str(tmp_path), "a", A)
    d = _make(str(tmp_path), "d", D)
    out = tmp_path / "agg"
    cmd = [sys.executable, "tools/report.py", "--output", str(out), "--bootstrap", "50",
           "--aggregate", "a=" + ",".join(a), "--aggregate", "d=" + ",".join(d)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.load(open(out / "results.json"))
    assert res["differences"]["d - a"]["auc"]["diff"] == pytest.approx(5 / 27)
    assert (out / "report.html").exists() and "| d - a |" in (out / "report.md").read_text()
    bad = run_in_process(cmd[1:-1] + ["d=" + ",".join([d[1], d[0], d[2]])])  # the refusal: no second start-up
    assert bad.returncode == 2 and f"error: {d[1]}: SEED 1" in bad.stderr


def test_seed_folders_keep_the_run_guarantees(tmp_path):
    """A seed's folder holding another seed's run is refused like any other config; layouts never mix."""
    from mammo_tl.experiments.rows import RunMismatch, expected_config, run_rows

    configs = [config_path("synthetic/a_positives_only.yaml")]
    out = tmp_path / "out"
    held = out / "seed_1" / "a_positives_only"
    held.mkdir(parents=True)
    cfg = expected_config(configs[0], ["OUTPUT_DIR", str(held), "TEST.PATIENT.BOOTSTRAP", "10", "SEED", "0"])
    (held / "config.yaml").write_text(cfg.dump())
    with pytest.raises(RunMismatch, match=r"seed_1/a_positives_only holds a run of another config \(differing keys: "
                                          r"\['SEED'\]"):
        run_rows(configs, str(out), bootstrap=10, seeds=[1])
    with pytest.raises(RunMismatch, match="holds runs over seeds"):
        run_rows(configs, str(out), bootstrap=10)  # without --seeds into a folder of runs over seeds
    single = tmp_path / "single" / "a_positives_only"
    single.mkdir(parents=True)
    (single / "config.yaml").write_text(cfg.dump())
    with pytest.raises(RunMismatch, match="holds a run made without --seeds"):
        run_rows(configs, str(tmp_path / "single"), bootstrap=10, seeds=[0])
    with pytest.raises(ValueError, match="not as SEED"):
        run_rows(configs, str(tmp_path / "new"), ["SEED", "3"], seeds=[0])
    with pytest.raises(ValueError, match="distinct non-negative"):
        run_rows(configs, str(tmp_path / "new"), seeds=[0, 0])


@pytest.mark.slow
def test_demo_over_seeds_as_typed(tiny_datasets, tmp_path):
    """tools/demo.py --seeds on the tiny sets: seed_*/ runs with their own reports and the aggregate over them."""
    from detectron2.data import DatasetCatalog

    from mammo_tl.data.datasets.common import save_records
    from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic
    from mammo_tl.evaluation.evaluators import labels_from_records
    from tests.common import TINY_SPEC
    from tests.test_records import TRAIN_OPTS

    paths = {}
    for split in ("train", "test"):
        paths[split] = str(tmp_path / f"{split}.json")
        records = copy.deepcopy(DatasetCatalog.get(f"mammo_synth_tiny_{split}"))
        if split == "test":  # one healthy and one cancer patient: every image costs inference time, twice
            labels, _ = labels_from_records(records)
            keep = {min(p for p, y in labels.items() if y == 0), min(p for p, y in labels.items() if y == 1)}
            records = [r for r in records if r["patient_id"] in keep]
        save_records(records, paths[split])
    generate(str(tmp_path / "val"), SyntheticSpec(num_positive_patients=1, num_negative_patients=1, seed=12,
                                                  **TINY_SPEC), progress=False)
    paths["val"] = str(tmp_path / "val.json")
    save_records(load_synthetic(str(tmp_path / "val")), paths["val"])
    opts = [*TRAIN_OPTS, "SOLVER.MAX_ITER", "1",
            "DATASETS.REGISTER_JSON", f"['sd_train={paths['train']}', 'sd_test={paths['test']}', "
                                      f"'sd_val={paths['val']}']",
            "DATASETS.TRAIN", "('sd_train',)", "DATASETS.TEST", "('sd_test',)"]
    opts = [v for i, v in enumerate(opts) if not (v == "SEED" or (i and opts[i - 1] == "SEED"))]
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/demo.py", "--output", str(out), "--seeds", "0", "1", "--bootstrap", "20",
           "--jobs", "1", "--validation-set", "sd_val", "--configs", config_path("synthetic/a_positives_only.yaml"),
           "--opts", *opts]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    per_seed = {}
    for s in (0, 1):
        run = out / f"seed_{s}" / "a_positives_only"
        assert (run / "model_final.pth").exists() and (run / "operating_points.json").exists()
        assert f"\nSEED: {s}\n" in (run / "config.yaml").read_text()
        assert (out / f"seed_{s}" / "report.md").exists()
        per_seed[s] = json.load(open(out / f"seed_{s}" / "results.json"))["runs"]["a_positives_only"]
    agg = json.load(open(out / "results.json"))
    c = agg["configs"]["a_positives_only"]
    assert c["seeds"] == [0, 1] and c["num_seeds"] == 2 and agg["test"]["num_patients"] == 2
    for k in ("auc", "sensitivity", "specificity", "accuracy"):
        values = [per_seed[s][k] for s in (0, 1)]
        assert c["metrics"][k]["values"] == pytest.approx(values, nan_ok=True)
        finite = [v for v in values if v == v]
        if finite:
            assert c["metrics"][k]["mean"] == pytest.approx(np.mean(finite))
            assert (c["metrics"][k]["min"], c["metrics"][k]["max"]) == pytest.approx((min(finite), max(finite)))
    md = (out / "report.md").read_text()
    assert "over training seeds" in md and "the same for every training seed" in md
    assert "[seed 0](seed_0/report.md)" in md and "## Gallery" in md
    for ref in md.split("](")[1:]:
        path = ref.split(")")[0]
        assert not path.startswith(("/", "http")) and (out / path).exists(), path

    # tools/phantom_difficulty.py --run on seed 0's baseline (docs/phantom.md): its figures, the seed's files untouched
    seed_dir = out / "seed_0"
    before = {p: p.read_bytes() for p in seed_dir.rglob("*") if p.is_file()}
    # in this process (tests/test_phantom.py runs the script as a process): a Python start-up with torch saved
    cmd = [sys.executable, "tools/phantom_difficulty.py", "--run", str(seed_dir / "a_positives_only"),
           "--output", str(tmp_path / "pd")]
    done = run_in_process(cmd[1:])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.load(open(tmp_path / "pd" / "difficulty.json"))
    assert result["run_dir"] == str(seed_dir / "a_positives_only")
    assert result["figures"]["patient_auc"] == pytest.approx(per_seed[0]["auc"], nan_ok=True)
    assert result["figures"]["num_patients"] == 2 and "breakdown" in result  # the tiny sets are synthetic
    assert {p: p.read_bytes() for p in seed_dir.rglob("*") if p.is_file()} == before
    refused = run_in_process(cmd[1:] + ["--opts", "SEED", "1"])
    assert refused.returncode == 2 and "do not apply" in refused.stderr


def test_final_checkpoints_compared_as_the_chosen_ones(tmp_path):
    """Runs with a final checkpoint's test scores beside their validation-chosen ones (inference_final/): the
    aggregate compares them too, pooled over seeds as the chosen ones (the AUC by hand and by scikit-learn); a
    final evaluation of other patients is refused, naming the file."""
    import csv

    from mammo_tl.evaluation.aggregate import AggregateError, write_aggregate_report

    runs = {"a": _make(str(tmp_path), "a", A), "d": _make(str(tmp_path), "d", D)}
    ids = sorted(LABELS)
    for name, finals in (("a", D), ("d", A)):  # the final checkpoints swapped: d's final scores are a's chosen ones
        for run, scores in zip(runs[name], finals):
            os.makedirs(os.path.join(run, "inference_final", DATASET))
            with open(os.path.join(run, "inference_final", DATASET, "patients.csv"), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["patient_id", "label", "score"])
                w.writerows((p, LABELS[p], scores[p]) for p in ids)
    res, md = write_aggregate_report(runs, str(tmp_path / "agg"), bootstrap=200, gallery=0)
    f = res["final_checkpoints"]
    y = [LABELS[p] for p in ids]
    per_seed = [roc_auc_score(y, [A[i][p] for p in ids]) - roc_auc_score(y, [D[i][p] for p in ids]) for i in range(3)]
    assert per_seed == pytest.approx([-2 / 9, -3 / 9, 0])
    assert f["differences"]["d - a"]["auc"]["per_seed"] == pytest.approx(per_seed)
    assert f["differences"]["d - a"]["auc"]["diff"] == pytest.approx(-5 / 27)
    lo, hi = f["differences"]["d - a"]["auc"]["ci"]
    assert lo <= -5 / 27 <= hi and lo < hi
    assert f["auc"]["a"]["mean"] == pytest.approx(25 / 27) and f["auc"]["d"]["mean"] == pytest.approx(20 / 27)
    assert res["differences"]["d - a"]["auc"]["diff"] == pytest.approx(5 / 27)  # the chosen ones, unchanged
    assert "## At the final checkpoints" in md and "| d | 0.741 (0.667-0.889) | -0.185 [" in md
    bad = os.path.join(runs["d"][1], "inference_final", DATASET, "patients.csv")
    with open(bad, "a") as fh:
        fh.write("X9,0,0.5\n")
    with pytest.raises(AggregateError, match=re.escape(bad)):
        write_aggregate_report(runs, str(tmp_path / "agg2"), bootstrap=0, gallery=0)
    os.remove(bad)  # a run without its final evaluation: no such section
    res, md = write_aggregate_report(runs, str(tmp_path / "agg3"), bootstrap=0, gallery=0)
    assert "final_checkpoints" not in res and "## At the final checkpoints" not in md
