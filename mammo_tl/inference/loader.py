"""The DataLoader that decodes and prepares the inputs in worker processes, and the batch loop that runs the
model on them and yields one prediction record per input, in input order."""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.image_io import DEFAULT_MAX_PIXELS
from ..data.inputs import SkippedImage, describe, image_key
from ..files import sha256_file
from ..outputs import OutputError
from ..outputs.overlay import draw_overlay, overlay_base
from .options import PredictError
from .folders import OVERLAYS

if TYPE_CHECKING:
    from .predictor import MammoPredictor

logger = logging.getLogger(__name__)
# What a prediction record takes from the input's meta (laterality_conflict, patient_conflict and
# issuer_of_patient_id only where there is one).
_RECORD_META = ("patient_id", "unknown_patient", "laterality", "view", "source", "file_size", "file_mtime_ns",
                "file_sha256")


class _Inputs(torch.utils.data.Dataset):
    """The inputs, decoded and prepared for the model (in DataLoader workers): an item is {"file_name",
    "meta", "prepared", "overlay_base"}, or {"file_name", "skipped": {"kind", "reason"}} for an input not
    predicted, or {"file_name", "error"} when preparing a decoded image failed."""

    def __init__(self, files, prepare, max_pixels, entries, overlay):
        self.files, self.prepare, self.max_pixels = files, prepare, max_pixels
        self.entries, self.overlay = entries, overlay
        # the preparer's ResolutionRequest (INPUT.RESIZE_MODE "fixed"): JPEG 2000 inputs are decoded at the
        # coarsest level that still covers its input size (mammo_tl.data.resolution); None: every file in full
        self.resolution = getattr(prepare, "resolution", None)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        reduced = {"resolution": self.resolution} if self.resolution is not None else {}
        try:
            image, meta = describe(path, max_pixels=self.max_pixels, patient=self.entries.get(path), **reduced)
        except SkippedImage as e:
            return {"file_name": path, "skipped": {"kind": e.kind, "reason": e.reason}}
        geometry = meta.get("decode_geometry")
        try:
            prepared = self.prepare(image, geometry) if geometry is not None else self.prepare(image)
            base = overlay_base(image, meta.get("min"), meta.get("max")) if self.overlay else None
            if base is not None and geometry is not None:
                # boxes come in stored pixels; the decoded grid is geometry.scale times coarser (the half-pixel
                # offset of its samples is under one overlay pixel)
                base = (base[0], base[1] / geometry.scale)
        except Exception as e:  # reported by the main process, naming the file
            return {"file_name": path, "error": f"{type(e).__name__}: {e}"}
        record_meta = {k: meta[k] for k in _RECORD_META}
        for k in ("laterality_conflict", "patient_conflict", "issuer_of_patient_id"):
            if meta.get(k):
                record_meta[k] = meta[k]
        return {"file_name": path, "meta": record_meta, "prepared": prepared,
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


def prepared_inputs(predictor: MammoPredictor, files: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    workers: int = 0, patients: Mapping[str, dict] | None = None,
                    overlay: bool = False) -> Iterator[dict[str, Any]]:
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


def predict_files(predictor: MammoPredictor, files: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  min_score: float = 0.05, workers: int = 0, batch_size: int = 1,
                  patients: Mapping[str, dict] | None = None, output: str | None = None,
                  threshold: float | None = None) -> Iterator[dict[str, Any]]:
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
        ready_item, (boxes, scores) = predicted[path]
        keep = scores >= min_score
        boxes, scores = boxes[keep], scores[keep]
        if ready_item["meta"].get("laterality_conflict"):
            logger.warning("%s: --patients says laterality %s, its header %s: no side is stated for it",
                           path, ready_item["meta"]["laterality_conflict"]["patients_csv"],
                           " ".join(f"{v} ({k})" for k, v in ready_item["meta"]["laterality_conflict"].items()
                                    if k != "patients_csv"))
        if ready_item["meta"].get("patient_conflict"):
            logger.warning("%s: --patients says patient %r, its header %s: filed as a patient of its own, with "
                           "neither's images", path, ready_item["meta"]["patient_conflict"]["patients_csv"],
                           " ".join(f"{v!r} ({k})" for k, v in ready_item["meta"]["patient_conflict"].items()
                                    if k != "patients_csv"))
        r = {"file_name": path, "status": "predicted", **ready_item["meta"], "boxes": np.round(boxes, 2).tolist(),
             "scores": np.round(scores, 5).tolist(), "max_score": float(scores.max(initial=0.0))}
        if output is not None:
            name = os.path.join(OVERLAYS, image_key(path) + ".png")
            try:
                draw_overlay(*ready_item["overlay_base"], boxes, scores, os.path.join(output, name), threshold)
            except OutputError as e:
                raise PredictError(str(e)) from None
            r["overlay"] = name
            r["overlay_sha256"] = sha256_file(os.path.join(output, name))  # what --overwrite may remove
        records.append(r)
    return records
