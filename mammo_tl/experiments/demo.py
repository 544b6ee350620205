"""`make demo`: the paper in miniature on the built-in synthetic mammograms (CPU).

Under the paper's DDSM protocol (negative images are benign cases, each holding a look-alike; docs/phantom.md),
trains config (a) Faster R-CNN on positive images, config (d) top likelihood + similarity loss, and the ceiling
(o), Faster R-CNN told what the look-alikes are (boxed as a second class), all at one positive image per step
(configs/synthetic_ddsm/), two trainings at once (``jobs``). Each run chooses its checkpoint on the validation
patients (learning curves in the report); all are evaluated once on the same held-out test patients, with operating
points chosen on the validation patients, and the report shows the share of the ceiling's gain the method recovers.

With ``seeds`` (tools/demo.py --seeds 0 1 2) every config is trained once per training seed (config SEED) into
OUTPUT/seed_<s>/<config name>, each seed's report goes to OUTPUT/seed_<s>/ and the aggregate over seeds to
OUTPUT/report.md (.html, results.json). The synthetic data sets are generated from their own fixed seeds and
stay the same for every training seed. The paper's rows (a)-(d) over three seeds, in one command:

    python tools/demo.py --output output/ablation_synthetic --seeds 0 1 2 --validation-set mammo_synth_val \\
        --configs configs/synthetic/a_positives_only.yaml configs/synthetic/b_with_negatives.yaml \\
        configs/synthetic/c_top_likelihood.yaml configs/synthetic/d_tl_similarity.yaml
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

from detectron2.data import DatasetCatalog

from ..evaluation.runs import selected_weights, weights_digest
from .rows import REPO, expected_config, run_rows

logger = logging.getLogger(__name__)
# the baseline (first: the report's reference), the method, and the ceiling (the look-alikes boxed): the report
# shows the share of the ceiling's gain the method recovers
DEMO_CONFIGS = tuple(os.path.join(REPO, "configs", "synthetic_ddsm", f"{n}.yaml")
                     for n in ("a_positives_only", "d_tl_similarity", "o_benign_annotated"))


VALIDATION_SET = "mammo_synth_ddsm_val"
DEMO_JOBS = 2  # trainings at once: on a 2-core CPU, two one-thread trainings beat two-thread ones in turn
SEEDS_NOTE = ("The synthetic training, validation and test sets are generated from their own fixed seeds and are "
              "the same for every training seed: the spread over seeds is that of training alone.")


def choose_demo_points(config_file: str, opts: Sequence[str], run_dir: str,
                       validation_set: str = VALIDATION_SET) -> None:
    """Operating points of a trained demo row, chosen on the validation patients for the weights its test results
    belong to (the validation-chosen checkpoint, else model_final.pth; reused while they belong to them)."""
    from ..evaluation.operating_points import FILE_NAME, OperatingPointError, load_operating_points
    from ..engine.choose_points import build_cfg, choose_points

    weights = selected_weights(run_dir)
    path = os.path.join(run_dir, FILE_NAME)
    digest = weights_digest(run_dir, weights)
    if os.path.exists(path) and digest is not None:
        try:
            load_operating_points(path, weights, weights_sha256=digest)
            return
        except OperatingPointError:
            pass  # chosen for earlier weights: choose again
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{run_dir}: no operating points for its weights {weights}, and the weights are not "
                                f"there to choose them (a run archived without them): restore a complete archive "
                                f"or train the run again")
    choose_points(build_cfg(config_file, [*opts, "MODEL.WEIGHTS", weights]), validation_set)
    print(f"[demo] {os.path.basename(run_dir)}: operating points chosen on {validation_set} -> {path}", flush=True)


def run_demo(output: str, configs: Sequence[str] = DEMO_CONFIGS, extra_opts: Sequence[str] = (),
             bootstrap: int = 1000, seeds: Sequence[int] | None = None,
             validation_set: str = VALIDATION_SET, jobs: int = 1) -> dict:
    """Train, evaluate and compare ``configs`` (once, or once per training seed in ``seeds``; ``jobs`` of them at
    once) on the data sets they name (the built-in synthetic ones unless ``extra_opts`` say otherwise);
    operating points chosen on ``validation_set``."""
    from ..data.datasets.common import register_json_datasets

    cfg = expected_config(configs[0], extra_opts)
    register_json_datasets(cfg.DATASETS.REGISTER_JSON)
    for config_file in configs:
        chosen_on = list(expected_config(config_file, extra_opts).DATASETS.VALIDATION)
        if chosen_on and chosen_on[0] != validation_set:
            raise ValueError(f"{config_file}: its models are chosen on DATASETS.VALIDATION {chosen_on[0]!r}, its "
                             f"operating points would be chosen on {validation_set!r} (--validation-set): name one "
                             f"set for both")
    for name in dict.fromkeys((*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST, validation_set)):
        n = len(DatasetCatalog.get(name))  # generates a built-in set on first use, with a progress bar
        print(f"[demo] {name}: {n} images", flush=True)
    return run_rows(configs, output, extra_opts, bootstrap, title="mammo_tl demo: synthetic mammograms", tag="demo",
                    after_training=functools.partial(choose_demo_points, validation_set=validation_set),
                    seeds=seeds, note=SEEDS_NOTE, jobs=jobs)
