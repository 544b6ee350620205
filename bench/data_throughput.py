#!/usr/bin/env python
"""Data throughput (images/s), single thread: full-size 16-bit mammogram DICOMs (RLE Lossless and JPEG 2000,
4672 x 2632 by default) split by stage: decode only (pydicom's dcmread + pixel_array), read_mammogram (the
float32 image), preprocess (crop to the breast + resize), and read + crop + resize end to end as
tools/prepare_dataset.py does it, with the ratio end to end / decode only; for JPEG 2000 also end to end
with the reduced-resolution decode (mammo_tl.data.resolution, oversample 1 and 2), its ratios to decode only
and to the full decode's end to end, and how far its model input lies from the full decode's; the peak memory
of read_mammogram per pixel; then loading the 512 x 512 cache, and the paired train loader with 0, 2 and 4
workers, set against the images/s one training step consumes (from --train-step-json, or measured here).

    python bench/data_throughput.py --json output/bench/data.json [--train-step-json output/bench/train_step.json]
    python bench/data_throughput.py --dicom-only        # the DICOM stages only

The test images compress like mammograms: a uniform background, a breast with smooth tissue texture and
a little quantum noise, a film label in a corner (noise images compress far worse than real ones).
"""
import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc

import cv2
import numpy as np
import pydicom
from _common import machine, mammogram_like, method_and_vanilla_cfgs, table, write_json
from detectron2.data import DatasetCatalog
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.data import MammogramDatasetMapper, build_paired_train_loader
from mammo_tl.data.datasets.common import register_records, save_records
from mammo_tl.data.dicom import read_mammogram
from mammo_tl.data.image_io import read_image, read_stored_image, to_model_input
from mammo_tl.data.prepare import prepare_dataset
from mammo_tl.data.preprocess import preprocess
from mammo_tl.data.resolution import ResolutionRequest
from mammo_tl.data.synthetic import SyntheticSpec, generate, load_synthetic, mammogram_dataset

SYNTAXES = {"RLE": RLELossless, "JPEG 2000": JPEG2000Lossless}


def full_size_dicoms(root, n, rows, cols):
    """n mammogram-like DICOMs per transfer syntax, 16 bits stored."""
    rng = np.random.default_rng(0)
    out = {name: [] for name in SYNTAXES}
    for i in range(n):
        img = mammogram_like(rng, rows, cols, right=bool(i % 2))
        for name, syntax in SYNTAXES.items():
            ds = mammogram_dataset(f"full_{i}", img, f"B{i}", "RL"[i % 2], "CC")
            ds.compress(syntax)
            p = os.path.join(root, f"full_{i}_{name.replace(' ', '')}.dcm")
            ds.save_as(p, enforce_file_format=True)
            out[name].append(p)
    return out


def rate(fn, items, repeat=1):
    t = time.perf_counter()
    for _ in range(repeat):
        for x in items:
            fn(x)
    return len(items) * repeat / (time.perf_counter() - t)


def reduced_prepare(f, size, oversample):
    """read + crop + resize with the reduced-resolution decode (JPEG 2000; other files are decoded in full)."""
    stored = read_stored_image(f, keep_integers=True, resolution=ResolutionRequest(size, True, oversample))
    return preprocess(stored.pixels, size=size, crop=True, geometry=stored.meta["decode_geometry"])


REDUCED = {1: "read + crop + resize, reduced decode (oversample 1, the default)",
           2: "read + crop + resize, reduced decode (oversample 2)"}


def stage_times(files, size, repeat, reduced=False):
    """Median ms per image of each stage as (CPU time of this process, wall time). Every stage is single
    threaded, so CPU time equals wall time on an idle machine and stays put when other jobs share the
    cores; the stages alternate image by image so drifts hit all alike. ``reduced``: add the end to end
    stages with the reduced-resolution decode."""
    images = {f: read_mammogram(f)[0] for f in files}
    stages = {
        "decode only (dcmread + pixel_array)": lambda f: pydicom.dcmread(f).pixel_array,
        "read_mammogram (float32 image)": read_mammogram,
        "preprocess (crop + resize the float32 image)": lambda f: preprocess(images[f], size=size, crop=True),
        "read + crop + resize, end to end": lambda f: preprocess(read_image(f, keep_integers=True), size=size,
                                                                 crop=True),
    }
    if reduced:
        for k, name in REDUCED.items():
            stages[name] = lambda f, k=k: reduced_prepare(f, size, k)
    for fn in stages.values():  # warm-up: imports (Pillow's decoder), allocator
        fn(files[0])
    cpu, wall = {k: [] for k in stages}, {k: [] for k in stages}
    for _ in range(repeat):
        for f in files:
            for k, fn in stages.items():
                c, t = time.process_time(), time.perf_counter()
                fn(f)
                cpu[k].append(time.process_time() - c)
                wall[k].append(time.perf_counter() - t)
    return ({k: 1000 * statistics.median(v) for k, v in cpu.items()},
            {k: 1000 * statistics.median(v) for k, v in wall.items()})


