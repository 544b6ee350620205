"""setup(), main() and the command line behind tools/train_net.py (also ``python -m mammo_tl.engine.launcher``,
which is how mammo_tl's own experiment runners start trainings).

Before any process is launched, the main process reads the config (as data: mammo_tl.config), takes OUTPUT_DIR's
folder lock (mammo_tl.files.FolderLock; held until every worker has finished, --eval-only included) and, with
--resume, checks that OUTPUT_DIR's saved config.yaml is the config asked for (:func:`check_resume`) and that the
records and image files it trains and tests on are those the run started with (:func:`check_resume_inputs`, the
record run_ablation keeps: OUTPUT_DIR/run_inputs.json). A training that starts afresh records them."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import ConfigFileError, differing_keys, flatten_config, get_mammo_tl_cfg
from ..files import FolderLock, FolderLocked, atomic_write_bytes
from ..data.datasets.common import DatasetError, register_json_datasets
from ..evaluation.operating_points import OperatingPointError
from ..checkpoint import WeightsError, load_model_weights
from .run_inputs import INPUTS_FILE, RunMismatch, check_inputs, run_inputs
from .preflight import ConfigError, check_output_dir, preflight
from .trainer import Trainer, operating_points_of

if TYPE_CHECKING:
    from detectron2.config import CfgNode


# Keys a resumed run may change: where it runs and how many loader processes feed it (neither changes what is
# trained), and OUTPUT_DIR itself (a run folder moved or reached by another path).
# MODEL.WEIGHTS_TRUSTED_PICKLE is taken from the command line only and saved as False (mammo_tl.config).
RESUME_MAY_DIFFER = ("MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "OUTPUT_DIR", "MODEL.WEIGHTS_TRUSTED_PICKLE")
# SOLVER.MAX_ITER may change too (train longer, or stop sooner) under a schedule set in absolute iterations: with
# WarmupMultiStepLR (detectron2's default, every mammo_tl config) SOLVER.STEPS and WARMUP_ITERS fix the learning
# rate of each iteration whatever MAX_ITER is, so the run is the one its new config.yaml describes. Refused under
# another schedule (a cosine's rate at each iteration depends on MAX_ITER).
ITERATION_SCHEDULES = ("WarmupMultiStepLR",)


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """The frozen config of the command line: the file (read as data), then the KEY VALUE overrides."""
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(f"SOLVER.AMP.ENABLED needs a GPU (detectron2's AMPTrainer), but MODEL.DEVICE is "
                         f"{cfg.MODEL.DEVICE!r}: set SOLVER.AMP.ENABLED False on CPU")
    cfg.freeze()
    return cfg


def check_resume(cfg: CfgNode) -> None:
    """--resume continues the run in OUTPUT_DIR only with the config that run was started with: refuse when its
    saved config.yaml differs in any key but :data:`RESUME_MAY_DIFFER` (and SOLVER.MAX_ITER under a schedule of
    :data:`ITERATION_SCHEDULES`, with a warning), naming the keys, or when the folder holds a checkpoint but no
    config.yaml to check it against."""
    out = cfg.OUTPUT_DIR
    saved = os.path.join(out, "config.yaml")
    if not os.path.exists(saved):
        if os.path.exists(os.path.join(out, "last_checkpoint")):
            raise ConfigError(f"--resume: {out} holds a checkpoint (last_checkpoint) but no config.yaml to check it "
                              "was trained with this config; resume only a folder train_net wrote, or train into a "
                              "new OUTPUT_DIR")
        return
    prior = get_mammo_tl_cfg()
    prior.set_new_allowed(True)  # keys of another mammo_tl version are compared, not refused
    prior.merge_from_file(saved)
    a, b = flatten_config(prior), flatten_config(cfg)
    ignore = RESUME_MAY_DIFFER
    if a.get("SOLVER.LR_SCHEDULER_NAME") in ITERATION_SCHEDULES and cfg.SOLVER.LR_SCHEDULER_NAME in ITERATION_SCHEDULES:
        ignore = (*ignore, "SOLVER.MAX_ITER")
        if a.get("SOLVER.MAX_ITER") != cfg.SOLVER.MAX_ITER:
            logging.getLogger("mammo_tl").warning(
                "--resume: SOLVER.MAX_ITER %s (was %s in %s); the learning-rate schedule (%s, SOLVER.STEPS %s) is "
                "set in iterations and unchanged", cfg.SOLVER.MAX_ITER, a.get("SOLVER.MAX_ITER"), saved,
                cfg.SOLVER.LR_SCHEDULER_NAME, list(cfg.SOLVER.STEPS))
    diff = differing_keys(a, b, ignore=ignore)
    if diff:
        shown = "; ".join(f"{k}: {a.get(k, '(absent)')!r} there, {b.get(k, '(absent)')!r} here" for k in diff[:8])
        raise ConfigError(f"--resume: {out} holds a run of another config: {saved} differs in {len(diff)} key(s): "
                          f"{shown}{' ...' if len(diff) > 8 else ''}. Resume with the run's own config "
                          f"(--config-file {saved}), or train into another OUTPUT_DIR")


def _datasets(cfg):
    return (f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}, DATASETS.TEST {tuple(cfg.DATASETS.TEST)}"
            + (f", DATASETS.VALIDATION {tuple(cfg.DATASETS.VALIDATION)}" if cfg.DATASETS.VALIDATION else "")
            + (f", DATASETS.REGISTER_JSON {list(cfg.DATASETS.REGISTER_JSON)}" if cfg.DATASETS.REGISTER_JSON else ""))


def check_resume_inputs(cfg: CfgNode) -> None:
    """--resume continues a run only on the data it started with: the records of its DATASETS.TRAIN, TEST and
    VALIDATION sets (their SHA-256) and the content of every image file they name (size, mtime, SHA-256), as recorded in
    OUTPUT_DIR/run_inputs.json when the run started (the record and check run_ablation keeps:
    :func:`.run_inputs.run_inputs`). A change (a split rewritten, an image replaced) is refused,
    naming it. A run without the record (started by an earlier mammo_tl) is recorded now, with a warning."""
    out = cfg.OUTPUT_DIR
    if not os.path.exists(os.path.join(out, "last_checkpoint")):
        record_inputs(cfg)  # nothing to resume: a fresh run
        return
    if not os.path.exists(os.path.join(out, INPUTS_FILE)):
        logging.getLogger("mammo_tl").warning(
            "--resume: %s holds no record of the data its run started with (%s, written by train_net since this "
            "version): the records and images of %s are recorded now and checked at the next --resume", out,
            INPUTS_FILE, _datasets(cfg))
    inputs = _inputs_or_none(cfg)
    if inputs is None:
        return
    try:
        check_inputs(out, inputs, finished=False)
    except RunMismatch as e:
        why = str(e).split(": choose another --output")[0]
        raise ConfigError(f"--resume: {why}. Resuming would train or test the model on other data than the run "
                          f"started with ({_datasets(cfg)}); restore the data the run started with, or train into "
                          f"another OUTPUT_DIR without --resume") from None


def record_inputs(cfg: CfgNode) -> None:
    """OUTPUT_DIR/run_inputs.json for a training that starts afresh: its records' SHA-256 and every image's size,
    mtime and SHA-256, which --resume checks (:func:`check_resume_inputs`)."""
    path = os.path.join(cfg.OUTPUT_DIR, INPUTS_FILE)
    if os.path.exists(path):
        os.remove(path)  # an earlier run's, in a folder trained again from scratch
    inputs = _inputs_or_none(cfg)
    if inputs is not None:
        check_inputs(cfg.OUTPUT_DIR, inputs, finished=False)


def _inputs_or_none(cfg):
    """run_inputs(cfg), or None when a data set cannot be loaded: preflight then stops the run with its message
    (naming the key and the set), before anything is trained."""
    try:
        return run_inputs(cfg)
    except Exception as e:  # an unregistered name (KeyError), a bad records file (DatasetError), ...
        logging.getLogger("mammo_tl").debug("run_inputs: %s: %s", type(e).__name__, e)
        return None


EVAL_CONFIG = "config_eval.yaml"


def _training_config(out):
    """The bytes of OUTPUT_DIR's config.yaml when the folder holds a training run (a last_checkpoint beside it):
    an --eval-only run there must not replace what that run's --resume is checked against."""
    saved = os.path.join(out, "config.yaml")
    if os.path.isfile(saved) and os.path.isfile(os.path.join(out, "last_checkpoint")):
        with open(saved, "rb") as f:
            return f.read()
    return None


