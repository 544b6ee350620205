"""The commands of datasets/README.md, typed as a user types them, on a small release of each source format
(tests/realistic_fixtures.py): prepare_dataset.py -> split_dataset.py -> train_net.py (cross_validate.py for
INbreast) with the data set's own config -> predict.py on the raw DICOMs -> report.py.

Each test works in a fresh folder that stands for the user's checkout: the release under data/, and the
commands write datasets/ and output/ there, so the configs' own relative paths (datasets/vindr/split/...,
output/vindr/...) resolve exactly as for a user. Only the scripts and configs are addressed in the
repository (by absolute path). This tests that the documented paths chain together, which overriding
DATASETS.REGISTER_JSON would hide.

What the tests add to the documented commands, and why (all on the command line, in TRAIN_OPTS):
* 2 iterations, no evaluation during training, no pretrained weights (nothing is downloaded here);
* the tests' tiny CPU network (tests/common.py TINY_OPTS: ResNet-18 with GroupNorm, 128 x 128, few
  proposals) in place of the paper's ResNet-101 at 512 x 512. From random weights the paper's network,
  whose frozen BatchNorm cannot train from scratch, gives no box at all (AP50 NaN, nothing to check), and on
  2 shared CPU cores costs about 30 s per iteration and 8 s per test image: 4 tests would take 20 minutes;
* every box kept (score threshold 0, predict.py --min-score 0): a model trained for 2 iterations scores
  everything low, and AP50 and the box checks need boxes;
* 100 bootstrap resamples instead of 1000 (TEST.PATIENT.BOOTSTRAP when training, report.py --bootstrap).
Split quotas are the split command's own options (paper-ddsm --train/--test, kfold --folds).

Every command runs as a subprocess, as typed, in the CBIS-DDSM test. The VinDr-Mammo, INbreast and own-CSV tests
run the training (train_net.py, cross_validate.py) as a subprocess and prepare_dataset.py, split_dataset.py,
predict.py and report.py in the test's process (tests/common.py run_in_process: runpy with the same arguments and
working folder, the exit status checked the same way), which saves a Python start-up with torch and detectron2
(3.4 s of CPU) each.
"""
import csv
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pydicom
import pytest

from tests.common import REPO, TINY_OPTS, run_in_process
from tests.realistic_fixtures import (make_cbis_release, make_hospital_release, make_inbreast_release,
                                      make_vindr_release)

TRAIN_OPTS = TINY_OPTS + ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
                          "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.PATIENT.BOOTSTRAP", "100"]
# options and config keys the tests add to the documented commands (see above)
TEST_ONLY = {"--train", "--test", "--min-score", "--bootstrap", *TRAIN_OPTS[::2]}
REPORT_OPTS = ["--bootstrap", "100"]


class Session:
    """A user's shell in ``cwd``: runs repository scripts by absolute path, times every command."""

    def __init__(self, cwd):
        self.cwd = str(cwd)
        self.times = {}
        self.commands = []

    def __call__(self, script, *args, in_process=False):
        """Runs the script with ``args`` in ``cwd``, as a subprocess or (``in_process``) with runpy in this
        process; fails unless it exits with 0. Returns its standard output."""
        self.commands.append([script, *map(str, args)])
        cmd = [sys.executable, os.path.join(REPO, script), *map(str, args)]
        start = time.perf_counter()
        p = run_in_process(cmd[1:], self.cwd) if in_process else subprocess.run(
            cmd, cwd=self.cwd, capture_output=True, text=True, timeout=600)
        self.times[f"{os.path.basename(script)} {args[0]}"] = round(time.perf_counter() - start, 1)
        assert p.returncode == 0, (f"{' '.join(cmd)}\nexited with {p.returncode}\n--- stdout\n{p.stdout[-3000:]}"
                                   f"\n--- stderr\n{p.stderr[-6000:]}")
        return p.stdout

    def path(self, *parts):
        return os.path.join(self.cwd, *parts)

    def json(self, *parts):
        with open(self.path(*parts)) as f:
            return json.load(f)


