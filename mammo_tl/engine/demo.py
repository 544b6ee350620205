"""`make demo`: the paper in miniature on the built-in synthetic mammograms (CPU).

Trains config (a) Faster R-CNN on positives only and config (d) top likelihood + similarity loss,
evaluates both on the same held-out patients, and writes results.json and a report.
"""
import logging
import os
import subprocess
import sys
import time

from detectron2.data import DatasetCatalog

from ..evaluation.report import make_report

logger = logging.getLogger(__name__)
DEMO_CONFIGS = ("configs/synthetic/a_positives_only.yaml", "configs/synthetic/d_tl_similarity.yaml")


def run_demo(output, configs=DEMO_CONFIGS, repo=".", extra_opts=(), bootstrap=1000):
    start = time.time()
    for name in ("mammo_synth_train", "mammo_synth_test"):
        n = len(DatasetCatalog.get(name))  # generates the set on first use, with a progress bar
        print(f"[demo] {name}: {n} images", flush=True)
    runs = {}
    for cfg in configs:
        name = os.path.splitext(os.path.basename(cfg))[0]
        out = os.path.join(output, name)
        runs[name] = out
        if os.path.exists(os.path.join(out, "inference", "eval_results.json")) and \
                os.path.exists(os.path.join(out, "model_final.pth")):
            print(f"[demo] {name}: already trained and evaluated in {out}, reusing it", flush=True)
            continue
        cmd = [sys.executable, os.path.join(repo, "tools", "train_net.py"), "--config-file", os.path.join(repo, cfg)]
        if os.path.exists(os.path.join(out, "last_checkpoint")):
            cmd.append("--resume")
        cmd += ["OUTPUT_DIR", out, "TEST.PATIENT.BOOTSTRAP", str(bootstrap), *extra_opts]
        print(f"[demo] training {name}: {' '.join(cmd)}", flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        print(f"[demo] {name}: trained and evaluated in {(time.time() - t) / 60:.1f} min", flush=True)
    results, md = make_report(runs, output, bootstrap=bootstrap, title="mammo_tl demo: synthetic mammograms")
    print("\n" + md)
    print(f"[demo] results: {os.path.join(output, 'results.json')}; report: {os.path.join(output, 'report.md')}"
          f" (and .html, roc.png, froc.png); total {(time.time() - start) / 60:.1f} min")
    return results
