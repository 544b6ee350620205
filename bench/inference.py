#!/usr/bin/env python
"""Inference at the speed of the model: tools/predict.py's end-to-end path (full-size RLE DICOMs decoded and
prepared in DataLoader workers while the model runs) against the model alone on inputs already decoded and
prepared in memory; same process, same model, same images, alternating which goes first.

    python bench/inference.py --json output/bench/inference.json
    python bench/inference.py --device cuda [--amp] --workers 8 --batch-size 4
    python bench/inference.py --syntax jpeg2000 --images 4 --repeats 2 --json output/bench/inference_j2k.json

The images (4672 x 2632, 16 bits, RLE Lossless by default, JPEG 2000 Lossless with --syntax jpeg2000) compress
like mammograms: constant background over
about half the field, a breast with smooth texture and a little noise (bench/data_throughput.py's
mammogram_like). The model has random weights (its timing does not depend on them); it is the paper's
ResNet-101-FPN at 512 x 512 unless --config says otherwise. Prints images/s of both, their ratio (goal >= 0.9)
per repeat and the spread over repeats, and the load average, since other work on the machine distorts both.
Also the decoding and preparation of one image in one process, and for JPEG 2000 the same with the
reduced-resolution decode (mammo_tl.data.resolution at INPUT.FIXED_SIZE: read, crop, area-resize, window).
"""
import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from _common import machine, mammogram_like, table, write_json
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.config import get_mammo_tl_cfg
from mammo_tl.data.image_io import read_stored_image_identified
from mammo_tl.data.preprocess import preprocess
from mammo_tl.data.resolution import ResolutionRequest
from mammo_tl.inference.command import default_workers, predict_files, prepared_inputs
from mammo_tl.data.inputs import describe
from mammo_tl.inference.predictor import MammoPredictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SYNTAXES = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless}