def config(rel):
    return os.path.join(REPO, "configs", rel)


def check_reports(sh, out, listed, kept, skip_reasons, prepare_skipped):
    """Every input counted: ``listed`` images in the release's tables = kept + skipped (with the reasons,
    by count), and every kept image prepared or skipped when preparing."""
    conv = sh.json(out, "conversion_report.json")
    assert conv["kept"] == kept and conv["skipped"] == listed - kept
    assert conv["skipped_by_reason"] == skip_reasons
    prep = sh.json(out, "prepared", "report.json")
    assert prep["inputs"] == kept
    assert (prep["used"], prep["skipped"]) == (kept - prepare_skipped, prepare_skipped)
    assert len(sh.json(out, "prepared", "records.json")) == kept - prepare_skipped


def check_evaluation(sh, run_dir, dataset, patients, positive_patients):
    """AP50 defined and within [0, 100]; the patient counts of eval_results.json and patient_metrics.json
    are the test set's."""
    res = sh.json(run_dir, "inference", "eval_results.json")
    res = res.get(dataset, res)
    assert 0.0 <= res["bbox"]["AP50"] <= 100.0
    pm = sh.json(run_dir, "inference", dataset, "patient_metrics.json")["results"]["patient"]
    for p in (res["patient"], pm):
        assert p["num_patients"] == patients
        assert p["tp"] + p["fn"] == positive_patients
        assert p["tn"] + p["fp"] == patients - positive_patients
    with open(sh.path(run_dir, "inference", dataset, "patients.csv")) as f:
        labels = [int(r["label"]) for r in csv.DictReader(f)]
    assert (len(labels), sum(labels)) == (patients, positive_patients)
    return res


def check_predictions(sh, pred_dir, dicoms, unreadable=()):
    """One prediction per readable input DICOM, each box inside the original DICOM grid; the unreadable
    ones listed in skipped.json."""
    preds = sh.json(pred_dir, "predictions.json")
    by_file = {os.path.realpath(sh.path(p["file_name"])): p for p in preds}
    readable = [d for d in dicoms if d not in unreadable]
    assert sorted(by_file) == sorted(os.path.realpath(sh.path(d)) for d in readable)
    n_boxes = 0
    for d in readable:
        ds = pydicom.dcmread(sh.path(d), stop_before_pixels=True)
        p = by_file[os.path.realpath(sh.path(d))]
        assert len(p["boxes"]) == len(p["scores"])
        for x1, y1, x2, y2 in p["boxes"]:
            assert 0 <= x1 <= x2 <= ds.Columns and 0 <= y1 <= y2 <= ds.Rows, (d, (x1, y1, x2, y2))
        n_boxes += len(p["boxes"])
    assert n_boxes > 0, "no box predicted at all: the box checks above checked nothing"
    if unreadable:
        skipped = sh.json(pred_dir, "skipped.json")
        assert sorted(os.path.realpath(sh.path(s["file_name"])) for s in skipped) == \
            sorted(os.path.realpath(sh.path(d)) for d in unreadable)


def check_report(sh, run_dir, name, patients, in_process=False):
    out = sh("tools/report.py", "--run", f"{name}={run_dir}", "--output", f"{run_dir}/report", *REPORT_OPTS,
             in_process=in_process)
    assert f"{patients} patients" in out and f"| {name} |" in out
    assert os.path.exists(sh.path(run_dir, "report", "report.html"))


def _shape(cmd):
    """What must agree between a test's command and the README's: script, subcommand, option names and
    config keys (values and paths may differ)."""
    script, args = cmd[0], [a for a in cmd[1:] if a not in TEST_ONLY]
    sub = args[0] if args and not args[0].startswith("-") else None
    flags = sorted(a for a in args if a.startswith("--"))
    keys = sorted(a for a in args if re.fullmatch(r"[A-Z_]+(\.[A-Z0-9_]+)+", a))
    return script, sub, flags, keys


