"""End to end through tools/train_net.py's code: train, evaluate (COCO AP50), resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.structures import Boxes, Instances

from tests.common import REPO, TINY_DATASETS, TINY_OPTS, config_path

TRAIN_OPTS = [*TINY_OPTS, *TINY_DATASETS, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SOLVER.WARMUP_ITERS", "0"]


def _args(config, out, *extra, opts=()):
    return default_argument_parser().parse_args(
        ["--config-file", config_path(config), *extra, "OUTPUT_DIR", str(out), *TRAIN_OPTS, *opts])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["synthetic/a_positives_only.yaml", "synthetic/b_with_negatives.yaml",
                                    "synthetic/c_top_likelihood.yaml", "synthetic/d_tl_similarity.yaml"])
def test_few_iterations_give_finite_losses(tiny_datasets, tmp_path, config):
    from mammo_tl.engine.launcher import main

    main(_args(config, tmp_path, opts=["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()"]))
    # detectron2 may append a late row for an earlier iteration (scalars logged only on some batches)
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.json")) if "total_loss" in r]
    losses = {k: v for k, v in max(rows, key=lambda r: r["iteration"]).items() if k.startswith("loss_")}
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    if config.startswith(("synthetic/c", "synthetic/d")):
        assert "loss_rpn_tl" in losses
    if config.startswith("synthetic/d"):
        assert "loss_sim" in losses
    assert all(np.isfinite(v) for v in losses.values())
    assert os.path.exists(tmp_path / "model_final.pth")


@pytest.mark.slow
def test_eval_only_reports_ap50(tiny_datasets, tmp_path):
    from mammo_tl.engine.launcher import main

    # no bootstrap: its intervals are not compared here (test_metrics.py checks them), and 1000 resamples per
    # level cost more than the training
    boot = ["TEST.PATIENT.BOOTSTRAP", "0"]
    main(_args("synthetic/a_positives_only.yaml", tmp_path / "train", opts=["SOLVER.MAX_ITER", "2", *boot]))
    res = main(_args("synthetic/a_positives_only.yaml", tmp_path / "eval", "--eval-only",
                     opts=["MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth"), *boot]))
    # the same weights evaluated at the end of training: --eval-only must reproduce every figure
    at_end = json.load(open(tmp_path / "train" / "inference" / "eval_results.json"))
    assert res["bbox"]["AP50"] == pytest.approx(at_end["bbox"]["AP50"], nan_ok=True)
    for level in ("patient", "breast"):
        for k in ("auc", "sensitivity", "specificity", "tp", "fp", "tn", "fn", "num_patients"):
            assert res[level][k] == pytest.approx(at_end[level][k], nan_ok=True), (level, k)
    assert res["patient"]["num_patients"] == 6 and res["patient"]["tp"] + res["patient"]["fn"] == 3


def test_coco_ap50_of_ground_truth_boxes_is_100(tiny_datasets, tmp_path):
    """The evaluator path (dataset registration -> COCO conversion -> pycocotools) on known predictions."""
    from mammo_tl.engine import Trainer
    from tests.common import tiny_cfg

    cfg = tiny_cfg(opts=["TEST.PATIENT.BOOTSTRAP", "0"])  # AP50 only: no patient-level intervals
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = Trainer.build_evaluator(cfg, "mammo_synth_tiny_test")
    evaluator.reset()
    for r in DatasetCatalog.get("mammo_synth_tiny_test"):
        boxes = [a["bbox"] for a in r["annotations"]]
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long)
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    res = evaluator.evaluate()
    assert res["bbox"]["AP50"] == pytest.approx(100.0)


_TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from tests.common import ensure_tiny_datasets
ensure_tiny_datasets({root!r})
from detectron2.engine import default_argument_parser
from mammo_tl.engine.launcher import main
main(default_argument_parser().parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_resume_after_sigkill(tiny_datasets, tmp_path):
    out = tmp_path / "run"

    def argv(max_iter, *extra):
        return [sys.executable, "-c", _TRAIN_SCRIPT.format(repo=REPO, root=tiny_datasets), *extra,
                "--config-file", config_path("synthetic/d_tl_similarity.yaml"), "OUTPUT_DIR", str(out),
                *TRAIN_OPTS, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "5",
                "DATASETS.TEST", "()"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv(200), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "model_0000009.pth"
    deadline = time.time() + 240
    while not (ckpt.exists() and (out / "last_checkpoint").exists()
               and (out / "last_checkpoint").read_text().strip() == ckpt.name):
        assert proc.poll() is None, "training exited before its second checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = (out / "last_checkpoint").read_text().strip()
    done = int(last.split("_")[1].split(".")[0]) + 1  # model_000000N.pth is written after iteration N
    assert done >= 10
    resumed = subprocess.run(argv(done + 3, "--resume"), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Starting training from iteration {done}" in resumed.stderr + resumed.stdout
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    iters = [r["iteration"] for r in rows if "total_loss" in r]
    assert iters[-1] == done + 2


@pytest.mark.slow
def test_patient_eval_during_training_and_best_checkpoint_survives_resume(tiny_datasets, tmp_path):
    from mammo_tl.engine import Trainer
    from mammo_tl.engine.hooks import BestCheckpointHook
    from mammo_tl.engine.launcher import setup

    out = tmp_path / "run"
    opts = ["SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", "TEST.PATIENT.BOOTSTRAP", "20",
            "SOLVER.CHECKPOINT_PERIOD", "2"]
    cfg = setup(_args("synthetic/d_tl_similarity.yaml", out, opts=opts))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    hook = next(h for h in trainer._hooks if isinstance(h, BestCheckpointHook))
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    evals = [(r["iteration"], r["patient/auc"]) for r in rows if "patient/auc" in r]
    assert len(evals) == 2 and evals[0][0] == 1  # after iteration 2, and at the end
    finite = [(i, v) for i, v in evals if np.isfinite(v)]
    assert finite, "the tiny test set has both classes, so AUC is defined"
    best_iter, best = max(finite, key=lambda t: t[1])
    assert hook.best_value == pytest.approx(best) and hook.best_iter == best_iter
    assert (out / "model_best.pth").exists()
    assert json.load(open(out / "model_best.json"))["value"] == pytest.approx(best)
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    for name in ("patients.csv", "roc.png", "froc.png", "patient_metrics.json"):
        assert (out / "inference" / "mammo_synth_tiny_test" / name).exists(), name

    # a resumed trainer starts from the recorded best, not from scratch
    cfg2 = setup(_args("synthetic/d_tl_similarity.yaml", out, opts=opts[:-4] + ["TEST.EVAL_PERIOD", "2"]))
    resumed = Trainer(cfg2)
    resumed.resume_or_load(resume=True)
    hook2 = next(h for h in resumed._hooks if isinstance(h, BestCheckpointHook))
    assert hook2.best_value == pytest.approx(best) and hook2.best_iter == best_iter


def test_best_checkpoint_hook_keeps_the_best(tmp_path):
    """The hook's rule on a scripted sequence of evaluation results."""
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from mammo_tl.engine.hooks import BestCheckpointHook

    saved = []

    class FakeCheckpointer:
        save_dir = str(tmp_path)

        def has_checkpoint(self):
            return False

        def save(self, name, iteration):
            saved.append((name, iteration))

    hook = BestCheckpointHook(10, FakeCheckpointer(), metric="patient/auc")
    with EventStorage() as storage:
        hook.trainer = SimpleNamespace(storage=storage, iter=0, max_iter=100)
        for it, auc in ((9, 0.6), (19, 0.8), (29, 0.7), (39, float("nan")), (49, 0.81)):
            storage.iter = it
            storage.put_scalar("patient/auc", auc, smoothing_hint=False)
            hook.trainer.iter = it
            hook.after_step()
    assert saved == [("model_best", 9), ("model_best", 19), ("model_best", 49)]
    assert hook.state_dict()["best_value"] == pytest.approx(0.81)
    fresh = BestCheckpointHook(10, FakeCheckpointer(), metric="patient/auc")
    fresh.load_state_dict({"best_value": 0.5, "best_iter": 3, "metric": "patient/auc"})
    assert fresh.best_value == pytest.approx(0.81)  # model_best.json on disk is newer than the state
