#!/usr/bin/env python
"""The paper in miniature on built-in synthetic mammograms (what `make demo` runs).

    python tools/demo.py --output output/demo [--opts KEY VALUE ...]
"""
import argparse

from detectron2.utils.logger import setup_logger

from mammo_tl.engine.demo import DEMO_CONFIGS, run_demo

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--configs", nargs="+", default=list(DEMO_CONFIGS))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    args = p.parse_args()
    setup_logger(name="mammo_tl")
    run_demo(args.output, args.configs, extra_opts=args.opts, bootstrap=args.bootstrap)
