#!/usr/bin/env python
"""Data throughput (images/s): reading + preprocessing full-size 16-bit DICOMs (about 3000 x 4500,
uncompressed and RLE), loading the 512 x 512 cache, and the paired train loader with 0, 2 and 4 workers,
set against the images/s one training step consumes (from --train-step-json, or measured here).

    python bench/data_throughput.py --json output/bench/data.json [--train-step-json output/bench/train_step.json]
"""
import argparse
import json
import os
import tempfile
import time

import cv2
import numpy as np
from _common import machine, method_and_vanilla_cfgs, table, write_json
from detectron2.data import DatasetCatalog
from pydicom.uid import RLELossless

from mammo_tl.data import MammogramDatasetMapper, build_paired_train_loader
from mammo_tl.data.datasets.common import register_records, save_records
from mammo_tl.data.dicom import read_mammogram
from mammo_tl.data.prepare import prepare_dataset
from mammo_tl.data.preprocess import preprocess
from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic, render_image


def full_size_dicoms(root, n, rows=4500, cols=3000):
    """n full-field-sized mammograms (a synthetic phantom upscaled + noise) per transfer syntax."""
    from pydicom import dcmread

    from mammo_tl.data.synthetic import write_dicom

    rng = np.random.default_rng(0)
    spec = SyntheticSpec(height=rows // 5, width=cols // 5)
    out = {"uncompressed": [], "RLE": []}
    for i in range(n):
        small, _, _ = render_image(rng, spec, "L", "CC", 1, 1)
        big = cv2.resize(small, (cols, rows), interpolation=cv2.INTER_LINEAR).astype(np.int32)
        big = np.clip(big + rng.integers(-200, 200, big.shape), 0, 65535).astype(np.uint16) & 0x0FFF  # 12-bit
        p = os.path.join(root, f"full_{i}.dcm")
        write_dicom(p, big, f"B{i}", "L", "CC")
        out["uncompressed"].append(p)
        ds = dcmread(p)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.compress(RLELossless)
        q = os.path.join(root, f"full_{i}_rle.dcm")
        ds.save_as(q)
        out["RLE"].append(q)
    return out


def rate(fn, items, repeat=1):
    t = time.perf_counter()
    for _ in range(repeat):
        for x in items:
            fn(x)
    return len(items) * repeat / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/synthetic/d_tl_similarity.yaml")
    p.add_argument("--num-dicoms", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--train-step-json", help="bench/train_step.py output: its method ms/step sets the demand")
    p.add_argument("--json")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="mammo_tl_data_bench_")
    rows, out = [], {"machine": machine()}

    dicoms = full_size_dicoms(tmp, a.num_dicoms)
    for syntax, files in dicoms.items():
        r = rate(lambda f: preprocess(read_mammogram(f)[0], size=(a.size, a.size), crop=True), files)
        out[f"dicom_{syntax}_read_preprocess"] = r
        rows.append([f"full-size DICOM ({syntax}, 4500x3000) -> read + crop + resize {a.size}", f"{r:.2f}"])

    cfg, _ = method_and_vanilla_cfgs(a.config, ["INPUT.FIXED_SIZE", f"({a.size}, {a.size})",
                                                "SOLVER.IMS_PER_BATCH", "2"])
    syn = os.path.join(tmp, "synthetic")
    generate(syn, SyntheticSpec(num_positive_patients=6, num_negative_patients=6, seed=5, height=640, width=512),
             progress=False)
    records = load_synthetic(syn)
    prepared, _ = prepare_dataset(records, os.path.join(tmp, "cache"), size=(a.size, a.size), crop=True,
                                  workers=1, progress=False)
    mapper = MammogramDatasetMapper(cfg, is_train=True)
    r = rate(mapper, prepared, repeat=3)
    out["cache_load_map"] = r
    rows.append([f"cache ({a.size}x{a.size} 16-bit PNG) -> mapped training input", f"{r:.1f}"])

    path = os.path.join(tmp, "cache", "bench_records.json")
    save_records(prepared, path)
    name = "mammo_tl_bench_cache"
    if name not in DatasetCatalog:
        from mammo_tl.data.datasets.common import load_records

        register_records(name, lambda: load_records(path))
    for workers in (0, 2, 4):
        c = cfg.clone()
        c.DATASETS.TRAIN = (name,)
        c.DATALOADER.NUM_WORKERS = workers
        it = iter(build_paired_train_loader(c))
        for _ in range(3):
            next(it)
        t = time.perf_counter()
        n = 0
        for _ in range(a.batches):
            n += len(next(it))
        r = n / (time.perf_counter() - t)
        out[f"paired_loader_{workers}_workers"] = r
        rows.append([f"paired train loader, {workers} workers", f"{r:.1f}"])
        del it

    if a.train_step_json and os.path.exists(a.train_step_json):
        ms = json.load(open(a.train_step_json))["method"]["median_ms"]
        src = f"bench/train_step.py ({a.train_step_json})"
    else:
        from train_step import build, step
        from _common import fixed_pair
        from detectron2.utils.events import EventStorage

        model, opt = build(cfg, "cpu")
        batch = fixed_pair(cfg)
        with EventStorage():
            step(model, opt, batch, "cpu")
            ms = 1000 * np.median([step(model, opt, batch, "cpu") for _ in range(5)])
        src = "measured here, 5 steps"
    demand = 2 / (ms / 1000.0)
    out["training_step_images_per_s"] = demand
    rows.append([f"training step consumes (2 images / {ms:.0f} ms, {src})", f"{demand:.1f}"])
    print(f"data throughput, {machine()['cpu_count']} CPU cores")
    print(table(["stage", "images/s"], rows))
    for w in (0, 2, 4):
        verdict = "keeps up" if out[f"paired_loader_{w}_workers"] >= demand else "does NOT keep up"
        print(f"paired loader with {w} workers {verdict} with the training step")
    write_json(a.json, out)


if __name__ == "__main__":
    main()
