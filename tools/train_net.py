#!/usr/bin/env python
"""Train or evaluate a mammo_tl model (detectron2 style).

    python tools/train_net.py --config-file configs/synthetic/d_tl_similarity.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue from the last checkpoint

Before the first iteration the config is checked (mammo_tl.engine.preflight): a wrong dataset name, an
unreadable image, missing weights or an unwritable OUTPUT_DIR stop the run in seconds, naming the key.
"""
from mammo_tl.engine.launcher import cli, main, setup  # noqa: F401  (main, setup: the script's API)

if __name__ == "__main__":
    cli()