def saved_config_text(cfg: CfgNode) -> str:
    """``cfg`` as a run folder saves it (config.yaml): MODEL.WEIGHTS_TRUSTED_PICKLE False whatever the command line
    said, since a config file may not switch it on (mammo_tl.config.check_no_trust_switch) and the run's
    config.yaml is the file predict, export and --resume are given."""
    if not cfg.MODEL.WEIGHTS_TRUSTED_PICKLE:
        return cfg.dump()
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.WEIGHTS_TRUSTED_PICKLE = False
    return plain.dump()


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = build_cfg(args)
    register_json_datasets(cfg.DATASETS.REGISTER_JSON)
    check_output_dir(cfg.OUTPUT_DIR)  # before default_setup, which writes its log and config there
    kept = _training_config(cfg.OUTPUT_DIR) if args.eval_only and comm.is_main_process() else None
    default_setup(cfg, args)
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if comm.is_main_process() and cfg.MODEL.WEIGHTS_TRUSTED_PICKLE:  # default_setup saved it with True
        atomic_write_bytes(saved, saved_config_text(cfg).encode("utf-8"))
    if kept is not None:  # the training run's config.yaml stays what --resume checks; this run's goes beside it
        atomic_write_bytes(os.path.join(cfg.OUTPUT_DIR, EVAL_CONFIG), saved_config_text(cfg).encode("utf-8"))
        atomic_write_bytes(saved, kept)
        logging.getLogger(__name__).info("--eval-only into the training run %s: its config.yaml kept, this "
                                         "evaluation's config saved as %s", cfg.OUTPUT_DIR, EVAL_CONFIG)
    # mammo_tl's own messages (preflight, weights, best checkpoint) into OUTPUT_DIR/log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mammo_tl")
    return cfg


