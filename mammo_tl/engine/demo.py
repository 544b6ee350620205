"""`make demo`: the paper in miniature on the built-in synthetic mammograms (CPU).

Trains config (a) Faster R-CNN on positives only and config (d) top likelihood + similarity loss, evaluates
both on the same held-out test patients, chooses each model's operating points on separate validation
patients, and writes results.json and a report with the paper's threshold 0.5 and the validation-chosen rows.
"""
import logging
import os

from detectron2.data import DatasetCatalog

from .experiments import REPO, run_rows

logger = logging.getLogger(__name__)
DEMO_CONFIGS = tuple(os.path.join(REPO, "configs", "synthetic", f"{n}.yaml")
                     for n in ("a_positives_only", "d_tl_similarity"))


VALIDATION_SET = "mammo_synth_val"


def choose_demo_points(config_file, opts, run_dir):
    """Operating points of a trained demo row, chosen on the validation patients (reused while they belong
    to the row's model_final.pth)."""
    from ..evaluation.operating_points import FILE_NAME, OperatingPointError, load_operating_points
    from .choose_points import build_cfg, choose_points

    weights = os.path.join(run_dir, "model_final.pth")
    path = os.path.join(run_dir, FILE_NAME)
    if os.path.exists(path):
        try:
            load_operating_points(path, weights)
            return
        except OperatingPointError:
            pass  # chosen for earlier weights: choose again
    choose_points(build_cfg(config_file, [*opts, "MODEL.WEIGHTS", weights]), VALIDATION_SET)
    print(f"[demo] {os.path.basename(run_dir)}: operating points chosen on {VALIDATION_SET} -> {path}", flush=True)


def run_demo(output, configs=DEMO_CONFIGS, extra_opts=(), bootstrap=1000):
    for name in ("mammo_synth_train", "mammo_synth_test", VALIDATION_SET):
        n = len(DatasetCatalog.get(name))  # generates the set on first use, with a progress bar
        print(f"[demo] {name}: {n} images", flush=True)
    return run_rows(configs, output, extra_opts, bootstrap, title="mammo_tl demo: synthetic mammograms", tag="demo",
                    after_training=choose_demo_points)
