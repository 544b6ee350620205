"""Helpers shared by the benchmark scripts (not a test): configs, a fixed positive/negative pair, tables."""
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mammo_tl  # noqa: E402,F401
from mammo_tl.config import get_mammo_tl_cfg  # noqa: E402

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
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def write_json(path, obj):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)
