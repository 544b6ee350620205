#!/usr/bin/env python
"""The budget curve: configs trained for several lengths (each length over its own training seeds), evaluated on the
same test patients; a table (OUTPUT/budget_curve.csv, .md, .json) and a plot (OUTPUT/budget_curve.png) of AUC,
sensitivity and specificity at 0.5 and at the validation-chosen operating points, AP50 and FROC CPM against
iterations (mammo_tl/experiments/budget_curve.py). The pre-registered curve on the phantom's DDSM protocol
(docs/experiments.md):

    python tools/budget_curve.py --output output/ddsm/budget --budgets 600:0,1 1200:0,1 2400:0 \\
        --validation-set mammo_synth_ddsm_val \\
        --configs configs/synthetic_ddsm/a_positives_only.yaml configs/synthetic_ddsm/d_tl_similarity.yaml

Each length N trains into OUTPUT/iters_<N>/ as tools/demo.py --seeds does (SOLVER.MAX_ITER N, SOLVER.STEPS
(3N/4,)); rerunning reuses the finished runs and resumes an interrupted one. With --table-only the table and plot
are written from the runs already there.
"""
import argparse
import subprocess

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.data.datasets.common import DatasetError
from mammo_tl.experiments.budget_curve import BudgetError, parse_budgets, run_budget_curve, write_budget_curve
from mammo_tl.experiments.demo import DEMO_JOBS, VALIDATION_SET
from mammo_tl.experiments.rows import RunMismatch, config_name

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--configs", nargs="+", required=True, help="config files; the first is the baseline")
    p.add_argument("--budgets", nargs="+", required=True, metavar="ITERS:SEEDS",
                   help="training lengths and their seeds, e.g. 600:0,1 1200:0,1 2400:0")
    p.add_argument("--validation-set", default=VALIDATION_SET, help="registered set the operating points are chosen on")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=DEMO_JOBS,
                   help=f"trainings run at once, each with the CPU cores shared out (default {DEMO_JOBS})")
    p.add_argument("--table-only", action="store_true", help="only write the table and plot from the runs there")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    a = p.parse_args()
    if a.jobs < 1:
        p.error(f"--jobs {a.jobs}: at least 1")
    try:
        budgets = parse_budgets(a.budgets)
    except BudgetError as e:
        p.error(str(e))
    setup_logger(name="mammo_tl")
    try:
        if a.table_only:
            write_budget_curve(a.output, [config_name(c) for c in a.configs], budgets)
        else:
            run_budget_curve(a.output, a.configs, budgets, extra_opts=a.opts, bootstrap=a.bootstrap,
                             validation_set=a.validation_set, jobs=a.jobs)
    except (BudgetError, RunMismatch, ConfigFileError, DatasetError, ValueError) as e:
        p.exit(2, f"budget_curve.py: error: {e}\n")
    except subprocess.CalledProcessError as e:
        p.exit(1, f"budget_curve.py: error: a training exited with status {e.returncode} ({' '.join(e.cmd)}); its "
                  f"OUTPUT_DIR's log.txt{' and ' + e.output.split()[-1] if e.output else ''} say why; run the same "
                  "command again to resume\n")
    print(f"wrote {a.output}/budget_curve.csv, .md, .json and .png")
