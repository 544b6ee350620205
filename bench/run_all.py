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
        ["dicom_outputs.py", "--json", os.path.join(a.output, "dicom_outputs.json")],
    ]
    import torch

    if torch.cuda.is_available():  # the GPU rows: the paper's setting (ResNet-101, 512 x 512), fp32 and AMP
        paper = ["--config", "configs/paper/d_tl_similarity.yaml", "--device", "cuda"]
        steps += [["train_step.py", *paper, "--memory", "--json", os.path.join(a.output, "train_step_paper_gpu.json")],
                  ["train_step.py", *paper, "--amp", "--json", os.path.join(a.output, "train_step_paper_gpu_amp.json")],
                  ["inference.py", "--config", "configs/paper/d_tl_similarity.yaml", "--device", "cuda",
                   "--json", os.path.join(a.output, "inference_paper_gpu.json")]]
    else:
        print("no GPU: the GPU rows (paper setting on GPU, AMP) are not measured")
    for args in steps:
        print(f"\n$ python bench/{' '.join(args)}", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, args[0]), *args[1:]], check=True)
