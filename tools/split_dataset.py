#!/usr/bin/env python
"""Patient-disjoint splits as named records files (a patient is positive when any of its images has a box).

    # the paper's DDSM protocol: 600 training (304 malignant, 296 benign) and 100 test (45, 55) images
    python tools/split_dataset.py paper-ddsm --records datasets/cbis_ddsm/prepared/records.json \
        --output datasets/cbis_ddsm/paper_split --seed 0
    # VinDr-Mammo's official split (each record's `split`: training / test)
    python tools/split_dataset.py official --records datasets/vindr/prepared/records.json \
        --output datasets/vindr/split
    # K folds stratified by patient label -> OUTPUT/fold<k>/{train,test}.json (tools/cross_validate.py)
    python tools/split_dataset.py kfold --records datasets/inbreast/prepared/records.json \
        --output datasets/inbreast/folds --folds 5 --seed 0
    # your own data: a stratified share of the patients for testing
    python tools/split_dataset.py random --records datasets/own_csv/prepared/records.json \
        --output datasets/own_csv/split --test-fraction 0.2 --seed 0
    # check that existing splits share no patient
    python tools/split_dataset.py check train.json test.json

Use in a config: DATASETS.REGISTER_JSON: ["mine_train=OUTPUT/train.json", "mine_test=OUTPUT/test.json"].

Patient ids that differ only in case or white space ("P001", "p001", "P001 ") are one patient: kept on one side
of every split, and checked as one; they are listed when found. kfold refuses an OUTPUT holding more folds than
asked for (fold<k>/ left by an earlier split into more folds), which tools/cross_validate.py would train.
An --output that already holds a split is refused unless --overwrite: runs trained on it, and one resumed later,
would silently get other patients.
"""
import argparse
import os
import re
import sys

from mammo_tl.data.datasets.common import DatasetError, check_patient_disjoint, load_records
from mammo_tl.data.splits import (check_split_output, describe, kfold_split, official_split, paper_ddsm_split,
                                  patient_id_variants, random_split, write_split)


def _print_split(out_dir, train, test, prefix=""):
    for path, recs in zip(write_split(out_dir, train, test), (train, test)):
        print(describe(prefix + os.path.splitext(os.path.basename(path))[0], recs) + f" -> {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("paper-ddsm", help="the paper's CBIS-DDSM mass split (image quotas)")
    s.add_argument("--train", type=int, nargs=2, default=(304, 296), metavar=("MALIGNANT", "BENIGN"))
    s.add_argument("--test", type=int, nargs=2, default=(45, 55), metavar=("MALIGNANT", "BENIGN"))
    o = sub.add_parser("official", help="each record's own split (VinDr-Mammo)")
    k = sub.add_parser("kfold", help="K patient-disjoint folds, stratified by patient label")
    k.add_argument("--folds", type=int, required=True)
    r = sub.add_parser("random", help="a stratified share of the patients for testing")
    r.add_argument("--test-fraction", type=float, required=True)
    for q in (s, o, k, r):
        q.add_argument("--records", required=True, help="records JSON (tools/prepare_dataset.py)")
        q.add_argument("--output", required=True, help="folder for the split's records files")
        q.add_argument("--overwrite", action="store_true",
                       help="replace the split already in --output (refused without it)")
    for q in (s, k, r):
        q.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("check", help="refuse splits that share a patient")
    c.add_argument("files", nargs="+")
    a = p.parse_args()
    try:
        run(a)
    except DatasetError as e:
        sys.exit(f"split_dataset.py {a.cmd}: {e}")


def _note_variants(records, source):
    variants = patient_id_variants(records)
    if variants:
        shown = "; ".join(" = ".join(repr(i) for i in ids) for ids in list(variants.values())[:10])
        print(f"{source}: {len(variants)} patient(s) have ids written in more than one way (case or spaces), each "
              f"kept as one patient: {shown}{' ...' if len(variants) > 10 else ''}")


def _check_stale_folds(output, folds):
    """Refuse an OUTPUT holding fold<k>/ for k >= folds: left by an earlier split into more folds, mixed with
    this split's they would be trained and pooled as one cross-validation."""
    stale = sorted((int(m.group(1)), n) for n in (os.listdir(output) if os.path.isdir(output) else [])
                   for m in [re.fullmatch(r"fold(\d+)", n)] if m and int(m.group(1)) >= folds)
    if stale:
        raise DatasetError(f"{output} holds {', '.join(n + '/' for _, n in stale)} from an earlier split into more "
                           f"than {folds} folds: remove {'it' if len(stale) == 1 else 'them'} or choose another "
                           f"--output (tools/cross_validate.py would train every fold<k>/ it finds)")


def run(a):
    if a.cmd == "check":
        same = {}
        for f in a.files:
            same.setdefault(os.path.realpath(f), []).append(f)
        repeated = [names for names in same.values() if len(names) > 1]
        if repeated:  # a file checked against itself shares every patient, yet would pass as one split
            raise DatasetError("one file given more than once: " + "; ".join(" = ".join(n) for n in repeated)
                               + "; name each split once")
        splits = {f: load_records(f, check_files=False) for f in a.files}
        _note_variants([r for recs in splits.values() for r in recs], "check")
        check_patient_disjoint(splits)
        for f, recs in splits.items():
            print(describe(f, recs))
        print(f"no patient appears in more than one of {len(a.files)} splits")
        return
    records = load_records(a.records, check_files=False)
    print(describe(a.records, records))
    _note_variants(records, a.records)
    if a.cmd == "kfold":
        _check_stale_folds(a.output, a.folds)
    check_split_output(a.output, a.folds if a.cmd == "kfold" else None, overwrite=a.overwrite)
    if a.cmd == "paper-ddsm":
        mass = [r for r in records if r.get("abnormality_type", "mass") == "mass"]
        if len(mass) < len(records):
            print(f"paper-ddsm: {len(records) - len(mass)} non-mass (calcification) images left out")
        _print_split(a.output, *paper_ddsm_split(mass, seed=a.seed, train=a.train, test=a.test))
    elif a.cmd == "official":
        _print_split(a.output, *official_split(records, source=a.records))
    elif a.cmd == "random":
        _print_split(a.output, *random_split(records, a.test_fraction, seed=a.seed))
    else:
        for i, (train, test) in enumerate(kfold_split(records, a.folds, seed=a.seed)):
            _print_split(os.path.join(a.output, f"fold{i}"), train, test, prefix=f"fold{i}/")


if __name__ == "__main__":
    main()
