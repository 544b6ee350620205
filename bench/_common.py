"""Helpers shared by the benchmark scripts (not a test): configs, a fixed positive/negative pair, tables."""
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mammo_tl  # noqa: F401
from mammo_tl.config import get_mammo_tl_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": dev, "torch": torch.__version__,
            "python": platform.python_version()}


def method_and_vanilla_cfgs(config, opts=()):
    """The full method's config and detectron2's vanilla Faster R-CNN with everything else equal."""
    method = get_mammo_tl_cfg()
    method.merge_from_file(os.path.join(REPO, config))
    method.merge_from_list(list(opts))
    method.INPUT.RANDOM_FLIP = "none"
    vanilla = method.clone()
    vanilla.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    vanilla.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    return method, vanilla


def fixed_pair(cfg, height=None, width=None):
    """One positive and one negative synthetic image, mapped for training by cfg's mapper."""
    from mammo_tl.data import MammogramDatasetMapper, split_positive_negative
    from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic

    h, w = height or cfg.INPUT.FIXED_SIZE[0], width or cfg.INPUT.FIXED_SIZE[1]
    root = tempfile.mkdtemp(prefix="mammo_tl_bench_")
    generate(root, SyntheticSpec(num_positive_patients=2, num_negative_patients=2, seed=123, height=h, width=w,
                                 min_radius=h / 30, max_radius=h / 18), progress=False)
    pos, neg = split_positive_negative(load_synthetic(root))
    mapper = MammogramDatasetMapper(cfg, is_train=True)
    return [mapper(pos[0]), mapper(neg[0])]


def clone_batch(batch, device):
    out = copy.deepcopy(batch)
    for b in out:
        b["image"] = b["image"].to(device)
        b["instances"] = b["instances"].to(device)
    return out


def timed(fn, device):
    """Seconds fn() takes, synchronising CUDA around it so GPU work is counted."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def summary(times_s):
    ms = sorted(t * 1000 for t in times_s)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "n": len(ms)}


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(r):
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def write_json(path, obj):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def mammogram_like(rng, rows, cols, right=False):
    """A 16-bit MONOCHROME2 full-field image that compresses like a mammogram: constant background, a
    half-elliptic breast against one edge whose tissue varies smoothly (a few hundred grey levels over
    tens of pixels), +-12 levels of noise inside the breast only, and a bright film label."""
    sh, sw = rows // 16, cols // 16
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    depth, half = sw * rng.uniform(0.65, 0.8), sh * rng.uniform(0.38, 0.45)
    r = (xx / depth) ** 2 + ((yy - sh * rng.uniform(0.45, 0.55)) / half) ** 2
    texture = cv2.GaussianBlur(rng.standard_normal((sh, sw)).astype(np.float32), (0, 0), 2.5)
    small = np.where(r <= 1, 30000 + 9000 * np.sqrt(np.clip(1 - r, 0, 1)) + 2500 * texture, 0)
    big = cv2.resize(small.astype(np.float32), (cols, rows), interpolation=cv2.INTER_CUBIC)
    breast = big > 15000
    img = np.full((rows, cols), 1200, np.uint16)
    img[breast] = np.clip(big[breast] + rng.integers(-12, 13, int(breast.sum())), 0, 65535).astype(np.uint16)
    img[rows // 20: rows // 20 + rows // 30, cols - cols // 5: cols - cols // 20] = 60000  # film label
    return img[:, ::-1].copy() if right else img
