#!/usr/bin/env python
"""Train and evaluate several configs in sequence and compare them (the paper's Table 1 on your data).

    python tools/run_ablation.py --output output/paper --configs configs/paper/a_positives_only.yaml \\
        configs/paper/b_with_negatives.yaml configs/paper/c_top_likelihood.yaml configs/paper/d_tl_similarity.yaml
    python tools/run_ablation.py --output output/paper --num-gpus 8 --configs ... --opts SOLVER.IMS_PER_BATCH 16

Each config trains into OUTPUT/<config name> (tools/train_net.py); rerunning resumes an interrupted run and
reuses a finished one, but refuses a folder that holds a run of another config or of other records. Then
OUTPUT/report.md, report.html, results.json, roc.png and froc.png compare the runs, the first config as the
baseline, with a gallery of chosen test images under every run (OUTPUT/gallery/).

With --seeds S1 S2 ... every config is trained once per training seed (config SEED; the data sets are those the
configs name, the same for every seed) into OUTPUT/seed_<s>/<config name>, each seed's report is written to
OUTPUT/seed_<s>/ and the aggregate over seeds (mean and min-max per metric, paired differences against the first
config pooled over seeds with a bootstrap over patients, how many seeds agree on their sign) to OUTPUT/. The
paper's rows (a)-(d) in miniature on the built-in synthetic mammograms over three seeds (12 runs on a CPU):

    python tools/run_ablation.py --output output/ablation_synthetic --seeds 0 1 2 \\
        --configs configs/synthetic/a_positives_only.yaml configs/synthetic/b_with_negatives.yaml \\
        configs/synthetic/c_top_likelihood.yaml configs/synthetic/d_tl_similarity.yaml

(tools/demo.py with the same arguments also chooses each run's operating points on mammo_synth_val.)
"""
import argparse
import subprocess

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.data.datasets.common import DatasetError
from mammo_tl.experiments.rows import RunMismatch, check_rows, run_rows

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="config files; the first is the baseline")
    p.add_argument("--output", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="train every config once per training seed (config SEED) into OUTPUT/seed_<s>/ and\n"
                        "aggregate over seeds in OUTPUT/ (the data sets stay the same for every seed)")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per run (detectron2's launch)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--title", default="mammo_tl: ablation")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for every run")
    a = p.parse_args()
    if a.num_gpus < 1 or a.bootstrap < 0:
        p.error("--num-gpus must be >= 1 and --bootstrap >= 0")
    try:
        check_rows(a.configs, a.output, a.opts, a.seeds)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    setup_logger(name="mammo_tl")
    note = "The data sets are those the configs name, the same for every training seed." if a.seeds else None
    try:
        run_rows(a.configs, a.output, a.opts, a.bootstrap, title=a.title, num_gpus=a.num_gpus, tag="ablation",
                 seeds=a.seeds, note=note)
    except (RunMismatch, ConfigFileError, DatasetError) as e:
        p.exit(2, f"run_ablation.py: error: {e}\n")
    except subprocess.CalledProcessError as e:
        p.exit(1, f"run_ablation.py: error: a training exited with status {e.returncode} ({' '.join(e.cmd)}); "
                  "its OUTPUT_DIR's log.txt says why; run the same command again to resume\n")
