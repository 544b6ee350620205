"""The work behind tools/predict.py.

Images are decoded and prepared in torch DataLoader workers (``workers``) while the model runs on batches
of them (``batch_size``) in this process; results come back in input order. Results are written as the
run goes: one line per input in ``predictions.jsonl`` (flushed), so a killed run keeps what it finished and
``--resume`` continues it; ``predictions.json``, ``patients.csv``, ``skipped.json``, ``summary.json`` and
the DICOM outputs (``dicom_out``) are written at the end from the .jsonl. ``run.json`` records the config,
the weights' SHA-256 and the options, which ``--resume`` must match.
"""
import itertools
import json
import logging
import math
import os

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..config import get_mammo_tl_cfg
from ..data.image_io import DEFAULT_MAX_PIXELS
from ..evaluation.operating_points import FILE_NAME as OPERATING_POINTS_FILE
from ..evaluation.operating_points import OperatingPointError, load_operating_points
from ..files import sha256_file, writable_folder_problem
from ..outputs import OutputError, tables, write_json, write_text
from ..outputs.overlay import draw_overlay, overlay_base
from ..data.inputs import (IMAGE_SUFFIXES, PatientsCsvError, SkippedImage, describe, image_key, list_inputs,
                           read_patients_csv)
from .predictor import MammoPredictor

logger = logging.getLogger(__name__)
JSONL, RUN = "predictions.jsonl", "run.json"
FINAL_FILES = ("predictions.json", "patients.csv", "skipped.json", "summary.json")
OVERLAYS = "overlays"
# Keys that may differ between a run and its --resume without changing any result.
_RESUME_IGNORED_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS")
# Options a run.json written before they existed stands for with these values.
_OPTION_DEFAULTS = {"amp": False, "patients_sha256": None, "operating_point": None}
_RECORD_META = ("patient_id", "unknown_patient", "laterality", "view", "source")


class PredictError(Exception):
    """tools/predict.py cannot run or finish; the message names the file, folder or option at fault."""


def check_min_score(value) -> float:
    """--min-score: a finite number in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--min-score must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"--min-score must be a finite number in [0, 1], got {value!r}")
    return v


def check_max_pixels(value) -> int:
    """--max-pixels: a whole number of pixels > 0."""
    try:
        f = float(value)
        v = int(f)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"--max-pixels must be a whole number > 0, got {value!r}") from None
    if v != f or v <= 0:
        raise ValueError(f"--max-pixels must be a whole number > 0, got {value!r}")
    return v


def _whole_number(option, value, minimum):
    try:
        f = float(value)
        v = int(f)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{option} must be a whole number >= {minimum}, got {value!r}") from None
    if v != f or v < minimum:
        raise ValueError(f"{option} must be a whole number >= {minimum}, got {value!r}")
    return v


def check_workers(value) -> int:
    """--workers: processes decoding images beside the model, 0 or more (0: decoded in this process)."""
    return _whole_number("--workers", value, 0)


def check_batch_size(value) -> int:
    """--batch-size: images per model call, 1 or more."""
    return _whole_number("--batch-size", value, 1)


def default_workers() -> int:
    """min(4, the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _build_cfg(config_file, opts, min_score):
    if not os.path.isfile(config_file):
        raise PredictError(f"--config-file {config_file}: file not found")
    cfg = get_mammo_tl_cfg()
    try:
        cfg.merge_from_file(config_file)
    except Exception as e:  # yacs reports a bad key or value in many exception types
        raise PredictError(f"--config-file {config_file}: {type(e).__name__}: {e}") from None
    try:
        cfg.merge_from_list(list(opts))
    except Exception as e:
        raise PredictError(f"config overrides {' '.join(map(str, opts))}: {type(e).__name__}: {e}") from None
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, min_score)
    cfg.freeze()
    return cfg


def _check_device(cfg, amp):
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise PredictError(f"MODEL.DEVICE {device}: {why} (torch {torch.__version__}); use --device cpu")
    if amp and not device.startswith("cuda"):
        raise PredictError(f"--amp: mixed precision runs on CUDA only, and the device is {device!r}; drop --amp "
                           f"or use --device cuda")


