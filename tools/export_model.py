#!/usr/bin/env python
"""Export a trained model as ONNX (the default) or TorchScript, for tools/predict.py --model or another runtime.

    python tools/export_model.py --config-file output/demo/d_tl_similarity/config.yaml --format onnx \\
        --output exported/ MODEL.WEIGHTS output/demo/d_tl_similarity/model_final.pth

Writes OUTPUT/model.onnx (or model.ts) and OUTPUT/export.json: the preparation tools/predict.py applies before
the model (input size, intensity percentiles, crop to the breast, canonical flip), the score threshold inside
the graph, the model file's sha256 and the source weights' and config's sha256. The graph takes one prepared
image (3, H, W) float32 and returns boxes (n, 4) in that grid and scores (n,); predict maps the boxes back to
the stored image. ONNX is the recommended format: a graph of operators that a runtime interprets. A TorchScript
model.ts is a program (loading it runs code), so predict runs one only with --trust-torchscript. The export is
run beside the PyTorch model on two test images and refused unless its boxes and scores agree (0.01 pixel,
1e-4). Refused, naming the key: INPUT.RESIZE_MODE other than "fixed", a
META_ARCHITECTURE other than GeneralizedRCNN, MASK_ON / KEYPOINT_ON, deformable convolution for ONNX, or any
model detectron2 cannot trace. Exit status 1 with a message on any error, 2 on a bad argument.
"""
import argparse
import sys

from mammo_tl.checkpoint import WeightsError
from mammo_tl.export.exporter import DEFAULT_OPSET, export_model
from mammo_tl.export.runtime import FORMATS, ExportError

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the trained model's config (its run's config.yaml)")
    p.add_argument("--format", default="onnx", choices=tuple(FORMATS),
                   help="onnx (model.onnx, the default: a graph that runtimes read as data) or torchscript "
                        "(model.ts: a program; predict runs it only with --trust-torchscript)")
    p.add_argument("--output", required=True, help="folder for the model and export.json")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (MODEL.WEIGHTS W)")
    a = p.parse_args()
    try:
        meta = export_model(a.config_file, a.format, a.output, a.opts, opset=a.opset)
    except (ExportError, WeightsError) as e:
        sys.exit(f"export_model.py: error: {e}")
    print(f"Wrote {a.output}/{meta['model_file']} and export.json ({a.format}; source weights sha256 "
          f"{meta['source']['weights_sha256'][:12]}...; checked against the PyTorch model on "
          f"{meta['verified']['test_images']} test images)")