def _mammogram_file(path, i, rows, cols, syntax="rle"):
    from mammo_tl.data.synthetic import mammogram_dataset

    if not os.path.exists(path):
        img = mammogram_like(np.random.default_rng(i), rows, cols, right=bool(i % 2))
        ds = mammogram_dataset(path, img, f"B{i // 4}", "LR"[i % 2], ("CC", "MLO")[i // 2 % 2])
        ds.compress(SYNTAXES[syntax])
        ds.save_as(path + ".part", enforce_file_format=True)
        os.replace(path + ".part", path)
    return path


def rle_mammograms(folder, n, rows, cols, syntax="rle"):
    """n mammogram-like DICOMs (RLE Lossless, or ``syntax`` "jpeg2000") in ``folder`` (image i from seed i; made
    in parallel processes, once: files already there are reused)."""
    os.makedirs(folder, exist_ok=True)
    jobs = [(os.path.join(folder, f"mammo_{rows}x{cols}_{syntax}_{i:03d}.dcm"), i, rows, cols, syntax)
            for i in range(n)]
    with multiprocessing.get_context("fork").Pool(min(n, os.cpu_count() or 1)) as pool:
        return pool.starmap(_mammogram_file, jobs)


def reduced_prepare_ms(predictor, files):
    """ms per image, one process: the reduced-resolution read (JPEG 2000) with its identity, crop and area-resize
    to INPUT.FIXED_SIZE on the integer pixels, then the mapper's windowing, as predict's workers do it with the
    reduced decode."""
    cfg = predictor.cfg
    size = tuple(int(v) for v in cfg.INPUT.FIXED_SIZE)
    request = ResolutionRequest(size, bool(cfg.INPUT.CROP_TO_BREAST))
    t = time.perf_counter()
    for f in files:
        (pixels, meta, _), _ = read_stored_image_identified(f, keep_integers=True, resolution=request)
        out, _ = preprocess(pixels, size=size, crop=request.crop, canonical_flip=bool(cfg.INPUT.CANONICAL_FLIP),
                            geometry=meta["decode_geometry"])
        predictor.prepare.mapper.image_to_tensor(out)
    return (time.perf_counter() - t) * 1000 / len(files)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_alone(predictor, prepared, batch_size, device):
    """images/s of the model (and the boxes' mapping back) on prepared inputs, ``batch_size`` per call."""
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        chunk = prepared[i:i + batch_size]
        predictor(chunk[0]) if len(chunk) == 1 else predictor.predict_batch(chunk)
    _sync(device)
    return len(prepared) / (time.perf_counter() - t)


def end_to_end(predictor, files, workers, batch_size, device):
    """(images/s over the whole pass, loader start-up included; images/s from the first result to the last)."""
    _sync(device)
    t = time.perf_counter()
    stamps = [time.perf_counter() for r in predict_files(predictor, files, workers=workers, batch_size=batch_size)
              if r["status"] == "predicted"]
    if len(stamps) != len(files):
        raise SystemExit(f"only {len(stamps)} of {len(files)} bench images were predicted")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return len(files) / (stamps[-1] - t), steady


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/paper/d_tl_similarity.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--syntax", choices=sorted(SYNTAXES), default="rle", help="transfer syntax of the DICOMs")
    p.add_argument("--rows", type=int, default=4672)
    p.add_argument("--cols", type=int, default=2632)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", help="folder for the generated DICOMs (default: a temporary one)")
    p.add_argument("--json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    a = p.parse_args()
    cfg = get_mammo_tl_cfg()
    cfg.merge_from_file(os.path.join(REPO, a.config))
    cfg.merge_from_list(list(a.opts))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = a.device, ""
    # the files first: the generator forks, which must happen before CUDA is initialised
    files = rle_mammograms(a.data or tempfile.mkdtemp(prefix="mammo_tl_bench_inference_"), a.images, a.rows, a.cols,
                           a.syntax)
    torch.manual_seed(0)
    predictor = MammoPredictor(cfg, allow_random_init=True, amp=a.amp)
    timed = files[:8]
    t = time.perf_counter()
    for f in timed:
        predictor.prepare(describe(f)[0])
    decode_ms = (time.perf_counter() - t) * 1000 / len(timed)
    reduced_ms = (reduced_prepare_ms(predictor, timed) if a.syntax == "jpeg2000" and cfg.INPUT.RESIZE_MODE == "fixed"
                  else None)
    prepared = [item["prepared"] for item in prepared_inputs(predictor, files, workers=a.workers)]
    model_alone(predictor, prepared[:2], a.batch_size, a.device)  # warm-up: allocator, kernels, caches
    load_before = os.getloadavg()
    runs = []
    for i in range(a.repeats):
        first_model = i % 2 == 0
        if first_model:
            m = model_alone(predictor, prepared, a.batch_size, a.device)
        e, steady = end_to_end(predictor, files, a.workers, a.batch_size, a.device)
        if not first_model:
            m = model_alone(predictor, prepared, a.batch_size, a.device)
        runs.append({"model_alone_images_per_s": m, "end_to_end_images_per_s": e, "end_to_end_steady_images_per_s":
                     steady, "ratio": e / m})
        print(f"repeat {i + 1}: model alone {m:.3f} images/s, end to end {e:.3f} images/s (steady {steady:.3f}), "
              f"ratio {e / m:.3f}", flush=True)
    load_after = os.getloadavg()
    ratios = [r["ratio"] for r in runs]
    res = {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "model_alone_images_per_s_median": statistics.median(r["model_alone_images_per_s"] for r in runs),
           "end_to_end_images_per_s_median": statistics.median(r["end_to_end_images_per_s"] for r in runs),
           "decode_and_prepare_ms_per_image_one_process": decode_ms, "decode_timed_on_images": len(timed),
           "reduced_decode_and_prepare_ms_per_image_one_process": reduced_ms, "syntax": a.syntax,
           "runs": runs,
           "load_average_1min_before_after": [load_before[0], load_after[0]], "images": a.images,
           "size": [a.rows, a.cols], "workers": a.workers, "batch_size": a.batch_size, "device": a.device,
           "amp": a.amp, "config": a.config, "machine": machine()}
    print(f"\ninference, {a.images} {a.syntax} DICOMs of {a.rows} x {a.cols}, {a.config} "
          f"(ResNet-{cfg.MODEL.RESNETS.DEPTH}, {tuple(cfg.INPUT.FIXED_SIZE)}), {a.device}{' AMP' if a.amp else ''} "
          f"({machine()['gpu']}), "
          f"{a.workers} workers, batch {a.batch_size}, {torch.get_num_threads()} torch threads")
    print(table(["", "median", "min", "max"], [
        ["model alone, images/s"] + [f"{f(r['model_alone_images_per_s'] for r in runs):.3f}"
                                     for f in (statistics.median, min, max)],
        ["end to end, images/s"] + [f"{f(r['end_to_end_images_per_s'] for r in runs):.3f}"
                                    for f in (statistics.median, min, max)],
        ["ratio (goal >= 0.9)"] + [f"{v:.3f}" for v in (res["ratio_median"], res["ratio_min"], res["ratio_max"])],
    ]))
    print(f"decode + prepare in one process: {decode_ms:.0f} ms/image (first {len(timed)} images); "
          f"load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if reduced_ms is not None:
        print(f"decode + prepare in one process with the reduced-resolution decode: {reduced_ms:.0f} ms/image "
              f"({decode_ms / reduced_ms:.2f} times faster)")
    write_json(a.json, res)


if __name__ == "__main__":
    main()
