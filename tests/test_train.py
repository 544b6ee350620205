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
def test_models_chosen_on_validation_and_the_test_set_read_once_at_the_end(tiny_datasets, tmp_path, monkeypatch):
    """DATASETS.VALIDATION evaluated every TEST.EVAL_PERIOD iterations into metrics.json and validation_curve.json;
    model_best.pth by the highest validation AUC; the test set read only after the last iteration, once on that
    checkpoint (inference/) and once on the final one (inference_final/); the best survives --resume."""
    from mammo_tl.engine import Trainer
    from mammo_tl.engine.hooks import BestCheckpointHook
    from mammo_tl.engine.launcher import setup
    from mammo_tl.evaluation.runs import load_selection, load_validation_curve, selected_weights

    out = tmp_path / "run"
    opts = ["SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "2", "TEST.PATIENT.BOOTSTRAP", "20",
            "DATASETS.VALIDATION", "('mammo_synth_tiny_val',)", "SOLVER.CHECKPOINT_PERIOD", "2"]
    cfg = setup(_args("synthetic/d_tl_similarity.yaml", out, opts=opts))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    read = []  # (data set, training iteration, steps still to do) of every evaluation loader built
    build = Trainer.build_test_loader.__func__
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(
        lambda cls, c, name: read.append((name, trainer.iter, trainer.max_iter - trainer.iter)) or build(cls, c, name)))
    trainer.train()
    # the validation set at iteration index 1 (after 2 steps) and after the last step; the test set twice, both
    # after the last step (trainer.iter is max_iter once training is over)
    assert [(n, i) for n, i, _ in read if n == "mammo_synth_tiny_val"] == [("mammo_synth_tiny_val", 1),
                                                                          ("mammo_synth_tiny_val", 4)]
    tests = [(n, i) for n, i, _ in read if n != "mammo_synth_tiny_val"]
    assert tests == [("mammo_synth_tiny_test", 4)] * 2, read
    assert all(left <= 0 for n, _, left in read if n == "mammo_synth_tiny_test")
    hook = next(h for h in trainer._hooks if isinstance(h, BestCheckpointHook))
    assert hook.metric == "validation/patient/auc"
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    evals = [(r["iteration"], r["validation/patient/auc"]) for r in rows if "validation/patient/auc" in r]
    assert [i for i, _ in evals] == [1, 4]  # detectron2 records the end of training at max_iter
    assert not any(k.startswith(("patient/", "bbox/")) for r in rows for k in r), "a test metric during training"
    curve = load_validation_curve(str(out))
    assert [(p["iteration"], p["iterations_trained"]) for p in curve] == [(1, 2), (4, 4)]
    assert [p["validation/patient/auc"] for p in curve] == pytest.approx([v for _, v in evals], nan_ok=True)
    assert {"validation/patient/specificity@sensitivity_0.9", "validation/bbox/AP50", "validation/froc/cpm"} <= set(
        curve[0])
    finite = [(i, v) for i, v in evals if np.isfinite(v)]
    assert finite, "the tiny validation set has both classes, so AUC is defined"
    best_iter, best = max(finite, key=lambda t: t[1])  # max() keeps the first of equal values, as the rule does
    assert hook.best_value == pytest.approx(best) and hook.best_iter == best_iter
    selection = load_selection(str(out))
    assert selection["selected"] == {"weights": "model_best.pth", "iteration": best_iter,
                                     "iterations_trained": {1: 2, 4: 4}[best_iter], "value": pytest.approx(best)}
    assert selection["final"]["iterations_trained"] == 4 and selected_weights(str(out)) == str(out / "model_best.pth")
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    chosen = json.load(open(out / "inference" / "eval_results.json"))
    final = json.load(open(out / "inference_final" / "eval_results.json"))
    for name in ("patients.csv", "roc.png", "froc.png", "patient_metrics.json"):
        assert (out / "inference" / "mammo_synth_tiny_test" / name).exists(), name
        assert (out / "inference_final" / "mammo_synth_tiny_test" / name).exists(), name
    # each result is that of its weights: --eval-only on model_best.pth reproduces inference/, on model_final.pth
    # inference_final/
    from mammo_tl.engine.launcher import main

    for weights, expected in (("model_best.pth", chosen), ("model_final.pth", final)):
        res = main(_args("synthetic/d_tl_similarity.yaml", tmp_path / weights, "--eval-only",
                         opts=["MODEL.WEIGHTS", str(out / weights), "TEST.PATIENT.BOOTSTRAP", "20"]))
        assert res["patient"]["auc"] == pytest.approx(expected["patient"]["auc"], nan_ok=True), weights

    # a resumed trainer starts from the recorded best, not from scratch
    cfg2 = setup(_args("synthetic/d_tl_similarity.yaml", out, opts=opts))
    resumed = Trainer(cfg2)
    resumed.resume_or_load(resume=True)
    hook2 = next(h for h in resumed._hooks if isinstance(h, BestCheckpointHook))
    assert hook2.best_value == pytest.approx(best) and hook2.best_iter == best_iter


def test_periodic_evaluation_needs_a_validation_set(tiny_datasets, tmp_path):
    """TEST.EVAL_PERIOD > 0 without DATASETS.VALIDATION is refused before training (it would choose models on the
    test set), and so is a validation set that is a test set."""
    from mammo_tl.engine.launcher import setup
    from mammo_tl.engine.preflight import ConfigError, preflight

    cfg = setup(_args("synthetic/a_positives_only.yaml", tmp_path / "a", opts=["TEST.EVAL_PERIOD", "2"]))
    with pytest.raises(ConfigError, match="DATASETS.VALIDATION.*empty"):
        preflight(cfg)
    cfg = setup(_args("synthetic/a_positives_only.yaml", tmp_path / "b",
                      opts=["TEST.EVAL_PERIOD", "2", "DATASETS.VALIDATION", "('mammo_synth_tiny_test',)"]))
    with pytest.raises(ConfigError, match="also in DATASETS.TEST"):
        preflight(cfg)


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
