"""`make demo`: the paper in miniature on the built-in synthetic mammograms (CPU).

Trains config (a) Faster R-CNN on positives only and config (d) top likelihood + similarity loss,
evaluates both on the same held-out patients, and writes results.json and a report.
"""
import logging
import os

from detectron2.data import DatasetCatalog

from .experiments import REPO, run_rows

logger = logging.getLogger(__name__)
DEMO_CONFIGS = tuple(os.path.join(REPO, "configs", "synthetic", f"{n}.yaml")
                     for n in ("a_positives_only", "d_tl_similarity"))


def run_demo(output, configs=DEMO_CONFIGS, extra_opts=(), bootstrap=1000):
    for name in ("mammo_synth_train", "mammo_synth_test"):
        n = len(DatasetCatalog.get(name))  # generates the set on first use, with a progress bar
        print(f"[demo] {name}: {n} images", flush=True)
    return run_rows(configs, output, extra_opts, bootstrap, title="mammo_tl demo: synthetic mammograms", tag="demo")
