#!/usr/bin/env python
"""Run every benchmark (what `make bench` does); JSON per benchmark under --output."""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", default="output/bench")
    a = p.parse_args()
    os.makedirs(a.output, exist_ok=True)
    steps = [
        ["train_step.py", "--memory", "--json", os.path.join(a.output, "train_step.json")],
        ["inference.py", "--json", os.path.join(a.output, "inference.json")],
        ["data_throughput.py", "--json", os.path.join(a.output, "data.json"),
         "--train-step-json", os.path.join(a.output, "train_step.json")],
    ]
    for args in steps:
        print(f"\n$ python bench/{' '.join(args)}", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, args[0]), *args[1:]], check=True)