def check_documented(sh):
    """Each command the test ran is one of datasets/README.md's, apart from paths and TEST_ONLY."""
    with open(os.path.join(REPO, "datasets", "README.md")) as f:
        text = f.read().replace("\\\n", " ")
    documented = [_shape(shlex.split(line.split(".venv/bin/python", 1)[1])) for line in text.splitlines()
                  if ".venv/bin/python tools/" in line]
    for cmd in sh.commands:
        assert _shape(cmd) in documented, f"not in datasets/README.md: {' '.join(cmd)}"


def dicoms_under(sh, *folders):
    return sorted(os.path.relpath(p, sh.cwd) for f in folders for p in glob.glob(sh.path(f, "**", "*"), recursive=True)
                  if p.endswith((".dcm", ".dicom")))


@pytest.mark.e2e
def test_cbis_ddsm_paper_protocol(tmp_path):
    sh = Session(tmp_path)
    release = make_cbis_release(sh.path("data"))
    sh("tools/prepare_dataset.py", "cbis-ddsm", "--root", "data/CBIS-DDSM",
       "--csv", "data/mass_case_description_train_set.csv", "data/mass_case_description_test_set.csv",
       "--output", "datasets/cbis_ddsm", "--size", "512", "512")
    # 15 full mammograms listed; P_00005 R CC (all-zero mask) and P_00006 L MLO (not downloaded) skipped;
    # P_00009 L CC's pixel data is cut: skipped when preparing
    check_reports(sh, "datasets/cbis_ddsm", listed=15, kept=13, prepare_skipped=1,
                  skip_reasons={"malignant abnormality 1": 1, "full mammogram not found under data/CBIS-DDSM": 1})
    out = sh("tools/split_dataset.py", "paper-ddsm", "--records", "datasets/cbis_ddsm/prepared/records.json",
             "--output", "datasets/cbis_ddsm/paper_split", "--seed", "0", "--train", "4", "4", "--test", "2", "2")
    # every patient has 2 images of one kind: the test side takes 1 malignant and 1 benign patient, whatever
    # the seed; training gets the other 2 + 2
    assert "test: 4 images (2 positive, 2 negative), 2 patients (1 positive, 1 negative)" in out
    assert "train: 8 images (4 positive, 4 negative), 4 patients (2 positive, 2 negative)" in out

    run = "output/paper/d_tl_similarity"
    sh("tools/train_net.py", "--config-file", config("paper/d_tl_similarity.yaml"), *TRAIN_OPTS)
    check_evaluation(sh, run, "cbis_ddsm_paper_test", patients=2, positive_patients=1)

    inputs = [os.path.relpath(s, sh.cwd) for s in release["test_subjects"]]  # the Mass-Test full mammograms
    sh("tools/predict.py", "--config-file", f"{run}/config.yaml", "--input", *inputs, "--output", f"{run}/predict",
       "--min-score", "0", "MODEL.WEIGHTS", f"{run}/model_final.pth")
    dicoms = dicoms_under(sh, *inputs)
    assert len(dicoms) == 5
    check_predictions(sh, f"{run}/predict", dicoms, unreadable=[d for d in dicoms if "P_00009" in d])
    check_report(sh, run, "tl+sim", patients=2)
    check_documented(sh)
    print(sh.times)


