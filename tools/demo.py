#!/usr/bin/env python
"""The paper in miniature on built-in synthetic mammograms (what `make demo` runs).

    python tools/demo.py --output output/demo [--jobs 2] [--opts KEY VALUE ...]

Rows (a) baseline, (d) the method and (o) the ceiling (look-alikes boxed) of configs/synthetic_ddsm/ (the paper's
DDSM protocol, one positive image per step), two trainings at once (--jobs; each gets the CPU cores shared out),
checkpoints and operating points chosen on mammo_synth_ddsm_val, the test patients read once per run.

Over training seeds (config SEED; the synthetic data sets stay the same for every seed): each config is
trained once per seed into OUTPUT/seed_<s>/<config name>, each seed's report is written to OUTPUT/seed_<s>/,
and the aggregate over seeds (mean, min-max, pooled paired differences) to OUTPUT/report.md, .html, results.json:

    python tools/demo.py --output output/demo_seeds --seeds 0 1

The rows (a)-(d) of the earlier screening-protocol comparison (configs/synthetic/, docs/results.md) over three
seeds (12 runs, about 7 minutes each on a 2-core CPU, 3 on a GPU with --opts MODEL.DEVICE cuda):

    python tools/demo.py --output output/ablation_synthetic --seeds 0 1 2 --validation-set mammo_synth_val \\
        --configs configs/synthetic/a_positives_only.yaml configs/synthetic/b_with_negatives.yaml \\
        configs/synthetic/c_top_likelihood.yaml configs/synthetic/d_tl_similarity.yaml
"""
import argparse
import subprocess

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.data.datasets.common import DatasetError
from mammo_tl.experiments.demo import DEMO_CONFIGS, DEMO_JOBS, VALIDATION_SET, run_demo
from mammo_tl.experiments.rows import RunMismatch, check_rows

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--configs", nargs="+", default=list(DEMO_CONFIGS), help="config files; the first is the baseline")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="train every config once per training seed (config SEED), into OUTPUT/seed_<s>/, and\n"
                        "aggregate over seeds in OUTPUT/; the synthetic data sets are the same for every seed.\n"
                        "Without it: one run per config into OUTPUT/<config name>, SEED from the config")
    p.add_argument("--validation-set", default=VALIDATION_SET, help="registered set the operating points are chosen on")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=DEMO_JOBS,
                   help=f"trainings run at once, each with the CPU cores shared out (default {DEMO_JOBS}); 1 trains\n"
                        "the configs one after the other")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: at least 1")
    try:
        check_rows(args.configs, args.output, args.opts, args.seeds)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    setup_logger(name="mammo_tl")
    try:
        run_demo(args.output, args.configs, extra_opts=args.opts, bootstrap=args.bootstrap, seeds=args.seeds,
                 validation_set=args.validation_set, jobs=args.jobs)
    except (RunMismatch, ConfigFileError, DatasetError, ValueError) as e:
        p.exit(2, f"demo.py: error: {e}\n")
    except subprocess.CalledProcessError as e:
        p.exit(1, f"demo.py: error: a training exited with status {e.returncode} ({' '.join(e.cmd)}); its "
                  f"OUTPUT_DIR's log.txt{' and ' + e.output.split()[-1] if e.output else ''} say why; run the same "
                  "command again to resume\n")
