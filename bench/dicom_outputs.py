#!/usr/bin/env python
"""Writing the DICOM outputs of one image with many boxes: seconds (wall and this process's CPU) and peak
Python memory of write_dicom_outputs (the image's presentation state and its study's TID 1500 report, the
header read and hashed as predict's records ask) for 100, 1000 and 3000 boxes.

    python bench/dicom_outputs.py --json output/bench/dicom_outputs.json
    python bench/dicom_outputs.py --boxes 100 1000 3000 --profile 1000

The source is a 2294 x 1914 16-bit DICOM with a patient module; the boxes lie inside the image, with scores in
(0, 1]. Each size runs twice: once timed, once under tracemalloc for the peak (tracemalloc slows allocation,
so its time is not the one reported). CPU seconds are the steadier figure on a shared machine. --profile N
prints cProfile's top functions for N boxes first.
"""
import argparse
import hashlib
import os
import tempfile
import time
import tracemalloc

import numpy as np
from _common import machine, table, write_json

from mammo_tl.data.synthetic import mammogram_dataset
from mammo_tl.outputs.dicom import Algorithm, write_dicom_outputs

ROWS, COLS = 2294, 1914


def _source(folder):
    from pydicom.uid import generate_uid

    path = os.path.join(folder, "source.dcm")
    ds = mammogram_dataset(path, np.zeros((ROWS, COLS), np.uint16), "P_00001", "L", "CC")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "19600101", "F"
    ds.save_as(path, enforce_file_format=True)
    return path


def _record(path, n, seed=0):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, COLS - 60, n), rng.uniform(0, ROWS - 60, n)
    w, h = rng.uniform(5, 60, n), rng.uniform(5, 60, n)
    boxes = np.round(np.stack([x1, y1, x1 + w, y1 + h], 1), 2).tolist()
    scores = np.round(np.sort(rng.uniform(0.001, 1.0, n))[::-1], 5).tolist()
    return {"file_name": path, "status": "predicted", "laterality": "L", "view": "CC", "boxes": boxes,
            "scores": scores, "max_score": max(scores, default=0.0),
            "file_sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}


def _write(source, record, folder):
    out = tempfile.mkdtemp(dir=folder)
    return write_dicom_outputs(out, [(record, "source")], Algorithm("bench/config.yaml", "0" * 64, 0.0))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", type=int, nargs="+", default=[100, 1000, 3000])
    p.add_argument("--profile", type=int, default=None, metavar="N", help="cProfile the write of N boxes")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mammo_tl_bench_dicom_") as folder:
        source = _source(folder)
        if a.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(_write, source, _record(source, a.profile), folder)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        _write(source, _record(source, 2), folder)  # highdicom's one-time loading of the standard, not timed
        rows, results = [], []
        for n in a.boxes:
            record = _record(source, n)
            t, cpu = time.perf_counter(), time.process_time()
            _, summary = _write(source, record, folder)
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            assert summary["presentation_states"] == 1 and summary["reports"] == 1, summary
            tracemalloc.start()
            _write(source, record, folder)
            peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
            rows.append([n, f"{seconds:.2f}", f"{cpu:.2f}", f"{1000 * cpu / n:.2f}", f"{peak:.0f}"])
            results.append({"boxes": n, "seconds": seconds, "cpu_seconds": cpu, "cpu_ms_per_box": 1000 * cpu / n,
                            "peak_mib": peak})
            print(f"{n} boxes: {seconds:.2f} s ({cpu:.2f} s CPU), peak {peak:.0f} MiB", flush=True)
    print(table(["boxes", "seconds", "CPU seconds", "CPU ms per box", "peak MiB (tracemalloc)"], rows))
    write_json(a.json, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