@pytest.mark.e2e
def test_vindr_mammo_official_split(tmp_path):
    sh = Session(tmp_path)
    release = make_vindr_release(sh.path("data", "vindr-mammo"))
    sh("tools/prepare_dataset.py", "vindr", "--root", "data/vindr-mammo", "--output", "datasets/vindr",
       "--size", "512", "512", in_process=True)
    # 24 images listed; c3 L MLO (a BI-RADS 4 calcification only) and f6 L MLO (not downloaded) skipped
    check_reports(sh, "datasets/vindr", listed=24, kept=22, prepare_skipped=0,
                  skip_reasons={"suspicious finding that is not a target (neither positive nor negative)": 1,
                                "DICOM file not found": 1})
    out = sh("tools/split_dataset.py", "official", "--records", "datasets/vindr/prepared/records.json",
             "--output", "datasets/vindr/split", in_process=True)
    assert "train: 15 images (3 positive, 12 negative), 4 patients (2 positive, 2 negative)" in out
    assert "test: 7 images (1 positive, 6 negative), 2 patients (1 positive, 1 negative)" in out

    run = "output/vindr/d_tl_similarity"
    sh("tools/train_net.py", "--config-file", config("vindr/d_tl_similarity.yaml"), *TRAIN_OPTS)
    check_evaluation(sh, run, "vindr_test", patients=2, positive_patients=1)

    inputs = [os.path.relpath(s, sh.cwd) for s in release["test_studies"]]
    sh("tools/predict.py", "--config-file", f"{run}/config.yaml", "--input", *inputs, "--output", f"{run}/predict",
       "--min-score", "0", "MODEL.WEIGHTS", f"{run}/model_final.pth", in_process=True)
    dicoms = dicoms_under(sh, *inputs)
    assert len(dicoms) == 7 and all(d.endswith(".dicom") for d in dicoms)
    check_predictions(sh, f"{run}/predict", dicoms)
    check_report(sh, run, "tl+sim", patients=2, in_process=True)
    check_documented(sh)
    print(sh.times)


@pytest.mark.e2e
def test_inbreast_cross_validation(tmp_path, monkeypatch):
    sh = Session(tmp_path)
    make_inbreast_release(sh.path("data", "INbreast"))
    sh("tools/prepare_dataset.py", "inbreast", "--root", "data/INbreast", "--output", "datasets/inbreast",
       "--size", "512", "512", in_process=True)
    # 10 rows; 22614379 (BI-RADS 5 without XML) and 50994300 (view FB) skipped
    check_reports(sh, "datasets/inbreast", listed=10, kept=8, prepare_skipped=0,
                  skip_reasons={"BI-RADS 5 without a Mass outline": 1, "view 'FB' is not CC or MLO": 1})
    out = sh("tools/split_dataset.py", "kfold", "--records", "datasets/inbreast/prepared/records.json",
             "--output", "datasets/inbreast/folds", "--folds", "2", "--seed", "0", in_process=True)
    # 2 positive and 2 negative patients, 2 images each: each fold tests one of each
    for k in (0, 1):
        assert f"fold{k}/test: 4 images (2 positive, 2 negative), 2 patients (1 positive, 1 negative)" in out

    run = "output/inbreast/d_tl_similarity"
    sh("tools/cross_validate.py", "--config-file", config("inbreast/d_tl_similarity.yaml"),
       "--folds-dir", "datasets/inbreast/folds", "--output", run, *TRAIN_OPTS)
    res = check_evaluation(sh, run, "inbreast_test_all_folds", patients=4, positive_patients=2)
    folds = [res["bbox_folds"][f"fold{k}"]["AP50"] for k in (0, 1)]
    assert res["bbox"]["AP50"] == pytest.approx(sum(folds) / 2)
    for k in (0, 1):
        check_evaluation(sh, f"{run}/fold{k}", f"inbreast_test_fold{k}", patients=2, positive_patients=1)
    # the same command again reuses both folds: a training command that would fail is never run
    from mammo_tl.experiments.cross_validation import run_folds

    monkeypatch.chdir(tmp_path)
    run_folds(config("inbreast/d_tl_similarity.yaml"), "datasets/inbreast/folds", run, TRAIN_OPTS,
              train_command=[sys.executable, "-c", "raise SystemExit(3)"])

    sh("tools/predict.py", "--config-file", f"{run}/fold0/config.yaml", "--input", "data/INbreast/AllDICOMs",
       "--output", f"{run}/predict", "--min-score", "0", "MODEL.WEIGHTS", f"{run}/fold0/model_final.pth",
       in_process=True)
    dicoms = dicoms_under(sh, "data/INbreast/AllDICOMs")
    assert len(dicoms) == 10
    check_predictions(sh, f"{run}/predict", dicoms)
    check_report(sh, run, "tl+sim", patients=4, in_process=True)
    check_documented(sh)
    print(sh.times)