def main(args: argparse.Namespace) -> dict | None:
    cfg = setup(args)
    preflight(cfg, eval_only=args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_model_weights(model, cfg, purpose="evaluate", resume=args.resume)
        points = operating_points_of(cfg)
        res = Trainer.test(cfg, model, [Trainer.build_evaluator(cfg, name, operating_points=points)
                                        for name in cfg.DATASETS.TEST])
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv: Sequence[str] | None = None, prog: str = "train_net.py") -> None:
    """detectron2's training command line (--config-file, --num-gpus, --resume, --eval-only, KEY VALUE ...);
    a config or data error, or an OUTPUT_DIR in use by another run, ends the process with its message instead of
    a traceback (exit status 1)."""
    args = default_argument_parser().parse_args(argv)
    try:
        cfg = build_cfg(args)
        check_output_dir(cfg.OUTPUT_DIR)
        # the main process of machine 0 holds the lock for every worker (the others write no results there)
        lock = FolderLock(cfg.OUTPUT_DIR, "train_net" + (" --eval-only" if args.eval_only else "")) \
            if args.machine_rank == 0 else None
        if lock is not None:
            lock.acquire()
        try:
            if args.resume:
                check_resume(cfg)
            if not args.eval_only and args.machine_rank == 0:
                (check_resume_inputs if args.resume else record_inputs)(cfg)
            launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                   dist_url=args.dist_url, args=(args,))
        finally:
            if lock is not None:
                lock.release()
    except (ConfigError, ConfigFileError, DatasetError, WeightsError, OperatingPointError, FolderLocked) as e:
        sys.exit(f"{prog}: {e}")


if __name__ == "__main__":
    cli(prog="python -m mammo_tl.engine.launcher")
