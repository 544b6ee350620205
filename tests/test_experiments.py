"""tools/run_ablation.py as a user types it: rows trained in sequence, compared, reused and refused."""
import copy
import json
import re
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog

from mammo_tl.data.datasets.common import save_records
from mammo_tl.experiments.rows import config_differences, expected_config
from tests.common import REPO, config_path, run_in_process
from tests.test_records import TRAIN_OPTS


def test_config_differences_name_the_keys(tmp_path):
    cfg = expected_config(config_path("synthetic/d_tl_similarity.yaml"), ["SOLVER.MAX_ITER", "7"])
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    assert config_differences(str(saved), cfg) == []
    other = expected_config(config_path("synthetic/d_tl_similarity.yaml"),
                            ["SOLVER.MAX_ITER", "8", "MODEL.ROI_HEADS.SIMILARITY.LOSS_WEIGHT", "0.2"])
    assert config_differences(str(saved), other) == ["MODEL.ROI_HEADS.SIMILARITY.LOSS_WEIGHT", "SOLVER.MAX_ITER"]


@pytest.mark.slow
def test_run_ablation_trains_compares_reuses_and_refuses(tiny_datasets, tmp_path):
    paths = {}
    for split in ("train", "test"):
        paths[split] = str(tmp_path / f"{split}.json")
        save_records(copy.deepcopy(DatasetCatalog.get(f"mammo_synth_tiny_{split}")), paths[split])
    opts = [*TRAIN_OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.REGISTER_JSON",
            f"['abl_train={paths['train']}', 'abl_test={paths['test']}']",
            "DATASETS.TRAIN", "('abl_train',)", "DATASETS.TEST", "('abl_test',)"]
    configs = [config_path("synthetic/a_positives_only.yaml"), config_path("synthetic/c_top_likelihood.yaml")]
    out = tmp_path / "ablation"
    cmd = [sys.executable, "tools/run_ablation.py", "--output", str(out), "--bootstrap", "20", "--configs",
           *configs, "--opts", *opts]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    assert list(results["runs"]) == ["a_positives_only", "c_top_likelihood"]
    assert list(results["differences"]) == ["c_top_likelihood - a_positives_only"]
    for name in results["runs"]:
        assert results["runs"][name]["num_patients"] == 6  # the tiny test set: 3 + 3 patients
        assert (out / name / "model_final.pth").exists()
    md = (out / "report.md").read_text()
    assert md.count("\n| c_top_likelihood |") == 1  # one row of the results table
    # without --seeds the layout is one folder per config, and the report has its gallery (images.json from
    # PatientEvaluator, boxes from COCOEvaluator's results), every panel it references written beside it
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a_positives_only", "c_top_likelihood", "gallery"]
    assert (out / "a_positives_only" / "inference" / "abl_test" / "images.json").exists()
    panels = re.findall(r"\]\((gallery/[^)]+\.png)\)", md)
    assert "## Gallery" in md and len(panels) == 2 * 6  # 3 healthy + 3 cancer patients, under both runs
    assert all((out / p).is_file() for p in panels)

    # the same command again, and changed: in this process (the first run above was the command as a process)
    again = run_in_process(cmd[1:])
    assert again.returncode == 0 and again.stdout.count("reusing it") == 2, again.stderr[-2000:]

    changed = run_in_process(cmd[1:] + ["MODEL.RPN.TOP_LIKELIHOOD.NUM_ANCHORS", "64"])
    assert changed.returncode != 0
    assert "holds a run of another config" in changed.stderr
    assert "MODEL.RPN.TOP_LIKELIHOOD.NUM_ANCHORS" in changed.stderr

    # the same config on other test records (one image fewer): refused, never reused
    records = json.load(open(paths["test"]))
    json.dump(records[1:], open(paths["test"], "w"))
    other_data = run_in_process(cmd[1:])
    assert other_data.returncode != 0 and "on other records" in other_data.stderr, other_data.stderr[-2000:]


def test_training_seconds_per_iter_is_the_median_of_logged_times(tmp_path):
    from mammo_tl.evaluation.report import training_seconds_per_iter

    rows = [{"iteration": 19, "total_loss": 1.0, "time": 0.30}, {"iteration": 19, "patient/auc": 0.5},
            {"iteration": 39, "total_loss": 0.9, "time": 0.26}, {"iteration": 59, "total_loss": 0.8, "time": 0.28}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n{truncated")
    assert training_seconds_per_iter(str(tmp_path)) == pytest.approx(0.28)
    assert training_seconds_per_iter(str(tmp_path / "none")) != training_seconds_per_iter(str(tmp_path / "none"))
