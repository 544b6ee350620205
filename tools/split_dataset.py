#!/usr/bin/env python
"""Patient-disjoint splits as named records files.

    # the paper's DDSM protocol: 600 training (304 malignant, 296 benign) and 100 test (45, 55) images
    python tools/split_dataset.py paper-ddsm --records datasets/cbis_ddsm/prepared/records.json \
        --output datasets/cbis_ddsm/paper_split --seed 0
    # check that existing splits share no patient
    python tools/split_dataset.py check train.json test.json

Use in a config: DATASETS.REGISTER_JSON: ["cbis_ddsm_paper_train=.../train.json", "cbis_ddsm_paper_test=.../test.json"].
"""
import argparse
import os

from mammo_tl.data.datasets.common import check_patient_disjoint, load_records, save_records
from mammo_tl.data.splits import paper_ddsm_split


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("paper-ddsm")
    s.add_argument("--records", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--train", type=int, nargs=2, default=(304, 296), metavar=("MALIGNANT", "BENIGN"))
    s.add_argument("--test", type=int, nargs=2, default=(45, 55), metavar=("MALIGNANT", "BENIGN"))
    c = sub.add_parser("check")
    c.add_argument("files", nargs="+")
    a = p.parse_args()
    if a.cmd == "check":
        check_patient_disjoint({f: load_records(f) for f in a.files})
        print(f"no patient appears in more than one of {len(a.files)} splits")
        return
    records = [r for r in load_records(a.records) if r.get("abnormality_type", "mass") == "mass"]
    train, test = paper_ddsm_split(records, seed=a.seed, train=a.train, test=a.test)
    os.makedirs(a.output, exist_ok=True)
    for name, recs in (("train", train), ("test", test)):
        save_records(recs, os.path.join(a.output, f"{name}.json"))
        n_pos = sum(1 for r in recs if r["annotations"])
        print(f"{name}: {len(recs)} images ({n_pos} malignant, {len(recs) - n_pos} benign), "
              f"{len({r['patient_id'] for r in recs})} patients -> {os.path.join(a.output, name + '.json')}")


if __name__ == "__main__":
    main()
