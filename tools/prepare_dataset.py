#!/usr/bin/env python
"""Convert a public data set (or your CSV) to records, preprocess every image once and cache it.

    python tools/prepare_dataset.py cbis-ddsm --root CBIS-DDSM/ --csv mass_case_description_train_set.csv \\
        mass_case_description_test_set.csv --output datasets/cbis_ddsm --size 512 512 --workers 8
    python tools/prepare_dataset.py vindr --root vindr-mammo/ --output datasets/vindr
    python tools/prepare_dataset.py inbreast --root INbreast/ --output datasets/inbreast
    python tools/prepare_dataset.py csv --csv my_hospital.csv --output datasets/mine

Writes OUTPUT/records.json (the original full-resolution records), OUTPUT/coco.json,
OUTPUT/conversion_report.json, and under OUTPUT/prepared/: images/ (the cache: 16-bit PNGs, each with a
sidecar JSON naming the source file and options it was made from), records.json (boxes in the cached
pixels, each record with its transform back to the original DICOM pixels and the options it was prepared
with) and report.json, which counts every input as prepared, cached, rebuilt or skipped, with the reason,
and the cache files no record uses (--prune-stale deletes them).

Re-running reuses the cache: an image is prepared again only when its source file (path, size, mtime) or an
option (--size, --no-crop, --flip) changed, or its cache files are damaged. Use the records in a config:
DATASETS.REGISTER_JSON: ["cbis_train=OUTPUT/prepared/records.json"].

Large data sets over a job array: every task converts the data set and prepares its own share, by a hash of
each image's path (shards are numbered from 1 to N), into the same OUTPUT; then one merge writes
prepared/records.json and report.json exactly as a single run would:

    python tools/prepare_dataset.py vindr --root vindr-mammo/ --output datasets/vindr --shard $SLURM_ARRAY_TASK_ID/16
    python tools/prepare_dataset.py merge --output datasets/vindr      # after all 16 tasks (sbatch --array=1-16)

The merge refuses a missing shard, or one made with other options or from other converted records, naming
it, and a cache file a shard's records need that is gone or no longer made from its source as it is now (pruned,
or the source changed since): run that shard again. A stopped shard is resumed by running it again.

One writer per OUTPUT: a run (or merge) into an OUTPUT that another run or merge is writing, or while shards run
there, stops before any work, naming the holder (pid and host); the shards of one job array run side by side.
"""
import argparse
import json
import os
import sys

from detectron2.utils.logger import setup_logger

from mammo_tl.data.datasets import (SkipReport, export_coco, load_cbis_ddsm, load_csv_dataset, load_inbreast,
                                    load_vindr_mammo)
from mammo_tl.data.datasets.common import DatasetError, load_records, same_view_files, save_records
from mammo_tl.data.prepare import (PrepareError, PrepareLock, atomic_write, check_size, check_workers, merge_shards,
                                   parse_shard, prepare_dataset)
from mammo_tl.files import FolderLocked


def _parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True, metavar="{cbis-ddsm,vindr,inbreast,csv,merge}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True, help="folder for records.json, coco.json and prepared/")
    common.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    common.add_argument("--no-crop", action="store_true", help="keep the whole image (default: crop to the breast)")
    common.add_argument("--flip", action="store_true", help="mirror breasts to one canonical side")
    common.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    common.add_argument("--decode", choices=("reduced", "full"), default="reduced",
                        help="JPEG 2000 DICOMs: decode at the coarsest resolution level whose crop still covers\n"
                             "--size (default), or in full; other formats are always decoded in full")
    common.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    common.add_argument("--shard", metavar="I/N", help="prepare only shard I of N (1 <= I <= N), then run merge")
    common.add_argument("--prune-stale", action="store_true",
                        help="delete cache files no record uses (not with --shard)")
    for kind, help_text in (("cbis-ddsm", "CBIS-DDSM (TCIA)"), ("vindr", "VinDr-Mammo (PhysioNet)"),
                            ("inbreast", "INbreast"), ("csv", "your own CSV, one row per image")):
        s = sub.add_parser(kind, parents=[common], help=help_text)
        if kind != "csv":
            s.add_argument("--root", required=True, help="data set folder")
        if kind == "cbis-ddsm":
            s.add_argument("--csv", nargs="+", required=True, help="CBIS-DDSM case description CSVs")
        elif kind == "vindr":
            s.add_argument("--csv", help="finding_annotations.csv (default: the one in --root)")
            s.add_argument("--split", choices=["training", "test"], help="one official split only")
        elif kind == "csv":
            s.add_argument("--csv", required=True, help="patient_id,path,laterality,view,label[,boxes]")
    m = sub.add_parser("merge", help="combine the shards of a --shard run into prepared/records.json")
    m.add_argument("--output", required=True, help="the OUTPUT the shards were run with")
    m.add_argument("--shards", type=int, help="N, when shard files of several runs are present")
    m.add_argument("--prune-stale", action="store_true", help="delete cache files no record uses")
    return p


