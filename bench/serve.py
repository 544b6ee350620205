#!/usr/bin/env python
"""The DICOM node against tools/predict.py on the same files, in one run: studies per minute, and seconds from
a study's last instance sent to its last result stored in the PACS.

    python bench/serve.py --config-file CFG --studies 20 --images-per-study 4 --json output/bench/serve.json \\
        MODEL.WEIGHTS W

Makes --studies synthetic studies of --images-per-study 16-bit DICOM images (--size ROWS COLS), starts Orthanc
(the PACS, on free loopback ports, with its own storage folder) and tools/serve.py (--study-timeout S) sending
its results there, then sends every study with DCMTK's storescu, one after the other, and polls Orthanc's REST
API until each study has a presentation state per image and its report. Node: studies / (last result stored -
first instance sent); latency per study: its results complete - its storescu done (which includes
--study-timeout). Predict: tools/predict.py --dicom-out on the same files (its default --workers, model
loading included), in this process. The ratio is the node's studies per minute over predict's (issue 19's
goal: at least 0.9). Needs Orthanc (/usr/sbin/Orthanc) and DCMTK (storescu).
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from _common import REPO, machine, table, write_json

from mammo_tl.data.synthetic import mammogram_dataset
from tests.pacs import Orthanc, free_port, require, wait_for


def _studies(folder, n, per_study, size, seed=0):
    """{StudyInstanceUID: [files]}: bright half-ellipse breasts with a brighter blob, one patient per study."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((xx - cols + 1) / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.42 * rows)) ** 2 <= 1
    out = {}
    for s in range(n):
        study, series = generate_uid(), generate_uid()
        files = []
        for i in range(per_study):
            image = np.where(breast, 3000, 200).astype(np.uint16)
            y, x = int(rng.integers(rows // 3, rows // 2)), int(rng.integers(cols // 2, cols - cols // 8))
            image[y:y + rows // 12, x:x + cols // 12] = 6000
            path = os.path.join(folder, f"s{s:03d}_{i}.dcm")
            ds = mammogram_dataset(path, image, f"P_{s:05d}", "LR"[i % 2], ("CC", "MLO")[i // 2 % 2])
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out[study] = files
    return out


def _random_checkpoint(config_file, opts, device, root):
    """(config file, opts) for the model of ``config_file`` built from random weights (seed 0) and saved in
    ``root``, as a trained run's config.yaml and checkpoint are."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from mammo_tl.config import get_mammo_tl_cfg

    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([*opts, "MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=root).save("model_random")
    weights = os.path.join(root, "model_random.pth")
    cfg.MODEL.WEIGHTS = weights
    path = os.path.join(root, "config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path, [*opts, "MODEL.WEIGHTS", weights]


def _complete(pacs, study, expected):
    """Whether Orthanc holds ``expected`` instances of ``study`` (the node's results: the sources are not sent)."""
    request = urllib.request.Request(f"{pacs.url}/tools/lookup", data=study.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        found = [x for x in json.loads(r.read()) if x.get("Type") == "Study"]
    return bool(found) and len(pacs.get(f"/studies/{found[0]['ID']}/instances")) >= expected


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--images-per-study", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=(1024, 832), metavar=("ROWS", "COLS"))
    p.add_argument("--study-timeout", type=float, default=1.0)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--random-init", action="store_true",
                   help="no trained weights: build the config's model from random weights (seed 0) and save it as\n"
                        "the checkpoint both sides load (the throughput does not depend on what the model learned)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (MODEL.WEIGHTS)")
    a = p.parse_args()
    if a.random_init and "MODEL.WEIGHTS" in a.opts[0::2]:
        p.error("--random-init builds the weights: give it without MODEL.WEIGHTS")
    storescu = require("storescu")
    root = tempfile.mkdtemp(prefix="mammo_tl_bench_serve_")
    if a.random_init:
        a.config_file, a.opts = _random_checkpoint(a.config_file, a.opts, a.device, root)
    os.makedirs(os.path.join(root, "src"))
    studies = _studies(os.path.join(root, "src"), a.studies, a.images_per_study, a.size)
    files = [f for fs in studies.values() for f in fs]
    pacs = Orthanc(os.path.join(root, "orthanc")).start()
    port = free_port()
    node_log = open(os.path.join(root, "node.log"), "wb")
    node = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "serve.py"), "--config-file",
                             a.config_file, "--spool", os.path.join(root, "spool"), "--port", str(port), "--host",
                             "127.0.0.1", "--allow", "BENCH", "--send-to", pacs.address, "--study-timeout",
                             str(a.study_timeout), "--device", a.device, *a.opts], stdout=node_log,
                            stderr=subprocess.STDOUT, cwd=REPO)
    echo = [require("echoscu"), "-aet", "BENCH", "-aec", "MAMMO_TL", "127.0.0.1", str(port)]
    try:
        wait_for(lambda: node.poll() is not None or subprocess.run(echo, capture_output=True,
                                                                    check=False).returncode == 0, 300,
                 "the node to answer")
        if node.poll() is not None:
            sys.exit(f"bench/serve.py: the node stopped; see {root}/node.log")
        sent, done = {}, {}
        first = time.perf_counter()
        for study, fs in studies.items():
            subprocess.run([storescu, "-aet", "BENCH", "-aec", "MAMMO_TL", "127.0.0.1", str(port), *fs], check=True,
                           capture_output=True)
            sent[study] = time.perf_counter()
        while len(done) < len(studies):
            for study, fs in studies.items():
                if study not in done and _complete(pacs, study, len(fs) + 1):
                    done[study] = time.perf_counter()
            if node.poll() is not None:
                sys.exit(f"bench/serve.py: the node stopped; see {root}/node.log")
            time.sleep(0.05)
        node_seconds = max(done.values()) - first
        latencies = [done[s] - sent[s] for s in studies]
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(120)
        node_log.close()
        pacs.stop(kill=True)

    from mammo_tl.inference.command import run_predict

    start = time.perf_counter()
    run_predict(a.config_file, files, os.path.join(root, "predict"), list(a.opts) + ["MODEL.DEVICE", a.device],
                dicom_out=os.path.join(root, "predict", "dicom"))
    predict_seconds = time.perf_counter() - start
    node_rate, predict_rate = 60 * len(studies) / node_seconds, 60 * len(studies) / predict_seconds
    result = {"studies": len(studies), "images_per_study": a.images_per_study, "size": list(a.size),
              "study_timeout": a.study_timeout, "device": a.device, "node_seconds": node_seconds,
              "node_studies_per_minute": node_rate, "latency_median_s": statistics.median(latencies),
              "latency_max_s": max(latencies), "predict_seconds": predict_seconds,
              "predict_studies_per_minute": predict_rate, "ratio": node_rate / predict_rate, "machine": machine()}
    print(table(["", "studies/min", "seconds", "latency median (s)", "latency max (s)"],
                [["tools/serve.py", f"{node_rate:.1f}", f"{node_seconds:.1f}", f"{result['latency_median_s']:.2f}",
                  f"{result['latency_max_s']:.2f}"],
                 ["tools/predict.py", f"{predict_rate:.1f}", f"{predict_seconds:.1f}", "", ""]]))
    print(f"node / predict throughput: {result['ratio']:.2f} ({len(studies)} studies of {a.images_per_study} "
          f"{a.size[0]} x {a.size[1]} images, --study-timeout {a.study_timeout:g}, {a.device})")
    if a.json:
        write_json(a.json, result)


if __name__ == "__main__":
    main()
