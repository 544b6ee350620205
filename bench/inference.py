#!/usr/bin/env python
"""Inference ms/image: tools/predict.py's code path (MammoPredictor) against detectron2's DefaultPredictor
on the same model and the same 512 x 512 image, interleaved in one process.

    python bench/inference.py --json output/bench/inference.json
"""
import argparse

import numpy as np
import torch
from _common import machine, method_and_vanilla_cfgs, summary, table, timed, write_json
from detectron2.engine import DefaultPredictor

from mammo_tl.engine.predictor import MammoPredictor


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/synthetic/d_tl_similarity.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cfg, _ = method_and_vanilla_cfgs(a.config, a.opts)
    cfg.MODEL.DEVICE = a.device
    cfg.INPUT.FIXED_SIZE = (a.size, a.size)
    cfg.INPUT.CROP_TO_BREAST = False
    # DefaultPredictor resizes by shortest edge: with both sizes = the input size its resize is a no-op
    cfg.INPUT.MIN_SIZE_TEST = a.size
    cfg.INPUT.MAX_SIZE_TEST = a.size
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    ours = MammoPredictor(cfg, allow_random_init=True)
    theirs = DefaultPredictor(cfg)
    theirs.model.load_state_dict(ours.model.state_dict())
    rng = np.random.default_rng(0)
    image16 = (rng.random((a.size, a.size)) * 65535).astype(np.float32)
    lo, hi = image16.min(), image16.max()
    image8 = np.repeat(((image16 - lo) * 255.0 / (hi - lo)).astype(np.uint8)[:, :, None], 3, axis=2)

    times = {"mammo_tl predict path": [], "detectron2 DefaultPredictor": []}
    calls = {"mammo_tl predict path": lambda: ours(image16), "detectron2 DefaultPredictor": lambda: theirs(image8)}
    for i in range(3 + a.iters):
        for name in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
            t = timed(calls[name], a.device)
            if i >= 3:
                times[name].append(t)
    res = {k: summary(v) for k, v in times.items()}
    ratio = res["mammo_tl predict path"]["median_ms"] / res["detectron2 DefaultPredictor"]["median_ms"]
    out = {"ratio": ratio, **res, "size": a.size, "device": a.device, "config": a.config, "machine": machine()}
    print(f"inference, {a.size}x{a.size}, ResNet-{cfg.MODEL.RESNETS.DEPTH}, {a.device} ({machine()['gpu']})")
    print(table(["path", "ms/image (median)", "IQR"],
                [[k, f"{v['median_ms']:.1f}", f"{v['p25_ms']:.1f}-{v['p75_ms']:.1f}"] for k, v in res.items()]
                + [["ratio mammo_tl/DefaultPredictor", f"{ratio:.3f}", ""]]))
    write_json(a.json, out)


if __name__ == "__main__":
    main()
