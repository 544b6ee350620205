#!/usr/bin/env python
"""Write a synthetic mammogram set (16-bit PNG, optional DICOM, annotations.json, patients.csv and
records.json), or a picture of the phantom (docs/phantom.md).

    python tools/make_synthetic.py --output datasets/synthetic/mine --positive 100 --negative 100 --seed 7
    python tools/make_synthetic.py --output datasets/synthetic/mine_ddsm --protocol ddsm --positive 90 --negative 110
    python tools/make_synthetic.py --contact-sheet docs/images/phantom.png

--protocol (recorded in OUTPUT/annotations.json): "screening" (the default) images 2 to 4 views per patient, a
look-alike in any breast at one rate, healthy women as negatives; "ddsm" (the paper's DDSM experiment) images one
breast per case, --positive malignant and --negative benign cases, every benign breast holding a look-alike.

OUTPUT/records.json holds the set's records (image paths relative to OUTPUT), so a config can name the set:
DATASETS.REGISTER_JSON: ["mine=datasets/synthetic/mine/records.json"].
"""
import argparse
import os

from mammo_tl.data.records import save_records
from mammo_tl.data.synthetic import PROTOCOLS, SyntheticSpec, contact_sheet, generate, load_synthetic

if __name__ == "__main__":
    d = SyntheticSpec()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", help="folder of the set")
    p.add_argument("--positive", type=int, default=d.num_positive_patients,
                   help="patients with cancer (ddsm: malignant cases)")
    p.add_argument("--negative", type=int, default=d.num_negative_patients,
                   help="patients without (screening: healthy women; ddsm: benign cases)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=d.protocol,
                   help="which breasts are imaged and hold look-alikes (docs/phantom.md, section 1)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--dicom", action="store_true", help="also write each image as DICOM (modality MG)")
    p.add_argument("--contact-sheet", metavar="PATH",
                   help="write a picture of the phantom (each density category, every lesion kind) to PATH")
    a = p.parse_args()
    if not (a.output or a.contact_sheet):
        p.error("give --output (a data set) and/or --contact-sheet (a picture)")
    spec = SyntheticSpec(num_positive_patients=a.positive, num_negative_patients=a.negative, seed=a.seed,
                         height=a.height, width=a.width, write_dicom=a.dicom, protocol=a.protocol)
    if a.output:
        paths = generate(a.output, spec)
        records = os.path.join(a.output, "records.json")
        save_records(load_synthetic(a.output), records)
        print(f"wrote {paths['annotations']}, {paths['patients']} and {records}")
    if a.contact_sheet:
        print(f"wrote {contact_sheet(a.contact_sheet, spec, seed=a.seed)}")
