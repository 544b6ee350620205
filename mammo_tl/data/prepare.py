"""Preprocess a data set once: read (DICOM/PNG), crop to the breast, optional canonical flip, resize,
cache as 16-bit PNG with the transform recorded (see mammo_tl.data.preprocess). Parallel, resumable,
and every input is reported as used or skipped with the reason."""
import json
import logging
import os
from multiprocessing import Pool

import cv2
import numpy as np
from tqdm import tqdm

from .datasets.common import box_annotation, save_records
from .image_io import ImageReadError, read_image
from .preprocess import MammoTransform, preprocess

logger = logging.getLogger(__name__)


def _safe_name(image_id):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(image_id))


def _prepare_one(args):
    record, out_dir, size, crop, flip = args
    stem = os.path.join(out_dir, "images", _safe_name(record["image_id"]))
    png, sidecar = stem + ".png", stem + ".json"
    if os.path.exists(png) and os.path.exists(sidecar):
        with open(sidecar) as f:
            return "cached", record, MammoTransform.from_dict(json.load(f)), None
    try:
        image = read_image(record["file_name"])
    except ImageReadError as e:
        return "skipped", record, None, e.cause
    except Exception as e:  # a decoder failing in an unexpected way must not stop the whole run
        return "skipped", record, None, f"{type(e).__name__}: {e}"
    if image.shape != (record["height"], record["width"]):
        return "skipped", record, None, (f"image is {image.shape[1]}x{image.shape[0]}, record says "
                                         f"{record['width']}x{record['height']}")
    out, t = preprocess(image, size=size, crop=crop, canonical_flip=flip)
    lo, hi = float(out.min()), float(out.max())
    u16 = ((out - lo) * (65535.0 / max(hi - lo, 1e-6))).round().astype(np.uint16)
    tmp = stem + ".tmp.png"
    cv2.imwrite(tmp, u16)
    os.replace(tmp, png)  # a killed run never leaves a half-written PNG that looks finished
    with open(sidecar, "w") as f:
        json.dump(t.to_dict(), f)
    return "prepared", record, t, None


def prepared_record(record, transform, out_dir):
    """The record of the cached image: boxes in its pixels, the transform and the original file kept."""
    stem = os.path.join(out_dir, "images", _safe_name(record["image_id"]))
    boxes = transform.apply_boxes([a["bbox"] for a in record["annotations"]]) if record["annotations"] else []
    h, w = transform.size
    out = {k: v for k, v in record.items() if k not in ("annotations", "file_name", "height", "width")}
    out.update(file_name=stem + ".png", height=h, width=w, original_file_name=record["file_name"],
               original_height=record["height"], original_width=record["width"],
               transform=transform.to_dict(), annotations=[box_annotation(b) for b in boxes])
    return out


def prepare_dataset(records, out_dir, size=(512, 512), crop=True, flip=False, workers=2, progress=True):
    """Returns (prepared records, report dict); writes records.json and report.json to out_dir."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    jobs = [(r, out_dir, tuple(size) if size else None, crop, flip) for r in records]
    counts = {"prepared": 0, "cached": 0, "skipped": 0}
    prepared, skipped = [], []
    bar = tqdm(total=len(jobs), desc=f"prepare -> {out_dir}", unit="image", disable=not progress)
    with Pool(workers) if workers > 1 else _Serial() as pool:
        for status, record, t, reason in pool.imap_unordered(_prepare_one, jobs, chunksize=4):
            counts[status] += 1
            if status == "skipped":
                skipped.append({"file_name": record["file_name"], "image_id": record["image_id"], "reason": reason})
            else:
                prepared.append(prepared_record(record, t, out_dir))
            bar.update(1)
    bar.close()
    order = {r["image_id"]: k for k, r in enumerate(records)}
    prepared.sort(key=lambda r: order[r["image_id"]])
    report = {"inputs": len(records), "used": len(prepared), **counts, "skipped_items": skipped,
              "options": {"size": list(size) if size else None, "crop": crop, "flip": flip}}
    save_records(prepared, os.path.join(out_dir, "records.json"))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    logger.info("prepared %d of %d images (%d from cache), %d skipped", len(prepared), len(records),
                counts["cached"], counts["skipped"])
    return prepared, report


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn, jobs, chunksize=1):
        return map(fn, jobs)
