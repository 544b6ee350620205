#!/usr/bin/env python
"""Several evaluated runs side by side (the paper's Table 1 layout), with ROC and FROC plots.

    python tools/report.py --run baseline=output/synthetic/a_positives_only \
                           --run tl+sim=output/synthetic/d_tl_similarity --output output/report
"""
import argparse

from mammo_tl.evaluation.report import make_report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                   help="an evaluated run's OUTPUT_DIR; the first is the baseline for differences")
    p.add_argument("--output", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args()
    runs = {}
    for item in args.run:
        if "=" not in item:
            p.error(f"--run expects NAME=DIR, got {item!r}")
        name, path = item.split("=", 1)
        runs[name] = path
    _, md = make_report(runs, args.output, bootstrap=args.bootstrap)
    print(md)


if __name__ == "__main__":
    main()
