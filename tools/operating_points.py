#!/usr/bin/env python
"""Choose decision thresholds (operating points) for a trained model on a VALIDATION set and store them
beside its weights, so evaluation (train_net.py --eval-only) and tools/predict.py --operating-point can use
them. Never choose them on the test set: the command refuses a set of DATASETS.TEST or one sharing patients.

    python tools/operating_points.py --config-file configs/synthetic/d_tl_similarity.yaml \\
        --dataset mammo_synth_val MODEL.WEIGHTS output/demo/d_tl_similarity/model_final.pth

Writes operating_points.json beside MODEL.WEIGHTS (keyed by the weights' sha256): paper_0.5, the most specific
threshold reaching each --sensitivity, the most sensitive reaching each --specificity, and Youden's J, each
with the validation figures it was chosen on.
"""
import argparse
import sys

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.data.datasets import DatasetError
from mammo_tl.checkpoint import WeightsError
from mammo_tl.engine.choose_points import build_cfg, choose_points
from mammo_tl.evaluation.operating_points import OperatingPointError, describe_threshold


def _fraction(text):
    v = float(text)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", required=True, help="registered validation set (e.g. via DATASETS.REGISTER_JSON)")
    p.add_argument("--sensitivity", type=_fraction, nargs="*", default=[0.90, 0.95], help="target sensitivities")
    p.add_argument("--specificity", type=_fraction, nargs="*", default=[0.90], help="target specificities")
    p.add_argument("--output", help="file to write (default: operating_points.json beside MODEL.WEIGHTS)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (MODEL.WEIGHTS!)")
    a = p.parse_args()
    setup_logger(name="mammo_tl")
    try:
        cfg = build_cfg(a.config_file, a.opts)
        path, points = choose_points(cfg, a.dataset, a.sensitivity, a.specificity, a.output)
    except (OperatingPointError, WeightsError, DatasetError, ConfigFileError) as e:
        sys.exit(f"operating_points.py: {e}")
    print(f"{'point':<18} {'threshold':>9} {'sensitivity':>11} {'specificity':>11}   (on {a.dataset})")
    for name, pt in points.items():
        v = pt["validation"]
        print(f"{name:<18} {pt['threshold']:>9.4f} {v['sensitivity']:>11.3f} {v['specificity']:>11.3f}"
              + (f"   {describe_threshold(pt['threshold'])}" if pt["threshold"] < 0 else ""))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
