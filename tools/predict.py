#!/usr/bin/env python
"""Detect malignant masses in DICOM or PNG mammograms.

    python tools/predict.py --config-file configs/synthetic/d_tl_similarity.yaml \\
        --input scans/ more.dcm --output out/ [--overlay] MODEL.WEIGHTS output/.../model_final.pth

Writes, in OUTPUT: predictions.jsonl as it goes (one line per image), then predictions.json (per image:
file_name, patient_id, laterality, view, boxes [x1, y1, x2, y2] in the original image's pixels, scores),
patients.csv (patient_id, score = highest box score), skipped.json (file_name, kind, reason),
summary.json (counts) and, with --overlay, overlays/<name>_<hash>.png. MODEL.WEIGHTS must be a trained
model's checkpoint. An image without a patient id is its own patient "unknown:<name>_<hash>".
An OUTPUT holding a previous run needs --resume (continue it, same config and weights) or --overwrite.
MODEL.DEVICE cuda or cpu. Exit status 1 with a message on any error, 2 on a bad argument.
"""
import argparse
import sys

from mammo_tl.engine.checkpoint import WeightsError
from mammo_tl.engine.predict_command import PredictError, check_max_pixels, check_min_score, run_predict
from mammo_tl.data.image_io import DEFAULT_MAX_PIXELS


def _arg(check):
    def parse(text):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="files or folders (searched recursively)")
    p.add_argument("--output", required=True)
    p.add_argument("--overlay", action="store_true", help="also write PNGs with the boxes drawn")
    p.add_argument("--min-score", type=_arg(check_min_score), default=0.05,
                   help="keep boxes scoring at least this (0 to 1)")
    p.add_argument("--max-pixels", type=_arg(check_max_pixels), default=DEFAULT_MAX_PIXELS,
                   help=f"skip images with more pixels than this, before decoding them (default {DEFAULT_MAX_PIXELS})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in OUTPUT: skip the images in its predictions.jsonl")
    mode.add_argument("--overwrite", action="store_true", help="remove the results of a previous run in OUTPUT")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args()
    try:
        run_predict(a.config_file, a.input, a.output, a.opts, overlay=a.overlay, min_score=a.min_score,
                    max_pixels=a.max_pixels, resume=a.resume, overwrite=a.overwrite)
    except (PredictError, WeightsError) as e:
        sys.exit(f"predict.py: error: {e}")
