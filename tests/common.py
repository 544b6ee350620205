"""Helpers shared by the tests: tiny CPU configs and a tiny synthetic data set."""
import contextlib
import glob
import io
import logging
import os
import runpy
import subprocess
import sys

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
    """Register mammo_synth_tiny_{train,test,val} under root, generated once: a folder is reused only when it holds
    a set made from the same spec by the same generator version (matches_spec), and generated under a file
    lock, so that processes sharing root (pytest-xdist's workers with MAMMO_TL_TINY_ROOT set) never write one
    set at once."""
    import fcntl

    from detectron2.data import DatasetCatalog

    from mammo_tl.data.synthetic import matches_spec

    os.makedirs(root, exist_ok=True)
    for split, seed, pos, neg in (("train", 10, 4, 4), ("test", 11, 3, 3), ("val", 12, 2, 2)):
        name = f"mammo_synth_tiny_{split}"
        path = os.path.join(root, split)
        spec = SyntheticSpec(num_positive_patients=pos, num_negative_patients=neg, seed=seed, **TINY_SPEC)
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not matches_spec(path, spec):
                generate(path, spec, progress=False)
        if name not in DatasetCatalog:
            register_synthetic(name, path)
    if "mammo_synth_tiny_train_benign_boxed" not in DatasetCatalog:  # the training images, look-alikes boxed
        register_synthetic("mammo_synth_tiny_train_benign_boxed", os.path.join(root, "train"), benign_boxes=True)


def set_threads():
    """One torch thread per test (see OMP_NUM_THREADS in tests/conftest.py); tests that change it get it back."""
    torch.set_num_threads(1)


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


def _loggers():
    return [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                    if isinstance(lg, logging.Logger)]


def run_in_process(argv, cwd=REPO):
    """``python argv...`` in ``cwd``, run in this process with runpy: sys.argv, the working folder, standard
    output and error as for a subprocess, and the loggers (the handlers detectron2's setup_logger adds, which
    write to this run's captured output) restored afterwards; returns a subprocess.CompletedProcess (text).
    Saves the start-up of a Python with torch and detectron2 (3.4 s of CPU) where a test checks what a script
    does, not its process: tests/doc_commands logs the run like a process's. An exception other than SystemExit
    propagates, with its traceback."""
    from detectron2.utils.logger import setup_logger

    old_argv, old_cwd = sys.argv, os.getcwd()
    old_loggers = {lg: (list(lg.handlers), lg.propagate, lg.level) for lg in _loggers()}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        sys.argv = list(argv)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(str(e.code))
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for lg in _loggers():
            handlers, propagate, level = old_loggers.get(lg, ([], True, logging.NOTSET))
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(level)
        setup_logger.cache_clear()  # its cache would otherwise skip adding the handlers just removed
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