def _run_record(cfg, options):
    weights = cfg.MODEL.WEIGHTS
    sha = sha256_file(weights) if weights and os.path.isfile(weights) else None
    return {"weights": weights, "weights_sha256": sha, "options": options, "config": cfg.dump()}


def _resume_differences(old, new):
    """What differs between the recorded run and this one, in words; [] when it may be resumed."""
    diffs = []
    if old.get("weights_sha256") != new["weights_sha256"]:
        diffs.append(f"MODEL.WEIGHTS ({old.get('weights')} then, {new['weights']} now: different files)")
    old_options = old.get("options", {})
    for k, v in new["options"].items():
        before = old_options.get(k, _OPTION_DEFAULTS.get(k))
        if before != v:
            diffs.append(f"--{k.replace('_', '-')} ({before!r} then, {v!r} now)")
    a, b = (_flat(yaml.safe_load(r["config"]) or {}) for r in (old, new))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUME_IGNORED_KEYS)
    if keys:
        diffs.append("config " + ", ".join(f"{k} ({a.get(k)!r} then, {b.get(k)!r} now)" for k in keys[:6])
                     + (f" and {len(keys) - 6} more" if len(keys) > 6 else ""))
    return diffs


def _read_jsonl(path):
    """The records of a previous run's predictions.jsonl, by file_name (a later line wins). A last line
    without its newline was cut short by a killed run: it is dropped, from the file too."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records, end = {}, 0
    for i, line in enumerate(lines[:-1], 1):
        if line.strip():
            try:
                r = json.loads(line)
                records[r["file_name"]] = r
            except (ValueError, KeyError, TypeError) as e:
                raise PredictError(f"{path}: line {i} is not a prediction record ({type(e).__name__}: {e}); use "
                                   f"--overwrite to start again") from None
        end += len(line) + 1
    if lines[-1].strip():
        logger.warning("%s: line %d is incomplete (the previous run was stopped while writing it); its image "
                       "is predicted again", path, len(lines))
        with open(path, "r+b") as f:
            f.truncate(end)
    return records


def _writable_folder(folder, option):
    problem = writable_folder_problem(folder)
    if problem:
        raise PredictError(f"{option} {folder}: {problem}")


class _Output:
    """The output folder: checked writable first, previous run detected, results appended as they come."""

    def __init__(self, folder):
        self.folder = folder
        _writable_folder(folder, "--output")

    def path(self, *names):
        return os.path.join(self.folder, *names)

    def previous_run(self):
        found = [n for n in (JSONL, RUN) + FINAL_FILES if os.path.exists(self.path(n))]
        overlays = self.path(OVERLAYS)
        if os.path.isdir(overlays) and os.listdir(overlays):
            found.append(OVERLAYS + "/")
        return found

    def remove_previous_run(self):
        """--overwrite: the previous run's files go, overlays included; anything else in overlays/ stays."""
        overlays = self.path(OVERLAYS)
        names = [self.path(n) for n in (JSONL, RUN) + FINAL_FILES if os.path.lexists(self.path(n))]
        kept = []
        if os.path.isdir(overlays):
            for n in os.listdir(overlays):
                p = os.path.join(overlays, n)
                (names if n.endswith(".png") and os.path.isfile(p) else kept).append(p)
        _remove(names)
        try:
            if os.path.isdir(overlays) and not kept:
                os.rmdir(overlays)
        except OSError as e:
            raise PredictError(f"--overwrite: {e.filename}: cannot be removed ({type(e).__name__}: "
                               f"{e.strerror})") from None
        if kept:
            logger.warning("--overwrite: %s holds files this tool does not write, left in place: %s",
                           overlays, ", ".join(sorted(os.path.basename(k) for k in kept)[:5]))


def _remove(paths):
    try:
        for p in paths:
            os.remove(p)
    except OSError as e:
        raise PredictError(f"--overwrite: {e.filename}: cannot be removed ({type(e).__name__}: "
                           f"{e.strerror})") from None


class _DicomFolder:
    """--dicom-out: checked writable first; the presentation states and reports of a previous run found."""

    def __init__(self, folder):
        from ..outputs.dicom import is_output_file

        self.folder, self._is_ours = folder, is_output_file
        _writable_folder(folder, "--dicom-out")

    def previous_run(self):
        return sorted(n for n in os.listdir(self.folder)
                      if self._is_ours(n) and os.path.isfile(os.path.join(self.folder, n)))


