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

from tests.common import REPO, config_path

TINY_OPTS = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.FIXED_SIZE", "(128, 128)", "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", "('mammo_synth_tiny_train',)", "DATASETS.TEST", "('mammo_synth_tiny_test',)",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SOLVER.WARMUP_ITERS", "0",
]


def _args(config, out, *extra, opts=()):
    return default_argument_parser().parse_args(
        ["--config-file", config_path(config), *extra, "OUTPUT_DIR", str(out), *TINY_OPTS, *opts])


@pytest.mark.parametrize("config", ["synthetic/a_positives_only.yaml", "synthetic/b_with_negatives.yaml",
                                    "synthetic/c_top_likelihood.yaml", "synthetic/d_tl_similarity.yaml"])
def test_few_iterations_give_finite_losses(tiny_datasets, tmp_path, config):
    from mammo_tl.engine.launcher import main

    main(_args(config, tmp_path, opts=["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()"]))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    losses = {k: v for k, v in rows[-1].items() if k.startswith("loss_")}
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    if config.startswith("synthetic/c") or config.startswith("synthetic/d"):
        assert "loss_rpn_tl" in losses
    if config.startswith("synthetic/d"):
        assert "loss_sim" in losses
    assert all(np.isfinite(v) for v in losses.values())
    assert os.path.exists(tmp_path / "model_final.pth")


def test_eval_only_reports_ap50(tiny_datasets, tmp_path):
    from mammo_tl.engine.launcher import main

    main(_args("synthetic/a_positives_only.yaml", tmp_path / "train", opts=["SOLVER.MAX_ITER", "2"]))
    res = main(_args("synthetic/a_positives_only.yaml", tmp_path / "eval", "--eval-only",
                     opts=["MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth")]))
    ap50 = res["mammo_synth_tiny_test"]["bbox"]["AP50"] if "mammo_synth_tiny_test" in res else res["bbox"]["AP50"]
    assert 0.0 <= ap50 <= 100.0


def test_coco_ap50_of_ground_truth_boxes_is_100(tiny_datasets, tmp_path):
    """The evaluator path (dataset registration -> COCO conversion -> pycocotools) on known predictions."""
    from mammo_tl.engine import Trainer
    from tests.common import tiny_cfg

    cfg = tiny_cfg()
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


def test_resume_after_sigkill(tiny_datasets, tmp_path):
    out = tmp_path / "run"

    def argv(max_iter, *extra):
        return [sys.executable, "-c", _TRAIN_SCRIPT.format(repo=REPO, root=tiny_datasets), *extra,
                "--config-file", config_path("synthetic/d_tl_similarity.yaml"), "OUTPUT_DIR", str(out),
                *TINY_OPTS, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "5",
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
