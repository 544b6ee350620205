"""Preprocess a data set once: read (DICOM/PNG), crop to the breast, optional canonical flip, resize,
cache as 16-bit PNG with the transform recorded (see mammo_tl.data.preprocess). Parallel, resumable,
shardable over a job array, and every input is reported as prepared, cached, rebuilt or skipped, with the
reason.

JPEG 2000 DICOMs are decoded at a reduced resolution when a size is given (``decode="reduced"``, the default;
:mod:`mammo_tl.data.resolution`): the coarsest level at which the breast's crop spans at least
``oversample`` times the size. The result equals a full decode's within the tolerance docs/benchmarks.md states;
``decode="full"`` decodes every file in full.

The cache can never hand back an image made from another file or with other options. An entry is named by
a hash of its *key*: the source file's absolute path, size and modification time (ns), every option that
changes the pixels (size, crop, canonical flip, and the decode mode with its oversampling when reduced: an
entry made by full decoding is never taken for a reduced one, nor the reverse) and :data:`CACHE_VERSION`.
Its sidecar JSON holds the full
key, the transform and the PNG's SHA-256; an entry is used only when the sidecar parses, its key equals the
expected one and the PNG's bytes hash as recorded, otherwise it is rebuilt. Size + mtime rather than a
content hash of every source, because hashing 20,000 DICOMs on each resumed run would read the whole data
set again; a file modified within :data:`RACY_SECONDS` of being read could keep its mtime on a coarse clock,
so for such files the source's SHA-256 is stored too and checked on every later run. PNG and sidecar are
written atomically (temporary file in the same folder, then rename), the sidecar last: a sidecar implies
a complete PNG.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from multiprocessing import Pool
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..files import LOCK_NAME, FolderLock, FolderLocked, lock_holder, sha256_file
from ..files import atomic_write_bytes as atomic_write  # the name tools/prepare_dataset.py imports
from .records import box_annotation, save_records
from .image_io import ImageReadError, check_regular_file, read_stored_image
from .preprocess import MammoTransform, preprocess
from .resolution import DEFAULT_OVERSAMPLE, ResolutionRequest

logger = logging.getLogger(__name__)

# Bump when the cached pixels change for the same source and options (reader, preprocessing, PNG scaling).
CACHE_VERSION = 2
# A source modified less than this before it is read may share its mtime with a later edit (FAT keeps 2 s).
RACY_SECONDS = 3.0
IMAGES = "images"
DECODE_MODES = ("reduced", "full")
_ENTRY = re.compile(r"^[0-9a-f]{32}\.(png|json)$")
_SKIP_LABELS = {"not_found": "file not found", "not_a_regular_file": "not a regular file",
                "too_many_pixels": "too many pixels", "unreadable": "unreadable image"}


class PrepareError(Exception):
    """Bad options or shard files; the message names the file or option and what was expected."""


# --size: at least a pixel a side, and at most more than any detector's input (100000 x 100000 16-bit pixels
# would be 20 GB per image).
SIZE_RANGE = (1, 8192)


def check_size(size: Sequence[Any]) -> tuple[int, int]:
    """--size H W: two whole numbers within :data:`SIZE_RANGE`; PrepareError naming the option otherwise."""
    lo, hi = SIZE_RANGE
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise PrepareError(f"--size {' '.join(map(str, size))}: expected two whole numbers H W") from None
    if not (lo <= h <= hi and lo <= w <= hi):
        raise PrepareError(f"--size {h} {w}: each side must be between {lo} and {hi} pixels (the model's input "
                           f"size, e.g. --size 512 512)")
    return h, w


def check_workers(workers: Any) -> int:
    """--workers: processes preparing images, 1 or more; PrepareError naming the option otherwise."""
    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise PrepareError(f"--workers {workers}: expected a whole number of processes, 1 or more") from None
    if n < 1:
        raise PrepareError(f"--workers {n}: expected 1 or more processes (1: prepare in this process)")
    return n


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), shards numbered from 1 (1/3, 2/3, 3/3)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise PrepareError(f"--shard {text!r}: expected I/N, e.g. 2/8 (shard I of N, numbered from 1)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise PrepareError(f"--shard {text!r}: N = {n}, the number of shards, must be at least 1")
    if not 1 <= i <= n:
        raise PrepareError(f"--shard {text!r}: I must be between 1 and N = {n} (shards are numbered from 1, "
                           f"e.g. --shard $SLURM_ARRAY_TASK_ID/{n} with --array=1-{n})")
    return i, n


def shard_of(path: str, num_shards: int) -> int:
    """The shard (1..num_shards) an image belongs to: by a hash of its absolute path, so the assignment does
    not depend on the order or number of other records."""
    h = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(h[:8], "big") % num_shards + 1


def records_digest(records: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of the converted records (paths made absolute, numbers as floats), identical for the records
    in memory and the same records read back from records.json."""

    def canon(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): canon(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        if isinstance(v, (bool, str)) or v is None:
            return v
        if isinstance(v, (int, float, np.integer, np.floating)):
            return float(v)
        return str(v)

    rows = [canon(dict(r, file_name=os.path.abspath(r["file_name"]))) for r in records]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _options(size, crop, flip, decode="full", oversample=DEFAULT_OVERSAMPLE):
    """The options that change the pixels; the decode mode only where it can (a size given), so entries made by
    full decoding keep the key they had before reduced decoding existed."""
    if decode not in DECODE_MODES:
        raise PrepareError(f"decode {decode!r}: expected one of {', '.join(DECODE_MODES)}")
    options = {"size": [int(s) for s in size] if size else None, "crop": bool(crop), "canonical_flip": bool(flip)}
    if decode == "reduced" and size:
        if int(oversample) < 1:
            raise PrepareError(f"oversample {oversample!r}: expected an integer of at least 1")
        options.update(decode="reduced", oversample=int(oversample))
    return options


def _entry_name(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _source_key(st, path, options):
    return {"version": CACHE_VERSION, "source": {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
            "options": options}


def _load_entry(images, name, key):
    """('valid', sidecar) | ('absent', None) | ('corrupt', what is wrong) for the entry ``name``."""
    png, sidecar = os.path.join(images, name + ".png"), os.path.join(images, name + ".json")
    has_png, has_sidecar = os.path.exists(png), os.path.exists(sidecar)
    if not has_png and not has_sidecar:
        return "absent", None
    if not has_sidecar:
        return "corrupt", "PNG without its sidecar (a run stopped while writing it)"
    try:
        with open(sidecar, "rb") as f:
            meta = json.loads(f.read())
        transform = MammoTransform.from_dict(meta["transform"])
        png_sha256 = meta["png_sha256"]
    except Exception as e:
        return "corrupt", f"sidecar {sidecar} unreadable ({type(e).__name__}: {e})"
    if meta.get("key") != key:
        return "corrupt", f"sidecar {sidecar} holds another key"
    if not has_png:
        return "corrupt", "sidecar without its PNG"
    if os.path.getsize(png) == 0:
        return "corrupt", f"{png} is empty"
    if sha256_file(png) != png_sha256:
        return "corrupt", f"{png} is truncated or altered (SHA-256 differs from its sidecar)"
    meta["transform"] = transform
    return "valid", meta


def _rebuild_reason(key, previous):
    """Why an entry is missing, judged from the sidecars of the same source path found in the cache."""
    if any(p.get("options") == key["options"] and p.get("version") == key["version"] for p in previous):
        return "source changed"
    if any(p.get("version") == key["version"] for p in previous):
        return "options changed"
    return "cache format changed" if previous else None


def _scan_sidecars(images, paths):
    """Source path -> keys of the cache entries made from it (only for ``paths``)."""
    found = {}
    for n in os.listdir(images):
        if not (_ENTRY.match(n) and n.endswith(".json")):
            continue
        try:
            with open(os.path.join(images, n), "rb") as f:
                key = json.loads(f.read())["key"]
            path = key["source"]["path"]
        except Exception:  # damaged sidecars of other entries are reported when their own record is run
            continue
        if path in paths:
            found.setdefault(path, []).append(key)
    return found


def _prepare_one(job):
    index, record, images, options, previous = job
    path = os.path.abspath(record["file_name"])

    def skipped(kind: str, reason: str) -> dict[str, Any]:
        return {"index": index, "status": "skipped", "kind": kind, "reason": reason}

    try:
        st = check_regular_file(path)
    except ImageReadError as e:
        return skipped(e.kind, e.cause)
    key = _source_key(st, path, options)
    name = _entry_name(key)
    state, detail = _load_entry(images, name, key)
    reason = None
    if state == "valid" and detail.get("source_sha256") and sha256_file(path) != detail["source_sha256"]:
        state, reason, detail = "stale", "source changed", "same size and mtime, other content"
    if state == "valid":
        t = detail["transform"]
        if tuple(t.original_size) != (record["height"], record["width"]):
            return skipped("size_mismatch", _size_mismatch(t.original_size, record))
        return {"index": index, "status": "cached", "name": name, "transform": t.to_dict()}
    if state == "corrupt":
        reason = "corrupt cache file"
    elif state == "absent":
        reason = _rebuild_reason(key, previous)

    racy = time.time() - st.st_mtime_ns / 1e9 < RACY_SECONDS
    source_sha256 = sha256_file(path) if racy else None
    request = (ResolutionRequest(tuple(options["size"]), options["crop"], options["oversample"])
               if options.get("decode") == "reduced" else None)
    try:
        image, meta, _ = read_stored_image(path, keep_integers=True, resolution=request)
    except ImageReadError as e:
        return skipped(e.kind, e.cause)
    except Exception as e:  # a decoder failing in an unexpected way must not stop the whole run
        return skipped("unreadable", f"{type(e).__name__}: {e}")
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return skipped("changed_while_read", "the file changed while it was being read; run again")
    geometry = meta.get("decode_geometry")
    stored_shape = tuple(geometry.original_size) if geometry is not None else image.shape
    if stored_shape != (record["height"], record["width"]):
        return skipped("size_mismatch", _size_mismatch(stored_shape, record))
    out, t = preprocess(image, size=options["size"], crop=options["crop"], canonical_flip=options["canonical_flip"],
                        geometry=geometry)
    del image
    lo, hi = float(out.min()), float(out.max())
    u16 = ((out - lo) * (65535.0 / max(hi - lo, 1e-6))).round().astype(np.uint16)
    ok, png = cv2.imencode(".png", u16)
    if not ok:
        raise PrepareError(f"{path}: OpenCV could not encode the prepared image as PNG")
    png = png.tobytes()
    sidecar = {"key": key, "transform": t.to_dict(), "png_sha256": hashlib.sha256(png).hexdigest()}
    if source_sha256:
        sidecar["source_sha256"] = source_sha256
    atomic_write(os.path.join(images, name + ".png"), png)
    atomic_write(os.path.join(images, name + ".json"), json.dumps(sidecar).encode())  # last: marks complete
    return {"index": index, "status": "rebuilt" if reason else "prepared", "reason": reason, "detail": detail,
            "name": name, "transform": t.to_dict(), "decode_scale": geometry.scale if geometry is not None else 1}


def _size_mismatch(shape, record):
    return f"image is {shape[1]}x{shape[0]}, record says {record['width']}x{record['height']}"


def prepared_record(record: Mapping[str, Any], transform: MammoTransform, file_name: str,
                    options: Mapping[str, Any]) -> dict[str, Any]:
    """The record of the cached image: boxes in its pixels, the transform, the options it was prepared with
    and the original file kept."""
    boxes = transform.apply_boxes([a["bbox"] for a in record["annotations"]]) if record["annotations"] else []
    h, w = transform.size
    out = {k: v for k, v in record.items() if k not in ("annotations", "file_name", "height", "width")}
    out.update(file_name=file_name, height=h, width=w, original_file_name=record["file_name"],
               original_height=record["height"], original_width=record["width"],
               transform=transform.to_dict(), preprocess=dict(options),
               annotations=[box_annotation(b) for b in boxes])
    return out


def _shard_paths(out_dir, i, n):
    return (os.path.join(out_dir, f"records.shard-{i}-of-{n}.json"),
            os.path.join(out_dir, f"report.shard-{i}-of-{n}.json"))


def prepare_dataset(records: Sequence[dict], out_dir: str, size: Sequence[int] | None = (512, 512), crop: bool = True,
                    flip: bool = False, workers: int = 2, progress: bool = True, shard: tuple[int, int] | None = None,
                    prune_stale: bool = False, decode: str = "reduced",
                    oversample: int = DEFAULT_OVERSAMPLE) -> tuple[list[dict], dict[str, Any]]:
    """Prepare ``records`` into ``out_dir``/images; returns (prepared records, report dict).

    ``decode``: "reduced" decodes JPEG 2000 DICOMs at the coarsest resolution level whose breast crop spans at
    least ``oversample`` times ``size`` (only with a ``size``), "full" decodes every file in full. The report
    counts the images decoded at each scale (``decoded_at_scale``; cached entries are not decoded).

    Writes records.json and report.json to out_dir, or with ``shard=(i, n)`` only shard i's share of the
    records (see :func:`shard_of`) to records.shard-i-of-n.json and report.shard-i-of-n.json, for
    :func:`merge_shards`. ``prune_stale`` deletes cache entries no record uses (not with ``shard``).
    """
    if shard is not None:
        i, n = shard
        if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n):
            raise PrepareError(f"shard {shard!r}: expected (I, N) with 1 <= I <= N")
        if prune_stale:
            raise PrepareError("prune_stale needs every shard's records: prune when merging instead")
    images = os.path.join(out_dir, IMAGES)
    os.makedirs(images, exist_ok=True)
    options = _options(size, crop, flip, decode, oversample)
    digest = records_digest(records)
    chosen = [k for k, r in enumerate(records) if shard is None or shard_of(r["file_name"], shard[1]) == shard[0]]
    previous = _previous_keys(images, [records[k] for k in chosen], options)
    jobs = [(k, records[k], images, options, previous.get(os.path.abspath(records[k]["file_name"]), []))
            for k in chosen]
    results = []
    bar = tqdm(total=len(jobs), desc=f"prepare -> {out_dir}" + (f" (shard {shard[0]}/{shard[1]})" if shard else ""),
               unit="image", disable=not progress)
    with Pool(workers) if workers > 1 and len(jobs) > 1 else _Serial() as pool:
        for res in pool.imap_unordered(_prepare_one, jobs, chunksize=4):
            results.append(res)
            bar.update(1)
    bar.close()
    results.sort(key=lambda r: r["index"])
    prepared = [prepared_record(records[r["index"]], MammoTransform.from_dict(r["transform"]),
                                os.path.join(images, r["name"] + ".png"), options)
                for r in results if r["status"] != "skipped"]
    if shard is not None:
        rec_path, rep_path = _shard_paths(out_dir, *shard)
        save_records(prepared, rec_path)
        shard_report = {"shard": list(shard), "records_sha256": digest, "options": options,
                        "cache_version": CACHE_VERSION, "inputs": len(records), "results": results}
        atomic_write(rep_path, json.dumps(shard_report, indent=1).encode())  # last: marks the shard complete
        report = _report(records, results, options, digest, stale=None)
        report["shard"] = list(shard)
        logger.info("shard %d/%d: %s", shard[0], shard[1], _summary(report))
        return prepared, report
    return prepared, _finish(records, prepared, results, options, digest, out_dir, prune_stale)


SHARD_LOCK = ".mammo_tl.prepare-shard-{}-of-{}.lock"
_SHARD_LOCK = re.compile(r"^\.mammo_tl\.prepare-shard-(\d+)-of-(\d+)\.lock$")


class PrepareLock:
    """One writer per prepare OUTPUT: a whole run and a merge hold the folder's lock (mammo_tl.files.FolderLock)
    and refuse while any shard runs there; the shards of one job array run side by side, each holding its own
    shard's lock, and refuse while a whole run or a merge holds the folder. Each side takes its own lock before
    looking for the other's, so two that start together never both proceed."""

    def __init__(self, output, command, shard=None):
        self.output, self.shard = output, shard
        name = SHARD_LOCK.format(*shard) if shard else LOCK_NAME
        self.lock = FolderLock(output, command, name=name)

    def __enter__(self):
        self.lock.acquire()
        try:
            if self.shard:
                holder = lock_holder(self.output)
                if holder:
                    raise FolderLocked(f"{self.output} is in use by {holder}: one run writes a folder at a time; "
                                       "wait for it to finish or use another folder")
            else:
                for n in sorted(os.listdir(self.output)):
                    m = _SHARD_LOCK.match(n)
                    holder = lock_holder(self.output, n) if m else None
                    if holder:
                        raise FolderLocked(f"{self.output} is in use by {holder} (shard {m.group(1)}/{m.group(2)}): "
                                           "wait for the shards to finish, then merge")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


def _previous_keys(images, records, options):
    """For records whose cache entry is absent: keys of other entries made from the same source path."""
    missing = set()
    for r in records:
        path = os.path.abspath(r["file_name"])
        try:
            st = os.stat(path)
        except OSError:
            continue
        name = _entry_name(_source_key(st, path, options))
        if not os.path.exists(os.path.join(images, name + ".json")):
            missing.add(path)
    return _scan_sidecars(images, missing) if missing else {}


def _report(records, results, options, digest, stale):
    counts = Counter(r["status"] for r in results)
    rebuilt = [r for r in results if r["status"] == "rebuilt"]
    skipped = [r for r in results if r["status"] == "skipped"]

    def item(r: Mapping[str, Any]) -> dict[str, Any]:
        rec = records[r["index"]]
        return {"file_name": os.path.abspath(rec["file_name"]), "image_id": rec["image_id"], "reason": r["reason"]}

    report = {"inputs": len(results), "used": len(results) - counts["skipped"], "prepared": counts["prepared"],
              "cached": counts["cached"], "rebuilt": counts["rebuilt"],
              "rebuilt_by_reason": dict(sorted(Counter(r["reason"] for r in rebuilt).items())),
              "skipped": counts["skipped"],
              "skipped_by_reason": dict(sorted(Counter(_SKIP_LABELS.get(r["kind"], r["kind"].replace("_", " "))
                                                       for r in skipped).items())),
              "skipped_items": [item(r) for r in skipped],
              "rebuilt_items": [dict(item(r), detail=r["detail"]) if r["detail"] else item(r) for r in rebuilt],
              "options": options, "cache_version": CACHE_VERSION, "records_sha256": digest,
              "decoded_at_scale": {str(k): n for k, n in sorted(Counter(r["decode_scale"] for r in results
                                                                        if "decode_scale" in r).items())}}
    if stale is not None:
        report.update(stale)
    return report


def _finish(records, prepared, results, options, digest, out_dir, prune_stale):
    """Stale entries, records.json and report.json of a whole data set (one run or merged shards)."""
    stale = _stale_entries(os.path.join(out_dir, IMAGES), {os.path.basename(r["file_name"]) for r in prepared},
                           prune_stale)
    report = _report(records, results, options, digest, stale)
    save_records(prepared, os.path.join(out_dir, "records.json"))
    atomic_write(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1).encode())
    logger.info("%s", _summary(report))
    if stale["stale_cache_files"]:
        logger.warning("%d cache file(s) in %s are used by no record (%.1f MB; other options, changed sources or "
                       "stopped runs)%s", stale["stale_cache_files"], os.path.join(out_dir, IMAGES),
                       stale["stale_cache_bytes"] / 1e6, ": deleted" if prune_stale else
                       "; tools/prepare_dataset.py --prune-stale deletes them")
    return report


def _summary(report):
    def why(counts: Mapping[str, int]) -> str:
        return f" ({', '.join(f'{n} {r}' for r, n in counts.items())})" if counts else ""

    return (f"{report['used']} of {report['inputs']} images used: {report['prepared']} prepared, {report['cached']} "
            f"from cache, {report['rebuilt']} rebuilt{why(report['rebuilt_by_reason'])}, {report['skipped']} "
            f"skipped{why(report['skipped_by_reason'])}")


def _stale_entries(images, used_png_names, prune):
    """Files in the cache folder that no prepared record uses: entries made with other options or from
    changed sources, temporary files of stopped runs, entries of older mammo_tl versions."""
    used = {os.path.splitext(n)[0] for n in used_png_names}
    files, size = 0, 0
    for n in sorted(os.listdir(images)):
        p = os.path.join(images, n)
        if os.path.splitext(n)[0] in used or not os.path.isfile(p):
            continue
        files += 1
        size += os.path.getsize(p)
        if prune:
            os.remove(p)
    return {"stale_cache_files": files, "stale_cache_bytes": size, "stale_pruned": bool(prune and files)}


def merge_shards(records: Sequence[dict], out_dir: str, num_shards: int | None = None,
                 prune_stale: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """Combine shards 1..N of ``records`` prepared into ``out_dir`` into records.json and report.json,
    exactly as one unsharded run would have written them. Refuses (:class:`PrepareError`, naming the
    shard) a missing shard, or one made with other options or from other converted records."""
    found = {}
    for n in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r"report\.shard-(\d+)-of-(\d+)\.json", n)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if num_shards is None:
        if len(found) != 1:
            raise PrepareError(f"{out_dir}: " + ("no shard reports (report.shard-I-of-N.json) found" if not found else
                               f"shard reports of several runs, N = {sorted(found)}: pass the number of shards"))
        num_shards = next(iter(found))
    missing = sorted(set(range(1, num_shards + 1)) - found.get(num_shards, set()))
    if missing:
        raise PrepareError(f"{out_dir}: shard(s) {', '.join(f'{i}/{num_shards}' for i in missing)} missing or "
                           f"unfinished (no report.shard-I-of-{num_shards}.json): run them with --shard I/{num_shards}")
    digest = records_digest(records)
    results, prepared, options = [], [], None
    for i in range(1, num_shards + 1):
        _, rep_path = _shard_paths(out_dir, i, num_shards)
        try:
            with open(rep_path, "rb") as f:
                rep = json.loads(f.read())
            shard_results = rep["results"]
        except Exception as e:
            raise PrepareError(f"{rep_path}: unreadable shard report ({type(e).__name__}: {e}); "
                               f"run shard {i}/{num_shards} again") from None
        if rep.get("records_sha256") != digest:
            raise PrepareError(f"{rep_path}: shard {i}/{num_shards} was prepared from other converted records than "
                               f"{out_dir}'s records (converted again since?); run shard {i}/{num_shards} again")
        if rep.get("cache_version") != CACHE_VERSION:
            raise PrepareError(f"{rep_path}: shard {i}/{num_shards} was prepared by another mammo_tl version "
                               f"(cache version {rep.get('cache_version')}, this one {CACHE_VERSION}); run it again")
        if options is None:
            options, first = rep.get("options"), i
        elif rep.get("options") != options:
            raise PrepareError(f"{rep_path}: shard {i}/{num_shards} was prepared with options {rep.get('options')}, "
                               f"shard {first}/{num_shards} with {options}; run every shard with the same options")
        expected = [k for k, r in enumerate(records) if shard_of(r["file_name"], num_shards) == i]
        if sorted(r["index"] for r in shard_results) != expected:
            raise PrepareError(f"{rep_path}: shard {i}/{num_shards} does not hold this shard's images; run it again")
        results += shard_results
    results.sort(key=lambda r: r["index"])
    images = os.path.join(out_dir, IMAGES)
    _check_merged_entries(records, results, images, options, num_shards, out_dir)
    prepared += [prepared_record(records[r["index"]], MammoTransform.from_dict(r["transform"]),
                                 os.path.join(images, r["name"] + ".png"), options)
                 for r in results if r["status"] != "skipped"]
    return prepared, _finish(records, prepared, results, options, digest, out_dir, prune_stale)


def _check_merged_entries(records, results, images, options, num_shards, out_dir):
    """Refuse to merge when a cache entry a shard prepared is gone (pruned, deleted), damaged, or no longer made
    from its source as it is now (the source changed after the shard ran): records.json would name missing PNGs,
    or pixels of an older file. Checked as a run checks its cache: the source's path, size and mtime (and
    SHA-256 where the sidecar holds one), the sidecar's key and the PNG's SHA-256."""
    problems, shards = [], set()
    for r in results:
        if r["status"] == "skipped":
            continue
        path = os.path.abspath(records[r["index"]]["file_name"])
        png = os.path.join(images, r["name"] + ".png")
        try:
            st = os.stat(path)
        except OSError as e:
            problem = f"{path}: source unreadable now ({type(e).__name__})"
        else:
            key = _source_key(st, path, options)
            state, detail = _load_entry(images, r["name"], key) if _entry_name(key) == r["name"] else \
                ("changed", None)
            if state == "valid" and detail.get("source_sha256") and sha256_file(path) != detail["source_sha256"]:
                state = "changed"
            problem = None if state == "valid" else (
                f"{png}: missing (pruned or deleted)" if not os.path.exists(png) else
                f"{path}: source changed since its shard prepared it" if state == "changed" else f"{png}: {detail}")
        if problem:
            problems.append(problem)
            shards.add(shard_of(path, num_shards))
    if problems:
        again = ", ".join(f"{i}/{num_shards}" for i in sorted(shards))
        raise PrepareError(f"{out_dir}: {len(problems)} prepared image(s) the shards' records name cannot be merged, "
                           f"e.g. {'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}. records.json is "
                           f"left as it was; run shard(s) {again} again (they prepare these images anew), then merge")


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(fn: Callable[[Any], Any], jobs: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        return map(fn, jobs)