def _patients_table(path, files):
    """--patients: (file -> CSV entry for the inputs it lists, summary counts); CSV rows naming no input and
    inputs missing from the CSV are counted and logged."""
    try:
        entries = read_patients_csv(path)
    except PatientsCsvError as e:
        raise PredictError(f"--patients {e}") from None
    by_real = {os.path.realpath(f): f for f in files}
    matched = {by_real[k]: e for k, e in entries.items() if k in by_real}
    not_inputs = sorted((e for k, e in entries.items() if k not in by_real), key=lambda e: e["row"])
    not_listed = [f for f in files if f not in matched]
    if not_inputs:
        logger.warning("--patients %s: %d row(s) name a file that is not among the inputs (rows %s%s)", path,
                       len(not_inputs), ", ".join(str(e["row"]) for e in not_inputs[:10]),
                       ", ..." if len(not_inputs) > 10 else "")
    if not_listed:
        logger.warning("--patients %s: %d input(s) not in it, identified from their header or name instead: %s%s",
                       path, len(not_listed), ", ".join(not_listed[:5]), ", ..." if len(not_listed) > 5 else "")
    return matched, {"file": path, "rows": len(entries), "inputs_listed": len(matched),
                     "rows_not_among_inputs": len(not_inputs), "inputs_not_listed": len(not_listed)}


def _operating_point(name, file, weights, min_score):
    """--operating-point NAME [--operating-points FILE]: {"name", "threshold", "file", ...} checked against
    the weights in use."""
    if not weights or not os.path.isfile(weights):
        raise PredictError(f"--operating-point {name}: MODEL.WEIGHTS must be the trained model's file, whose "
                           f"sha256 the operating points are checked against (it is {weights!r})")
    path = file or os.path.join(os.path.dirname(os.path.abspath(weights)), OPERATING_POINTS_FILE)
    try:
        data = load_operating_points(path, weights)
    except OperatingPointError as e:
        raise PredictError(f"--operating-point {name}: {e}") from None
    points = data["points"]
    if name not in points:
        raise PredictError(f"--operating-point {name}: {path} has no point of that name; it holds "
                           f"{', '.join(sorted(points))}")
    threshold = float(points[name]["threshold"])
    if 0.0 <= threshold < min_score:
        raise PredictError(f"--operating-point {name}: its threshold {threshold:g} is below --min-score "
                           f"{min_score:g}, so boxes scoring between them, which decide a recall, would not be "
                           f"kept; pass --min-score {threshold:g} or lower")
    return {"name": name, "threshold": threshold, "file": path,
            "validation_dataset": data.get("validation_dataset"), "validation": points[name].get("validation")}


