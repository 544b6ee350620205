"""What a training run was made from, so that a run is resumed or reused only on the data it started with:
the digest of the records of every DATASETS.TRAIN, TEST and VALIDATION set and each image's size, mtime and SHA-256
(OUTPUT_DIR/run_inputs.json). tools/train_net.py --resume and the experiments' reuse of finished runs
(mammo_tl.experiments) both check it."""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

from ..files import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from detectron2.config import CfgNode


class RunMismatch(RuntimeError):
    """An output folder holds a run made with another config or from other data."""


INPUTS_FILE = "run_inputs.json"
# a finished run's images as this machine has them (size, mtime, SHA-256), so that a reuse on a machine whose mtimes
# differ from the record's hashes each image once, not at every reuse; not part of the run (archives leave it out)
LOCAL_FILE = "run_inputs.local.json"


def run_inputs(cfg: CfgNode) -> tuple[str, list[str]]:
    """(SHA-256 of the records of every DATASETS.TRAIN, TEST and VALIDATION set of ``cfg`` as train_net loads them,
    the sorted absolute paths of the image files those records name)."""
    from detectron2.data import DatasetCatalog

    from ..data.datasets.common import register_json_datasets

    register_json_datasets(cfg.DATASETS.REGISTER_JSON)
    h = hashlib.sha256()
    files = set()
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST, *cfg.DATASETS.VALIDATION):
        records = DatasetCatalog.get(name)
        h.update(json.dumps([name, records], sort_keys=True, default=str).encode())
        files.update(os.path.abspath(r["file_name"]) for r in records if isinstance(r.get("file_name"), str))
    return h.hexdigest(), sorted(files)


def _image_key(path, known=None):
    """[size, mtime_ns, sha256] of an image file (None when unreadable); the recorded ``known`` is reused without
    reading the file again while its size and mtime are unchanged, as the preparation cache does."""
    try:
        st = os.stat(path)
        if known and list(known[:2]) == [st.st_size, st.st_mtime_ns]:
            return list(known)
        return [st.st_size, st.st_mtime_ns, sha256_file(path)]
    except OSError:
        return None


def _load_local(out: str) -> dict:
    """run_inputs.local.json's {path: [size, mtime_ns, sha256]}; {} when absent or not of that shape (it is only a
    cache: an entry is used only while the file's size and mtime equal it, and its SHA-256 is still compared with
    the run's record)."""
    try:
        with open(os.path.join(out, LOCAL_FILE)) as f:
            local = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(local, dict):
        return {}
    return {p: k for p, k in local.items() if isinstance(k, list) and len(k) == 3}


def check_inputs(out: str, inputs: tuple[str, list[str]], finished: bool) -> None:
    """Refuse a run folder made from other records, or from images whose content changed since (records
    unchanged); record the records' digest and each image's size, mtime and SHA-256 for the next check. A finished
    run's record is left as it is: it names what the run was made from, and an archive of the run holds its digest
    (an image's mtime differs on another machine; its SHA-256 is compared instead). This machine's sizes and mtimes of
    a finished run's images go to run_inputs.local.json, so that the next reuse reads only the images changed since."""
    digest, files = inputs
    path = os.path.join(out, INPUTS_FILE)
    recorded = {}
    if os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
    if recorded.get("records_sha256") is not None and recorded["records_sha256"] != digest:
        raise RunMismatch(f"{out} holds a run trained or evaluated on other records of its DATASETS.TRAIN/TEST/"
                          f"VALIDATION sets ({path}): choose another --output or remove {out}")
    if recorded.get("records_sha256") is None and finished:
        raise RunMismatch(f"{out} holds a finished run without a record of the data it was made from ({path}): "
                          f"choose another --output or remove {out}")
    images = recorded.get("images")
    if images is None and finished:
        raise RunMismatch(f"{out} holds a finished run without a record of its images' content ({path}, written by "
                          f"an earlier mammo_tl): it cannot be reused as made from today's images; choose another "
                          f"--output or remove {out}")
    images = images or {}
    local = _load_local(out) if finished else {}
    current = {p: _image_key(p, local.get(p) or images.get(p)) for p in files}
    if recorded.get("images") is not None:
        changed = [p for p in files if current[p] is None or images.get(p) is None or current[p][2] != images[p][2]]
        if changed:
            raise RunMismatch(f"{out} holds a run made from other image content: {len(changed)} of {len(files)} image "
                              f"file(s) its records name changed since (or are gone), e.g. {changed[:3]}: choose "
                              f"another --output or remove {out}")
    if finished and recorded.get("images") is not None:
        if current != images and current != local:
            atomic_write_json(current, os.path.join(out, LOCAL_FILE))
        return
    os.makedirs(out, exist_ok=True)
    atomic_write_json({"records_sha256": digest, "images": current}, path)
