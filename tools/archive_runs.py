#!/usr/bin/env python
"""Keep finished runs without their weights, and put them back (mammo_tl/experiments/archive.py).

An experiment that takes longer than one machine is kept (part three of docs/experiments.md runs over several
sessions) keeps each finished run's small files, checked by SHA-256, and restores them where the command that
made them will reuse them:

    python tools/archive_runs.py archive output/ddsm/part3 docs/measurements/part3/runs
    python tools/archive_runs.py restore docs/measurements/part3/runs output/ddsm/part3

`archive` copies every finished run under SOURCE (a folder holding config.yaml, inference/eval_results.json and
its weights) to the same place under DEST, with archived.json: the SHA-256 of every file kept and of the weights
left out. Unfinished runs are listed and left. `restore` checks every archived run under DEST, then copies each to
the same place under OUTPUT; a folder there that holds another run is refused. Restored runs are finished runs to
tools/demo.py, tools/budget_curve.py and tools/run_ablation.py, which reuse them while their config and data are
the same, and to tools/report.py.
"""
import argparse

from mammo_tl.experiments.archive import ArchiveError, archive_runs, describe, restore_runs

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("archive", help="keep the finished runs under SOURCE in DEST, without their weights")
    a.add_argument("source")
    a.add_argument("dest")
    r = sub.add_parser("restore", help="put the archived runs under ARCHIVE back under OUTPUT")
    r.add_argument("archive")
    r.add_argument("output")
    args = p.parse_args()
    try:
        if args.command == "archive":
            result = archive_runs(args.source, args.dest)
        else:
            result = restore_runs(args.archive, args.output)
    except (ArchiveError, OSError) as e:
        p.exit(2, f"archive_runs.py: error: {e}\n")
    print(describe(result))