@pytest.mark.e2e
def test_own_csv(tmp_path):
    sh = Session(tmp_path)
    make_hospital_release(sh.path("data", "hospital"))
    sh("tools/prepare_dataset.py", "csv", "--csv", "data/hospital/mammograms.csv", "--output", "datasets/own_csv",
       "--size", "512", "512", in_process=True)
    # 13 rows; H003 L MLO (label 1 without boxes) and H005 L MLO (file not delivered) skipped
    check_reports(sh, "datasets/own_csv", listed=13, kept=11, prepare_skipped=0,
                  skip_reasons={"label 1 without boxes": 1, "file not found": 1})
    out = sh("tools/split_dataset.py", "random", "--records", "datasets/own_csv/prepared/records.json",
             "--output", "datasets/own_csv/split", "--test-fraction", "0.2", "--seed", "0", in_process=True)
    # 3 positive and 3 negative patients: round(0.6) = 1 of each for testing
    assert ("datasets/own_csv/prepared/records.json: 11 images (4 positive, 7 negative), 6 patients "
            "(3 positive, 3 negative)") in out
    assert "2 patients (1 positive, 1 negative) -> datasets/own_csv/split/test.json" in out

    run = "output/own_csv/d_tl_similarity"
    sh("tools/train_net.py", "--config-file", config("own_csv/d_tl_similarity.yaml"), *TRAIN_OPTS)
    check_evaluation(sh, run, "own_csv_test", patients=2, positive_patients=1)

    test_patients = sorted({r["patient_id"] for r in sh.json("datasets", "own_csv", "split", "test.json")})
    inputs = [f"data/hospital/scans/{p}" for p in test_patients]
    sh("tools/predict.py", "--config-file", f"{run}/config.yaml", "--input", *inputs, "--output", f"{run}/predict",
       "--min-score", "0", "MODEL.WEIGHTS", f"{run}/model_final.pth", in_process=True)
    check_predictions(sh, f"{run}/predict", dicoms_under(sh, *inputs))
    check_report(sh, run, "tl+sim", patients=2, in_process=True)
    check_documented(sh)
    print(sh.times)


def _config_chain_text(path):
    """The text of a config file and of its _BASE_ files."""
    with open(path) as f:
        text = f.read()
    base = re.search(r'^_BASE_:\s*"?([^"\n]+)"?', text, re.M)
    return text + (_config_chain_text(os.path.join(os.path.dirname(path), base.group(1))) if base else "")


@pytest.mark.parametrize("folder", ["paper", "vindr", "inbreast", "own_csv"])
def test_row_configs_read_what_the_documented_commands_write(folder):
    """Rows (a)-(c) train and test on the records of row (d), which the end-to-end tests run; each names the
    commands that write them, and those write where datasets/README.md says."""
    from mammo_tl.config import get_mammo_tl_cfg

    with open(os.path.join(REPO, "datasets", "README.md")) as f:
        readme = f.read()
    datasets = {}
    for row in ("a_positives_only", "b_with_negatives", "c_top_likelihood", "d_tl_similarity"):
        path = config(f"{folder}/{row}.yaml")
        cfg = get_mammo_tl_cfg()
        cfg.merge_from_file(path)
        datasets[row] = (tuple(cfg.DATASETS.REGISTER_JSON), cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
        text = _config_chain_text(path)
        assert "tools/prepare_dataset.py" in text and "tools/split_dataset.py" in text, path
        assert f"output/{folder}/{row}" == cfg.OUTPUT_DIR
    assert len(set(datasets.values())) == 1
    entries, train, test = datasets["d_tl_similarity"]
    assert {e.split("=")[0] for e in entries} == {*train, *test}
    for entry in entries:
        written_to = os.path.dirname(entry.split("=", 1)[1]).split("/fold")[0]
        assert f"--output {written_to}" in readme
