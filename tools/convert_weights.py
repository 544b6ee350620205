#!/usr/bin/env python
"""Convert a .pkl weights file (detectron2 or Caffe2 model zoo format) once into a pickle-free .pth.

    python tools/convert_weights.py detectron2://ImageNetPretrained/MSRA/R-101.pkl weights/R-101.pth
    python tools/convert_weights.py --trusted downloads/R-101.pkl weights/R-101.pth

Unpickling runs any code the file holds, so IN is read only from detectron2's model zoo
(detectron2://..., https://dl.fbaipublicfiles.com/detectron2/...) or with --trusted. OUT holds plain
tensors (torch.load(weights_only=True) reads it) plus detectron2's format markers, so MODEL.WEIGHTS OUT
loads exactly what MODEL.WEIGHTS IN would, Caffe2 renaming included.
"""
import argparse
import os
import sys

from mammo_tl.checkpoint import WeightsError, convert_pickle_weights

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", metavar="IN", help=".pkl file or detectron2 model zoo URL")
    p.add_argument("output", metavar="OUT", help=".pth file to write")
    p.add_argument("--trusted", action="store_true", help="IN comes from a source you trust (any origin)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    a = p.parse_args()
    if os.path.exists(a.output) and not a.overwrite:
        sys.exit(f"convert_weights.py: error: {a.output} exists; pass --overwrite to replace it")
    try:
        s = convert_pickle_weights(a.input, a.output, trusted=a.trusted)
    except WeightsError as e:
        sys.exit(f"convert_weights.py: error: {e}")
    print(f"wrote {a.output}: {s['tensors']} tensors from {a.input} (format {s['author'] or 'plain'}"
          f"{', renamed by name matching on load' if s['matching_heuristics'] else ''})"
          + (f"; left out {len(s['dropped'])} entries that are not weights: {', '.join(s['dropped'])}"
             if s["dropped"] else ""))
