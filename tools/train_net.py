#!/usr/bin/env python
"""Train or evaluate a mammo_tl model (detectron2 style).

    python tools/train_net.py --config-file configs/synthetic/d_tl_similarity.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue from the last checkpoint

Before the first iteration the config is checked (mammo_tl.engine.preflight): a wrong dataset name, an
unreadable image, missing weights or an unwritable OUTPUT_DIR stop the run in seconds, naming the key.
"""
import sys

from detectron2.engine import default_argument_parser, launch

from mammo_tl.data.datasets import DatasetError
from mammo_tl.engine.launcher import main, setup  # noqa: F401  (setup is part of the script's API)
from mammo_tl.engine.preflight import ConfigError

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except (ConfigError, DatasetError) as e:
        sys.exit(f"train_net.py: {e}")
