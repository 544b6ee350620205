#!/usr/bin/env python
"""Train or evaluate a mammo_tl model (detectron2 style).

    python tools/train_net.py --config-file configs/synthetic/d_tl_sim.yaml
    python tools/train_net.py --config-file CFG --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue from the last checkpoint
"""
from detectron2.engine import default_argument_parser, launch

from mammo_tl.engine.launcher import main, setup  # noqa: F401  (setup is part of the script's API)

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
