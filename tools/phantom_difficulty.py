#!/usr/bin/env python
"""How hard the synthetic phantom is: train the baseline, config (a) Faster R-CNN on positive images only, on
the built-in synthetic sets at the demo's budget, and report the patient ROC AUC and the lesion sensitivity
at 1 false positive per image (FROC), with a breakdown by margin, density and look-alike kind
(docs/phantom.md). Writes OUTPUT/difficulty.json beside the run (a finished run is reused).

    MAMMO_TL_DATASETS=/tmp/phantom_ds python tools/phantom_difficulty.py --output output/phantom_difficulty

An evaluated run as it is, e.g. the baseline of a demo over seeds (nothing trained, the seeds' reports untouched):

    python tools/phantom_difficulty.py --run output/demo_seeds/seed_0/a_positives_only --output output/pd_seed0

Any set written by tools/make_synthetic.py gets the same breakdown (the phantom's truth is found from the
test records), registered by the records.json the tool writes beside it:

    python tools/make_synthetic.py --output datasets/synthetic/mine_train --positive 100 --negative 100 --seed 7
    python tools/make_synthetic.py --output datasets/synthetic/mine_test --positive 50 --negative 100 --seed 8
    python tools/phantom_difficulty.py --output output/pd_mine --opts DATASETS.REGISTER_JSON \\
        "['mine_train=datasets/synthetic/mine_train/records.json', 'mine_test=datasets/synthetic/mine_test/records.json']" \\
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_test',)"
"""  # noqa: E501  (a command as typed: its quoted list does not break)
import argparse
import json

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.experiments.rows import RunMismatch
from mammo_tl.experiments.difficulty import FP_RATE, baseline_config, format_summary, measure_difficulty, \
    phantom_statistics

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/phantom_difficulty")
    p.add_argument("--config-file", default=None, help=f"default: {baseline_config()}")
    p.add_argument("--run", metavar="RUN_DIR", default=None,
                   help="measure this evaluated run as it is (no training; e.g. one run of tools/demo.py --seeds)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--fp-rate", type=float, default=FP_RATE, help="false positives per image (default 1)")
    p.add_argument("--stats-only", metavar="ROOT", default=None,
                   help="only the lesions' contrast-to-noise ratios of the synthetic set in ROOT (no training)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides (KEY VALUE ...)")
    a = p.parse_args()
    if a.stats_only:
        print(json.dumps(phantom_statistics(a.stats_only), indent=1))
    else:
        setup_logger(name="mammo_tl")
        if a.run and (a.config_file or a.opts):
            p.error("--run measures a finished run as it is: --config-file and --opts do not apply")
        try:
            result = measure_difficulty(a.output, a.config_file, a.opts, a.bootstrap, a.fp_rate, run_dir=a.run)
        except (ConfigFileError, RunMismatch) as e:
            p.exit(2, f"phantom_difficulty.py: error: {e}\n")
        print(format_summary(result))
        print(f"written: {a.output}/difficulty.json")
