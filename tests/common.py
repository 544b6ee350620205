"""Helpers shared by the tests: tiny CPU configs and a tiny synthetic data set."""
import glob
import os

import torch

import mammo_tl  # noqa: F401  (registers components)
from mammo_tl.config import get_mammo_tl_cfg
from mammo_tl.data.datasets import register_synthetic
from mammo_tl.data.synthetic import SyntheticSpec, generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")


def all_config_files():
    return sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))


def config_path(rel):
    return os.path.join(CONFIG_DIR, rel)


# A config shrunk to run in seconds on CPU (128 px input, ResNet-18, few proposals), as command-line opts
# (tools/train_net.py KEY VALUE ...); tiny_cfg() applies the same to a config object.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.FIXED_SIZE", "(128, 128)",
    "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
]
TINY_DATASETS = ["DATASETS.TRAIN", "('mammo_synth_tiny_train',)", "DATASETS.TEST", "('mammo_synth_tiny_test',)"]


def tiny_cfg(rel="synthetic/d_tl_similarity.yaml", opts=()):
    """``rel`` shrunk by TINY_OPTS, on the tiny synthetic sets, then ``opts``."""
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(config_path(rel))
    cfg.merge_from_list(TINY_OPTS + TINY_DATASETS)
    cfg.merge_from_list(list(opts))
    return cfg


TINY_SPEC = dict(height=192, width=160, min_radius=9.0, max_radius=13.0)


def ensure_tiny_datasets(root):
    """Register mammo_synth_tiny_{train,test} under root (generated once per session)."""
    from detectron2.data import DatasetCatalog

    for split, seed, pos, neg in (("train", 10, 4, 4), ("test", 11, 3, 3)):
        name = f"mammo_synth_tiny_{split}"
        path = os.path.join(root, split)
        if not os.path.exists(os.path.join(path, "annotations.json")):
            generate(path, SyntheticSpec(num_positive_patients=pos, num_negative_patients=neg, seed=seed,
                                         **TINY_SPEC), progress=False)
        if name not in DatasetCatalog:
            register_synthetic(name, path)


def set_threads():
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def breast_phantom(h=200, w=160, seed=0):
    """A bright half-ellipse 'breast' on a dark background with a brighter square: an image worth predicting."""
    import numpy as np

    img = np.full((h, w), 200, np.uint16)
    yy, xx = np.mgrid[0:h, 0:w]
    img[((xx - w + 1) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1] = 3000
    r = np.random.default_rng(seed)
    y, x = int(r.integers(h // 3, h // 2)), int(r.integers(w // 2, w - 30))
    img[y:y + 15, x:x + 15] = 6000
    return img