def _convert(a):
    report = SkipReport(a.kind, a.strict)
    if a.kind == "cbis-ddsm":
        records = load_cbis_ddsm(a.root, a.csv, report=report)
    elif a.kind == "vindr":
        records = load_vindr_mammo(a.root, a.csv, split=a.split, report=report)
    elif a.kind == "inbreast":
        records = load_inbreast(a.root, report=report)
    else:
        records = load_csv_dataset(a.csv, report=report)
    repeated = same_view_files(records)
    if repeated:  # kept, as each file may be its own acquisition (a retake), but never merged silently
        report.notes["patient/side/view shown by more than one file (kept as separate images)"] = len(repeated)
        (pid, side, view), files = next(iter(repeated.items()))
        print(f"prepare_dataset.py: warning: {len(repeated)} patient/side/view(s) are shown by more than one file, "
              f"e.g. {pid} {side} {view}: {', '.join(files[:3])}; kept as separate images (a retake?), counted in "
              f"conversion_report.json; remove the copies if one mammogram was stored twice", file=sys.stderr)
    # shards of a job array write these side by side: each file appears whole (same content from every shard)
    os.makedirs(a.output, exist_ok=True)
    save_records(records, os.path.join(a.output, "records.json"))
    coco = os.path.join(a.output, "coco.json")
    os.replace(export_coco(records, f"{coco}.{os.getpid()}.tmp"), coco)
    atomic_write(os.path.join(a.output, "conversion_report.json"),
                 json.dumps(report.to_dict(len(records)), indent=1).encode())
    return records, report


def main():
    p = _parser()
    a = p.parse_args()
    setup_logger(name="mammo_tl")
    try:
        shard = parse_shard(a.shard) if a.kind != "merge" and a.shard else None
        if a.kind != "merge":
            a.size, a.workers = check_size(a.size), check_workers(a.workers)
    except PrepareError as e:
        p.exit(2, f"prepare_dataset.py: error: {e}\n")
    if shard and a.prune_stale:
        p.error("--prune-stale needs every shard's records: give it to merge instead")
    command = f"prepare_dataset {a.kind}" + (f" --shard {shard[0]}/{shard[1]}" if shard else "")
    try:
        with PrepareLock(a.output, command, shard=shard):  # before any work: one writer per OUTPUT
            run(p, a, shard)
    except FolderLocked as e:
        p.exit(2, f"prepare_dataset.py: error: {e}\n")
    except (PrepareError, DatasetError) as e:
        p.exit(2, f"prepare_dataset.py: error: {e}\n")


def run(p, a, shard):
    prepared_dir = os.path.join(a.output, "prepared")
    if a.kind == "merge":
        records_json = os.path.join(a.output, "records.json")
        if not os.path.exists(records_json):
            p.error(f"{records_json} not found: merge combines shards run with --output {a.output}")
        records = load_records(records_json, check_files=False)
        _, prep = merge_shards(records, prepared_dir, num_shards=a.shards, prune_stale=a.prune_stale)
        print(f"merged: {prep['used']} of {prep['inputs']} images prepared ({prep['skipped']} skipped); see "
              f"{prepared_dir}/report.json")
        return
    records, report = _convert(a)
    _, prep = prepare_dataset(records, prepared_dir, size=a.size, crop=not a.no_crop, flip=a.flip,
                              workers=a.workers, shard=shard, prune_stale=a.prune_stale, decode=a.decode)
    part = f" (shard {shard[0]}/{shard[1]}: {prep['inputs']} of them)" if shard else ""
    print(f"{a.kind}: {len(records)} images converted ({len(report.skipped)} skipped){part}, {prep['used']} prepared "
          f"({prep['cached']} already cached, {prep['rebuilt']} rebuilt, {prep['skipped']} skipped); see "
          f"{a.output}/conversion_report.json and {prepared_dir}/"
          + (f"report.shard-{shard[0]}-of-{shard[1]}.json, then run merge" if shard else "report.json"))


if __name__ == "__main__":
    main()
