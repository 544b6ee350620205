#!/usr/bin/env python
"""Convert a public data set (or your CSV) to records, preprocess every image once and cache it.

    python tools/prepare_dataset.py cbis-ddsm --root CBIS-DDSM/ --csv mass_case_description_train_set.csv \
        mass_case_description_test_set.csv --output datasets/cbis_ddsm/prepared --size 512 512 --workers 8
    python tools/prepare_dataset.py vindr --root vindr-mammo/ --output datasets/vindr/prepared
    python tools/prepare_dataset.py inbreast --root INbreast/ --output datasets/inbreast/prepared
    python tools/prepare_dataset.py csv --csv my_hospital.csv --output datasets/mine/prepared

Writes OUTPUT/records.json (the original full-resolution records), OUTPUT/prepared/records.json (cached
16-bit PNGs, boxes in their pixels, each with its transform back to the original DICOM pixels),
OUTPUT/coco.json, and OUTPUT/conversion_report.json + OUTPUT/prepared/report.json in which every input is
counted as used or skipped, with the reason. Re-running skips finished images. Use the records in a config:
DATASETS.REGISTER_JSON: ["cbis_train=OUTPUT/prepared/records.json"].
"""
import argparse
import json
import os

from detectron2.utils.logger import setup_logger

from mammo_tl.data.datasets import (SkipReport, export_coco, load_cbis_ddsm, load_csv_dataset, load_inbreast,
                                    load_vindr_mammo)
from mammo_tl.data.datasets.common import save_records
from mammo_tl.data.prepare import prepare_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["cbis-ddsm", "vindr", "inbreast", "csv"])
    p.add_argument("--root", help="data set folder (cbis-ddsm, vindr, inbreast)")
    p.add_argument("--csv", nargs="+", default=[], help="CBIS-DDSM case CSVs, VinDr finding CSV, or your CSV")
    p.add_argument("--split", choices=["training", "test"], help="VinDr: one official split only")
    p.add_argument("--output", required=True)
    p.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    p.add_argument("--no-crop", action="store_true", help="keep the whole image (default: crop to the breast)")
    p.add_argument("--flip", action="store_true", help="mirror breasts to one canonical side")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    a = p.parse_args()
    setup_logger(name="mammo_tl")
    report = SkipReport(a.kind, a.strict)
    if a.kind == "cbis-ddsm":
        records = load_cbis_ddsm(a.root, a.csv, report=report)
    elif a.kind == "vindr":
        records = load_vindr_mammo(a.root, a.csv[0] if a.csv else None, split=a.split, report=report)
    elif a.kind == "inbreast":
        records = load_inbreast(a.root, report=report)
    else:
        if len(a.csv) != 1:
            p.error("csv needs exactly one --csv FILE")
        records = load_csv_dataset(a.csv[0], report=report)
    os.makedirs(a.output, exist_ok=True)
    save_records(records, os.path.join(a.output, "records.json"))
    export_coco(records, os.path.join(a.output, "coco.json"))
    with open(os.path.join(a.output, "conversion_report.json"), "w") as f:
        json.dump(report.to_dict(len(records)), f, indent=1)
    _, prep = prepare_dataset(records, os.path.join(a.output, "prepared"), size=a.size, crop=not a.no_crop,
                              flip=a.flip, workers=a.workers)
    print(f"{a.kind}: {len(records)} images converted ({len(report.skipped)} skipped), {prep['used']} prepared "
          f"({prep['cached']} already cached, {prep['skipped']} skipped); see {a.output}/conversion_report.json "
          f"and {a.output}/prepared/report.json")


if __name__ == "__main__":
    main()