def reduced_accuracy(files, size):
    """How far the reduced decode's model input (windowed to 0..255 as the mapper does) lies from the full
    decode's, per oversampling: mean, 99th percentile and max of the absolute difference over all images,
    the decode scales used, and the largest difference between the two crops (stored pixels)."""
    out = {}
    for k in REDUCED:
        diffs, scales, crops = [], [], []
        for f in files:
            full, t_full = preprocess(read_image(f, keep_integers=True), size=size, crop=True)
            stored = read_stored_image(f, keep_integers=True, resolution=ResolutionRequest(size, True, k))
            geometry = stored.meta["decode_geometry"]
            red, t_red = preprocess(stored.pixels, size=size, crop=True, geometry=geometry)
            diffs.append(np.abs(to_model_input(full)[..., 0] - to_model_input(red)[..., 0]).ravel())
            scales.append(geometry.scale if geometry is not None else 1)
            crops.append(float(np.abs(np.subtract(t_full.crop, t_red.crop)).max()))
        d = np.concatenate(diffs)
        out[k] = {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max()),
                  "scales": scales, "max_crop_difference_px": max(crops)}
    return out


def peak_bytes_per_pixel(fn, f):
    fn(f)
    tracemalloc.start()
    fn(f)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    return peak / (int(ds.Rows) * int(ds.Columns))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/synthetic/d_tl_similarity.yaml")
    p.add_argument("--num-dicoms", type=int, default=3)
    p.add_argument("--dicom-size", type=int, nargs=2, default=(4672, 2632), metavar=("ROWS", "COLS"))
    p.add_argument("--repeat", type=int, default=3, help="passes over the DICOMs per stage")
    p.add_argument("--size", type=int, default=512, help="the prepared (and training) image size")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--dicom-only", action="store_true", help="only the DICOM stages (no cache, loader, step)")
    p.add_argument("--train-step-json", help="bench/train_step.py output: its method ms/step sets the demand")
    p.add_argument("--json")
    a = p.parse_args()
    cv2.setNumThreads(1)  # one core per image, as each worker of tools/prepare_dataset.py uses
    tmp = tempfile.mkdtemp(prefix="mammo_tl_data_bench_")
    rows, out = [], {"machine": machine(), "dicom_size": list(a.dicom_size)}

    h, w = a.dicom_size
    dicoms = full_size_dicoms(tmp, a.num_dicoms, h, w)
    split = []
    accuracy = {}
    for syntax, files in dicoms.items():
        reduced = syntax == "JPEG 2000"
        ms, wall = stage_times(files, (a.size, a.size), a.repeat, reduced=reduced)
        stages = list(ms)
        ratio = ms[stages[0]] / ms[stages[3]]
        mb = np.mean([os.path.getsize(f) for f in files]) / 1e6
        out[f"dicom_{syntax}"] = {"cpu_ms_per_image": ms, "wall_ms_per_image": wall,
                                  "end_to_end_over_decode_only": ratio, "file_mb": mb,
                                  "read_mammogram_peak_bytes_per_pixel": peak_bytes_per_pixel(read_mammogram, files[0]),
                                  "end_to_end_read_peak_bytes_per_pixel": peak_bytes_per_pixel(
                                      lambda f: read_image(f, keep_integers=True), files[0])}
        split.extend([f"{syntax} ({mb:.1f} MB)", k, f"{ms[k]:.1f}", f"{1000 / ms[k]:.1f}", f"{wall[k]:.1f}"]
                     for k in stages)
        split.append([f"{syntax}", "end to end / decode only (images/s ratio)", "", f"{ratio:.2f}",
                      f"{wall[stages[0]] / wall[stages[3]]:.2f}"])
        if reduced:
            for k, name in REDUCED.items():
                out[f"dicom_{syntax}"][f"reduced_{k}_over_decode_only"] = ms[stages[0]] / ms[name]
                out[f"dicom_{syntax}"][f"reduced_{k}_over_full_end_to_end"] = ms[stages[3]] / ms[name]
                split.append([f"{syntax}", f"reduced (oversample {k}) / decode only (images/s ratio)", "",
                              f"{ms[stages[0]] / ms[name]:.2f}", f"{wall[stages[0]] / wall[name]:.2f}"])
                split.append([f"{syntax}", f"reduced (oversample {k}) / full end to end (images/s ratio)", "",
                              f"{ms[stages[3]] / ms[name]:.2f}", f"{wall[stages[3]] / wall[name]:.2f}"])
            accuracy = reduced_accuracy(files, (a.size, a.size))
            out[f"dicom_{syntax}"]["reduced_against_full_model_input"] = {str(k): v for k, v in accuracy.items()}
        rows.append([f"full-size 16-bit DICOM ({syntax}, {h}x{w}) -> read + crop + resize {a.size}",
                     f"{1000 / ms[stages[3]]:.2f}"])
    print(f"DICOM stages, {h} x {w}, single thread, median of {a.repeat} x {a.num_dicoms} images "
          f"(CPU time; wall time in the last column):")
    print(table(["syntax", "stage", "ms/image", "images/s", "wall ms/image"], split))
    for syntax in dicoms:
        d = out[f"dicom_{syntax}"]
        print(f"{syntax}: peak memory read_mammogram {d['read_mammogram_peak_bytes_per_pixel']:.1f} bytes/pixel, "
              f"end-to-end read {d['end_to_end_read_peak_bytes_per_pixel']:.1f} bytes/pixel (tracemalloc)")
    for k, v in accuracy.items():
        print(f"JPEG 2000 reduced decode (oversample {k}, scales {v['scales']}) against the full decode, model input "
              f"0..255: mean {v['mean']:.2f}, 99th percentile {v['p99']:.2f}, max {v['max']:.1f}; crops differ by at "
              f"most {v['max_crop_difference_px']:.1f} stored pixels")
    if a.dicom_only:
        write_json(a.json, out)
        return

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