def _config_name(config_file):
    """The config as the DICOM outputs name it: its folder and file name (configs/paper/x.yaml -> paper/x.yaml)."""
    path = os.path.abspath(config_file)
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def run_predict(config_file, inputs, output, opts=(), overlay=False, min_score=0.05, max_pixels=None,
                resume=False, overwrite=False, *, dicom_out=None, patients=None, workers=None, batch_size=1,
                device=None, amp=False, operating_point=None, operating_points=None):
    """Predict every input file; see tools/predict.py. Returns (predictions, skipped) as written to
    predictions.json and skipped.json. Raises PredictError (or WeightsError) naming what is wrong."""
    min_score = check_min_score(min_score)
    max_pixels = check_max_pixels(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    workers = default_workers() if workers is None else check_workers(workers)
    batch_size = check_batch_size(batch_size)
    if resume and overwrite:
        raise PredictError("--resume and --overwrite exclude each other: continue the previous run, or replace it")
    if operating_points and not operating_point:
        raise PredictError(f"--operating-points {operating_points}: name the point to use with --operating-point")
    cfg = _build_cfg(config_file, list(opts) + (["MODEL.DEVICE", device] if device else []), min_score)
    _check_device(cfg, amp)
    try:
        files = list_inputs(inputs)
    except FileNotFoundError as e:
        raise PredictError(f"--input: {e}") from None
    if not files:
        raise PredictError(f"--input {' '.join(inputs)}: no image files found (looked for "
                           f"{', '.join(IMAGE_SUFFIXES)})")
    entries, patients_summary = _patients_table(patients, files) if patients else ({}, None)
    point = _operating_point(operating_point, operating_points, cfg.MODEL.WEIGHTS, min_score) \
        if operating_point else None
    out = _Output(output)
    dicom = _DicomFolder(dicom_out) if dicom_out else None
    options = {"min_score": min_score, "max_pixels": max_pixels, "overlay": bool(overlay), "amp": bool(amp),
               "patients_sha256": sha256_file(patients) if patients else None,
               "operating_point": [point["name"], point["threshold"]] if point else None}
    record = _run_record(cfg, options)
    previous = out.previous_run()
    old_dicom = dicom.previous_run() if dicom else []
    if (previous or old_dicom) and not (resume or overwrite):
        where = [f"--output {output} holds a previous run's results ({', '.join(previous)})"] if previous else []
        if old_dicom:
            where.append(f"--dicom-out {dicom_out} holds a previous run's presentation states and reports "
                         f"({len(old_dicom)} file(s))")
        raise PredictError(f"{'; '.join(where)}: pass --resume to continue it or --overwrite to replace it")
    done = _resumable_records(out, record) if resume and previous else {}

    predictor = MammoPredictor(cfg, amp=amp)  # refuses missing or partial weights before anything is changed
    if overwrite:
        out.remove_previous_run()
        _remove([os.path.join(dicom_out, n) for n in old_dicom])
    if not (resume and previous):
        write_json(out.path(RUN), record)
    if overlay:
        try:
            os.makedirs(out.path(OVERLAYS), exist_ok=True)
        except OSError as e:
            raise PredictError(f"{out.path(OVERLAYS)}: cannot be created ({e})") from None

    todo = [p for p in files if p not in done]
    if done:
        print(f"--resume: {len(files) - len(todo)} of {len(files)} input(s) already predicted in "
              f"{out.path(JSONL)}", flush=True)
    records = {p: done[p] for p in files if p in done}
    not_inputs = len(done) - len(records)
    if not_inputs:
        logger.warning("--resume: %d image(s) predicted by the previous run are not among the inputs now; "
                       "left out of the results", not_inputs)
    threshold = point["threshold"] if point else None
    try:
        log = open(out.path(JSONL), "a")
    except OSError as e:
        raise PredictError(f"{out.path(JSONL)}: cannot be opened for writing ({e})") from None
    with log, tqdm(total=len(todo), desc="predict", unit="image") as progress:
        for r in predict_files(predictor, todo, max_pixels=max_pixels, min_score=min_score, workers=workers,
                               batch_size=batch_size, patients=entries, output=output if overlay else None,
                               threshold=threshold):
            try:
                log.write(json.dumps(r) + "\n")
                log.flush()
            except OSError as e:
                raise PredictError(f"{out.path(JSONL)}: cannot be written ({type(e).__name__}: {e})") from None
            records[r["file_name"]] = r
            progress.update(1)
    algorithm = None
    if dicom:
        from ..outputs.dicom import Algorithm

        algorithm = Algorithm(_config_name(config_file), record["weights_sha256"], min_score,
                              (point["name"], point["threshold"]) if point else None)
    return _finish(out, files, records, resumed=len(files) - len(todo), not_inputs=not_inputs, point=point,
                   patients_summary=patients_summary, dicom_out=dicom_out, algorithm=algorithm)


def _resumable_records(out, record):
    """--resume: the previous run's predicted records, after checking it ran with the same settings."""
    if not os.path.exists(out.path(RUN)):
        raise PredictError(f"{out.path(RUN)}: not found, so the previous run's config and weights are unknown "
                           f"and it cannot be resumed; use --overwrite to start again")
    try:
        with open(out.path(RUN)) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise PredictError(f"{out.path(RUN)}: cannot be read ({type(e).__name__}: {e}); use --overwrite to "
                           f"start again") from None
    diffs = _resume_differences(old, record)
    if diffs:
        raise PredictError(f"--resume: {out.folder} was predicted with other settings: {'; '.join(diffs)}. "
                           f"Rerun with the same ones, or use --overwrite to start again")
    if not os.path.exists(out.path(JSONL)):
        return {}
    # skipped images are tried again: the file may have been fixed since
    return {k: r for k, r in _read_jsonl(out.path(JSONL)).items() if r.get("status") == "predicted"}


class _Inputs(torch.utils.data.Dataset):
    """The inputs, decoded and prepared for the model (in DataLoader workers): an item is {"file_name",
    "meta", "prepared", "overlay_base"}, or {"file_name", "skipped": {"kind", "reason"}} for an input not
    predicted, or {"file_name", "error"} when preparing a decoded image failed."""

    def __init__(self, files, prepare, max_pixels, entries, overlay):
        self.files, self.prepare, self.max_pixels = files, prepare, max_pixels
        self.entries, self.overlay = entries, overlay

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            image, meta = describe(path, max_pixels=self.max_pixels, patient=self.entries.get(path))
        except SkippedImage as e:
            return {"file_name": path, "skipped": {"kind": e.kind, "reason": e.reason}}
        try:
            prepared = self.prepare(image)
            base = overlay_base(image, meta.get("min"), meta.get("max")) if self.overlay else None
        except Exception as e:  # reported by the main process, naming the file
            return {"file_name": path, "error": f"{type(e).__name__}: {e}"}
        return {"file_name": path, "meta": {k: meta[k] for k in _RECORD_META}, "prepared": prepared,
                "overlay_base": base}


def _as_is(item):
    return item


# Loader workers run at a lower priority: where they share cores with the model (CPU inference), the model's
# threads come first and decoding fills the gaps between its parallel regions; with cores to spare (GPU
# inference) it changes nothing. (OpenCV's thread count is left alone in the workers: changing it in a process
# forked after the parent used OpenCV's thread pool hung every worker on a 16-core machine.)
WORKER_NICENESS = 10


def _lower_priority(worker_id):
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not permitted here: the workers run at the main process's priority
        pass


def prepared_inputs(predictor, files, *, max_pixels=DEFAULT_MAX_PIXELS, workers=0, patients=None, overlay=False):
    """Yield the inputs decoded and prepared for the model (see :class:`_Inputs`), in order. Each of the
    ``workers`` DataLoader processes decodes one image at a time, so the first results arrive after one
    image's decoding; predict_files forms the batches from consecutive images in the main process."""
    dataset = _Inputs(files, predictor.prepare, max_pixels, patients or {}, overlay)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_as_is, worker_init_fn=_lower_priority,
                                         pin_memory=str(predictor.cfg.MODEL.DEVICE).startswith("cuda"))
    try:
        yield from loader
    except RuntimeError as e:
        if not _worker_died(e):
            raise
        raise _worker_stopped(e, workers) from None


