#!/usr/bin/env python
"""Several evaluated runs side by side (the paper's Table 1 layout), with ROC and FROC plots and a gallery of
chosen test images under every run; or runs of several configurations over training seeds, aggregated.

    python tools/report.py --run baseline=output/synthetic/a_positives_only \\
                           --run tl+sim=output/synthetic/d_tl_similarity --output output/report

Over seeds: one --aggregate per configuration, NAME=its run folders separated by commas, in the same seed order
for every configuration (the first configuration is the baseline). The runs of one configuration must share
their config.yaml apart from SEED and OUTPUT_DIR, and every run the test patients:

    D=output/demo_seeds  # made by: python tools/demo.py --output output/demo_seeds --seeds 0 1 2
    python tools/report.py --output output/report_seeds \\
        --aggregate a=$D/seed_0/a_positives_only,$D/seed_1/a_positives_only,$D/seed_2/a_positives_only \\
        --aggregate d=$D/seed_0/d_tl_similarity,$D/seed_1/d_tl_similarity,$D/seed_2/d_tl_similarity

Validation learning curves only (runs trained with DATASETS.VALIDATION, finished or still training), one --curves
per configuration as for --aggregate: OUTPUT/learning_curves.png and learning_curves.json (every run's curve).
"""
import argparse
import sys

from mammo_tl.evaluation.aggregate import AggregateError, write_aggregate_report
from mammo_tl.evaluation.report import learning_curves_png, make_report
from mammo_tl.evaluation.runs import load_validation_curve


def _pairs(p, items, flag):
    out = {}
    for item in items:
        if "=" not in item:
            p.error(f"{flag} expects NAME=DIR, got {item!r}")
        name, path = item.split("=", 1)
        if not name or not path or name in out:
            p.error(f"{flag} {item!r}: give every run a distinct non-empty NAME and a folder")
        out[name] = path
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", action="append", metavar="NAME=DIR",
                   help="an evaluated run's OUTPUT_DIR; the first is the baseline for differences")
    g.add_argument("--aggregate", action="append", metavar="NAME=DIR,DIR,...",
                   help="one configuration's evaluated runs, one per training seed; the first configuration is\n"
                        "the baseline for the differences pooled over seeds")
    g.add_argument("--curves", action="append", metavar="NAME=DIR,DIR,...",
                   help="one configuration's runs (finished or still training): their validation learning curves")
    p.add_argument("--output", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--gallery", type=int, default=3, metavar="K",
                   help="gallery: the baseline's K highest-scoring healthy and the last run's K lowest-scoring\n"
                        "cancer patients (0: none)")
    p.add_argument("--title", default=None)
    args = p.parse_args()
    if args.bootstrap < 0 or args.gallery < 0:
        p.error("--bootstrap and --gallery must be >= 0")
    if args.curves:
        import json
        import os

        configs = {name: [d for d in dirs.split(",") if d] for name, dirs in _pairs(p, args.curves, "--curves").items()}
        os.makedirs(args.output, exist_ok=True)
        if not learning_curves_png(configs, os.path.join(args.output, "learning_curves.png")):
            print("error: none of these runs has a validation_curve.json (trained without DATASETS.VALIDATION, or "
                  "before its first evaluation)", file=sys.stderr)
            sys.exit(2)
        with open(os.path.join(args.output, "learning_curves.json"), "w") as f:
            json.dump({n: {d: load_validation_curve(d) for d in dirs} for n, dirs in configs.items()}, f, indent=1)
        print(f"wrote {args.output}/learning_curves.png and learning_curves.json")
        return
    if args.run:
        _, md = make_report(_pairs(p, args.run, "--run"), args.output, bootstrap=args.bootstrap,
                            title=args.title or "mammo_tl results", gallery=args.gallery)
    else:
        configs = {name: [d for d in dirs.split(",") if d] for name, dirs in _pairs(p, args.aggregate,
                                                                                     "--aggregate").items()}
        try:
            _, md = write_aggregate_report(configs, args.output, bootstrap=args.bootstrap, gallery=args.gallery,
                                           title=args.title or "mammo_tl: over training seeds")
        except (AggregateError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    print(md)


if __name__ == "__main__":
    main()
