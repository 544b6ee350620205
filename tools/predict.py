#!/usr/bin/env python
"""Detect malignant masses in DICOM or PNG mammograms.

    python tools/predict.py --config-file configs/synthetic/d_tl_similarity.yaml \
        --input scans/ more.dcm --output out/ [--overlay] MODEL.WEIGHTS output/.../model_final.pth

Writes OUTPUT/predictions.json (per image: file_name, patient_id, laterality, view, boxes [x1, y1, x2, y2]
in the original image's pixels, scores), OUTPUT/patients.csv (patient_id, score = highest box score) and,
with --overlay, OUTPUT/overlays/*.png. MODEL.DEVICE cuda or cpu.
"""
import argparse

from mammo_tl.engine.predict import run_predict

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="files or folders (searched recursively)")
    p.add_argument("--output", required=True)
    p.add_argument("--overlay", action="store_true", help="also write PNGs with the boxes drawn")
    p.add_argument("--min-score", type=float, default=0.05, help="keep boxes scoring at least this")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args()
    run_predict(a.config_file, a.input, a.output, a.opts, overlay=a.overlay, min_score=a.min_score)