def predict_files(predictor, files, *, max_pixels=DEFAULT_MAX_PIXELS, min_score=0.05, workers=0, batch_size=1,
                  patients=None, output=None, threshold=None):
    """Yield the prediction record of every file (see :mod:`mammo_tl.outputs`), in order. ``workers``
    DataLoader processes decode and prepare the images while the model runs on ``batch_size`` of them at a
    time. ``patients``: file -> --patients CSV entry. ``output``: write overlays in output/overlays/ (colours
    split at ``threshold``). Raises PredictError naming the file at fault, or the worker that stopped."""
    items = prepared_inputs(predictor, files, max_pixels=max_pixels, workers=workers, patients=patients,
                            overlay=output is not None)
    while batch := list(itertools.islice(items, batch_size)):
        try:
            yield from _predict_batch(predictor, batch, output, min_score, threshold)
        except RuntimeError as e:
            if not _worker_died(e):
                raise
            raise _worker_stopped(e, workers) from None


def _worker_stopped(e, workers):
    return PredictError(f"a worker decoding images stopped ({e}); with large images, fewer --workers "
                        f"(now {workers}) need less memory")


def _worker_died(e) -> bool:
    """torch raises this in the main process (from its SIGCHLD handler, so wherever it is) when a loader
    worker exits without answering, typically killed for memory."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e)


def _predict_batch(predictor, batch, output, min_score, threshold):
    """The prediction records of one batch, in its order; the model runs once on its decoded images."""
    ready = []
    for item in batch:
        if "error" in item:
            raise PredictError(f"{item['file_name']}: the decoded image could not be prepared for the model "
                               f"({item['error']})")
        if "skipped" in item:
            logger.warning("skipped %s: %s", item["file_name"], item["skipped"]["reason"])
        else:
            ready.append(item)
    try:
        if len(ready) == 1:
            results = [predictor(ready[0]["prepared"])]
        else:
            results = predictor.predict_batch([item["prepared"] for item in ready]) if ready else []
    except Exception as e:
        if _worker_died(e):
            raise
        names = ", ".join(item["file_name"] for item in ready)
        raise PredictError(f"{names}: inference failed ({type(e).__name__}: {e})") from e
    predicted = {item["file_name"]: (item, res) for item, res in zip(ready, results)}
    records = []
    for item in batch:
        path = item["file_name"]
        if "skipped" in item:
            records.append({"file_name": path, "status": "skipped", **item["skipped"]})
            continue
        item, (boxes, scores) = predicted[path]
        keep = scores >= min_score
        boxes, scores = boxes[keep], scores[keep]
        r = {"file_name": path, "status": "predicted", **item["meta"], "boxes": np.round(boxes, 2).tolist(),
             "scores": np.round(scores, 5).tolist(), "max_score": float(scores.max(initial=0.0))}
        if output is not None:
            name = os.path.join(OVERLAYS, image_key(path) + ".png")
            try:
                draw_overlay(*item["overlay_base"], boxes, scores, os.path.join(output, name), threshold)
            except OutputError as e:
                raise PredictError(str(e)) from None
            r["overlay"] = name
        records.append(r)
    return records


def _finish(out, files, records, resumed, not_inputs, point=None, patients_summary=None, dicom_out=None,
            algorithm=None):
    t = tables.build(files, records, point["threshold"] if point else None)
    predictions, skipped, patients, summary = t["predictions"], t["skipped"], t["patients"], t["summary"]
    summary.update({"from_previous_run": resumed, "previous_run_not_in_inputs": not_inputs})
    if patients_summary:
        summary["patients_csv"] = patients_summary
    if point:
        summary["operating_point"] = {**point, **tables.recall_counts(patients)}
    dicom_note = ""
    if dicom_out:
        from ..outputs.dicom import write_dicom_outputs

        predicted = [(records[p], image_key(p)) for p in files if records[p]["status"] == "predicted"]
        try:
            per_image, summary["dicom"] = write_dicom_outputs(dicom_out, predicted, algorithm)
        except OutputError as e:
            raise PredictError(str(e)) from None
        for e in predictions:
            e["dicom"] = per_image[e["file_name"]]
        d = summary["dicom"]
        dicom_note = (f"; DICOM: {d['presentation_states']} presentation state(s), {d['reports']} report(s) in "
                      f"{dicom_out}" + (f", {d['images_without_dicom_output']} image(s) without (see summary.json)"
                                        if d["images_without_dicom_output"] else ""))
    try:
        write_json(out.path("predictions.json"), predictions)
        write_text(out.path("patients.csv"), tables.patients_csv(patients, with_decisions=point is not None))
        write_json(out.path("skipped.json"), skipped)
        write_json(out.path("summary.json"), summary)
    except OutputError as e:
        raise PredictError(str(e)) from None
    reasons = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary["skipped_by_reason"].items())
    recalled = (f"; at operating point {point['name']} (recall above {point['threshold']:g}): "
                f"{summary['operating_point']['patients_recalled']} of {len(patients)} patient(s) recalled"
                if point else "")
    print(f"{summary['inputs']} input(s): {summary['predicted']} predicted"
          f"{f' ({resumed} in the previous run)' if resumed else ''}, {summary['skipped']} skipped"
          f"{f' ({reasons}; see skipped.json)' if skipped else ''}; {summary['unknown_patient']} image(s) with "
          f"unknown patient (each counted as its own patient), {summary['unknown_laterality']} with unknown "
          f"laterality"
          f"{f'; {not_inputs} image(s) of the previous run not among the inputs, left out' if not_inputs else ''}"
          f"{recalled}{dicom_note}. Wrote {out.folder}/predictions.json, patients.csv, skipped.json, summary.json",
          flush=True)
    if not predictions:
        raise PredictError(f"no image could be predicted: all {len(files)} input(s) skipped ({reasons}); see "
                           f"{out.path('skipped.json')}")
    return predictions, skipped
