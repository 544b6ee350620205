#!/usr/bin/env python
"""Train and evaluate every fold of a k-fold split, then evaluate all folds' test patients together.

    python tools/split_dataset.py kfold --records datasets/inbreast/prepared/records.json \
        --output datasets/inbreast/folds --folds 5 --seed 0
    python tools/cross_validate.py --config-file configs/inbreast/d_tl_similarity.yaml \
        --folds-dir datasets/inbreast/folds --output output/inbreast/d_tl_similarity [KEY VALUE ...]
    python tools/report.py --run tl+sim=output/inbreast/d_tl_similarity --output output/inbreast/report

Each fold trains as tools/train_net.py does, in its own process, with the config's DATASETS.TRAIN / TEST
replaced by fold<k>/train.json and test.json and OUTPUT_DIR OUTPUT/fold<k>; KEY VALUE overrides go to every
fold. Run the same command again after an interruption: finished folds are reused, an unfinished one resumes
(a fold folder trained with another config or other fold files is refused, naming the difference). The pooled
evaluation is written to OUTPUT/inference/<test set>_all_folds/ (patients.csv, patient_metrics.json, ROC,
FROC) and OUTPUT/inference/eval_results.json (AP50: the mean over folds; bbox_folds: each fold's).
"""
import argparse
import json
import os
import sys

from detectron2.utils.logger import setup_logger

from mammo_tl.config import ConfigFileError
from mammo_tl.experiments.cross_validation import CrossValidationError, cross_validate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--folds-dir", required=True, help="folder of fold0/, fold1/, ... (split_dataset.py kfold)")
    p.add_argument("--output", required=True, help="OUTPUT: fold<k>/ runs and the pooled inference/")
    p.add_argument("--num-gpus", type=int, default=1, help="per fold, passed to tools/train_net.py")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every fold: KEY VALUE ...")
    a = p.parse_args()
    setup_logger(name="mammo_tl")
    if a.num_gpus < 1:
        p.error("--num-gpus must be >= 1")
    try:
        results = cross_validate(a.config_file, a.folds_dir, a.output, a.opts,
                                 extra_args=["--num-gpus", str(a.num_gpus)])
    except (CrossValidationError, ConfigFileError) as e:
        sys.exit(f"cross_validate.py: {e}")
    for name, res in results.items():
        print(f"{name}: AP50 {res['bbox']['AP50']:.2f} (mean of folds: "
              + ", ".join(f"{k} {v['AP50']:.2f}" for k, v in res["bbox_folds"].items()) + ")")
        print(json.dumps({k: res["patient"][k] for k in ("auc", "sensitivity", "specificity", "accuracy",
                                                          "num_patients")}, default=float))
    print(f"wrote {os.path.join(a.output, 'inference')}")


if __name__ == "__main__":
    main()
