"""The work behind tools/predict.py.

Results are written as the run goes: one line per input in ``predictions.jsonl`` (flushed), so a killed run
keeps what it finished and ``--resume`` continues it; ``predictions.json``, ``patients.csv``,
``skipped.json`` and ``summary.json`` are written at the end from the .jsonl. ``run.json`` records the
config, the weights' SHA-256 and the options, which ``--resume`` must match.
"""
import csv
import hashlib
import io
import json
import logging
import math
import os
from collections import Counter

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from ..config import get_mammo_tl_cfg
from ..data.image_io import DEFAULT_MAX_PIXELS
from .predictor import IMAGE_SUFFIXES, MammoPredictor, SkippedImage, describe, image_key, list_inputs

logger = logging.getLogger(__name__)
JSONL, RUN = "predictions.jsonl", "run.json"
FINAL_FILES = ("predictions.json", "patients.csv", "skipped.json", "summary.json")
OVERLAYS = "overlays"
# Keys that may differ between a run and its --resume without changing any result.
_RESUME_IGNORED_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS")


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


def draw_overlay(image, boxes, scores, path, max_side=1024):
    """Write a PNG of ``image`` with the boxes drawn; raises PredictError when it cannot be written."""
    lo, hi = float(image.min()), float(image.max())
    u8 = ((image - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
    f = min(1.0, max_side / max(image.shape))
    u8 = cv2.resize(u8, (max(1, int(image.shape[1] * f)), max(1, int(image.shape[0] * f))),
                    interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)
    for (x1, y1, x2, y2), s in zip(np.asarray(boxes).reshape(-1, 4) * f, scores):
        color = (0, 0, 255) if s > 0.5 else (0, 200, 255)
        cv2.rectangle(rgb, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(rgb, f"{s:.2f}", (int(x1), max(12, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1)
    try:
        ok = cv2.imwrite(path, rgb)
    except cv2.error as e:
        raise PredictError(f"{path}: overlay cannot be written ({e})") from None
    if not ok:  # OpenCV reports a failed write only through its return value
        raise PredictError(f"{path}: overlay cannot be written (OpenCV's imwrite failed: folder missing or "
                           f"unwritable, or disk full)")


def _write_text(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise PredictError(f"{path}: cannot be written ({type(e).__name__}: {e})") from None


def _write_json(path, obj):
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _run_record(cfg, options):
    weights = cfg.MODEL.WEIGHTS
    return {"weights": weights, "weights_sha256": _sha256(weights) if weights and os.path.isfile(weights) else None,
            "options": options, "config": cfg.dump()}


def _resume_differences(old, new):
    """What differs between the recorded run and this one, in words; [] when it may be resumed."""
    diffs = []
    if old.get("weights_sha256") != new["weights_sha256"]:
        diffs.append(f"MODEL.WEIGHTS ({old.get('weights')} then, {new['weights']} now: different files)")
    for k, v in new["options"].items():
        if old.get("options", {}).get(k) != v:
            diffs.append(f"--{k.replace('_', '-')} ({old.get('options', {}).get(k)!r} then, {v!r} now)")
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


class _Output:
    """The output folder: checked writable first, previous run detected, results appended as they come."""

    def __init__(self, folder):
        self.folder = folder
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise PredictError(f"--output {folder}: exists and is not a folder")
        probe = os.path.join(folder, f".predict_write_probe.{os.getpid()}")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(probe, "w") as f:
                f.write("probe")
            os.remove(probe)
        except OSError as e:
            raise PredictError(f"--output {folder}: not a writable folder ({type(e).__name__}: {e})") from None

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
        try:
            for p in names:
                os.remove(p)
            if os.path.isdir(overlays) and not kept:
                os.rmdir(overlays)
        except OSError as e:
            raise PredictError(f"--overwrite: {e.filename}: cannot be removed ({type(e).__name__}: "
                               f"{e.strerror})") from None
        if kept:
            logger.warning("--overwrite: %s holds files this tool does not write, left in place: %s",
                           overlays, ", ".join(sorted(os.path.basename(k) for k in kept)[:5]))


def run_predict(config_file, inputs, output, opts=(), overlay=False, min_score=0.05, max_pixels=None,
                resume=False, overwrite=False):
    """Predict every input file; see tools/predict.py. Returns (predictions, skipped) as written to
    predictions.json and skipped.json. Raises PredictError (or WeightsError) naming what is wrong."""
    min_score = check_min_score(min_score)
    max_pixels = check_max_pixels(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    if resume and overwrite:
        raise PredictError("--resume and --overwrite exclude each other: continue the previous run, or replace it")
    cfg = _build_cfg(config_file, opts, min_score)
    try:
        files = list_inputs(inputs)
    except FileNotFoundError as e:
        raise PredictError(f"--input: {e}") from None
    if not files:
        raise PredictError(f"--input {' '.join(inputs)}: no image files found (looked for "
                           f"{', '.join(IMAGE_SUFFIXES)})")
    out = _Output(output)
    record = _run_record(cfg, {"min_score": min_score, "max_pixels": max_pixels, "overlay": bool(overlay)})
    previous = out.previous_run()
    if previous and not (resume or overwrite):
        raise PredictError(f"--output {output} holds a previous run's results ({', '.join(previous)}): pass "
                           f"--resume to continue it or --overwrite to replace it")
    done = _resumable_records(out, record) if resume and previous else {}

    predictor = MammoPredictor(cfg)  # refuses missing or partial weights before anything is changed
    if overwrite:
        out.remove_previous_run()
    if not (resume and previous):
        _write_json(out.path(RUN), record)
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
    try:
        log = open(out.path(JSONL), "a")
    except OSError as e:
        raise PredictError(f"{out.path(JSONL)}: cannot be opened for writing ({e})") from None
    with log:
        for path in tqdm(todo, desc="predict", unit="image"):
            r = _predict_one(predictor, path, out, overlay, min_score, max_pixels)
            try:
                log.write(json.dumps(r) + "\n")
                log.flush()
            except OSError as e:
                raise PredictError(f"{out.path(JSONL)}: cannot be written ({type(e).__name__}: {e})") from None
            records[path] = r
    return _finish(out, files, records, resumed=len(files) - len(todo), not_inputs=not_inputs)


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


def _predict_one(predictor, path, out, overlay, min_score, max_pixels):
    try:
        image, meta = describe(path, max_pixels=max_pixels)
    except SkippedImage as e:
        logger.warning("skipped %s", e)
        return {"file_name": path, "status": "skipped", "kind": e.kind, "reason": e.reason}
    try:
        boxes, scores = predictor(image)
    except Exception as e:
        raise PredictError(f"{path}: inference failed ({type(e).__name__}: {e})") from e
    keep = scores >= min_score
    boxes, scores = boxes[keep], scores[keep]
    r = {"file_name": path, "status": "predicted", "patient_id": meta["patient_id"],
         "unknown_patient": meta["unknown_patient"], "laterality": meta.get("laterality", ""),
         "view": meta.get("view", ""), "boxes": np.round(boxes, 2).tolist(), "scores": np.round(scores, 5).tolist()}
    if overlay:
        name = os.path.join(OVERLAYS, image_key(path) + ".png")
        draw_overlay(image, boxes, scores, out.path(name))
        r["overlay"] = name
    return r


def _finish(out, files, records, resumed, not_inputs):
    predictions, skipped, patients = [], [], {}
    for path in files:
        r = records[path]
        if r["status"] == "skipped":
            skipped.append({k: r[k] for k in ("file_name", "kind", "reason")})
            continue
        predictions.append({k: v for k, v in r.items() if k not in ("status", "unknown_patient")})
        pid = r["patient_id"]
        patients[pid] = max(patients.get(pid, 0.0), max(r["scores"], default=0.0))
    predicted = [records[p] for p in files if records[p]["status"] == "predicted"]
    by_reason = Counter(s["kind"] for s in skipped)
    summary = {
        "inputs": len(files), "predicted": len(predictions), "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "unknown_patient": sum(bool(r["unknown_patient"]) for r in predicted),
        "unknown_laterality": sum(r["laterality"] not in ("L", "R") for r in predicted),
        "patients": len(patients), "from_previous_run": resumed, "previous_run_not_in_inputs": not_inputs,
    }
    _write_json(out.path("predictions.json"), predictions)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["patient_id", "score"])
    w.writerows((p, f"{s:.6f}") for p, s in sorted(patients.items()))
    _write_text(out.path("patients.csv"), buf.getvalue())
    _write_json(out.path("skipped.json"), skipped)
    _write_json(out.path("summary.json"), summary)
    reasons = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(by_reason.items()))
    print(f"{summary['inputs']} input(s): {summary['predicted']} predicted"
          f"{f' ({resumed} in the previous run)' if resumed else ''}, {summary['skipped']} skipped"
          f"{f' ({reasons}; see skipped.json)' if skipped else ''}; {summary['unknown_patient']} image(s) with "
          f"unknown patient (each counted as its own patient), {summary['unknown_laterality']} with unknown "
          f"laterality"
          f"{f'; {not_inputs} image(s) of the previous run not among the inputs, left out' if not_inputs else ''}"
          f". Wrote {out.folder}/predictions.json, patients.csv, skipped.json, summary.json", flush=True)
    if not predictions:
        raise PredictError(f"no image could be predicted: all {len(files)} input(s) skipped ({reasons}); see "
                           f"{out.path('skipped.json')}")
    return predictions, skipped
