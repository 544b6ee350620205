"""tools/predict.py's options: checked before any work, each error naming the option or file at fault."""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..config import get_mammo_tl_cfg
from ..data.inputs import PatientsCsvError, read_patients_csv, read_regular_file
from ..evaluation.operating_points import FILE_NAME as OPERATING_POINTS_FILE
from ..evaluation.operating_points import OperatingPointError, load_operating_points

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)


class PredictError(Exception):
    """tools/predict.py cannot run or finish; the message names the file, folder or option at fault."""


def check_min_score(value: Any) -> float:
    """--min-score: a finite number in [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--min-score must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"--min-score must be a finite number in [0, 1], got {value!r}")
    return v


def check_max_pixels(value: Any) -> int:
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


def check_workers(value: Any) -> int:
    """--workers: processes decoding images beside the model, 0 or more (0: decoded in this process)."""
    return _whole_number("--workers", value, 0)


def check_batch_size(value: Any) -> int:
    """--batch-size: images per model call, 1 or more."""
    return _whole_number("--batch-size", value, 1)


def default_workers() -> int:
    """min(4, the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def build_cfg(config_file: str, opts: Sequence[str], min_score: float) -> CfgNode:
    """The frozen config predict (and the DICOM node) runs: ``config_file`` + ``opts``, the ROI heads' score
    threshold lowered to ``min_score``; PredictError naming the file or the overrides."""
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


def check_device(cfg: CfgNode, amp: bool) -> None:
    """PredictError when MODEL.DEVICE is CUDA without one, or ``amp`` off CUDA."""
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise PredictError(f"MODEL.DEVICE {device}: {why} (torch {torch.__version__}); use --device cpu")
    if amp and not device.startswith("cuda"):
        raise PredictError(f"--amp: mixed precision runs on CUDA only, and the device is {device!r}; drop --amp "
                           f"or use --device cuda")


def _patients_table(path, files):
    """--patients: (file -> CSV entry for the inputs it lists, summary counts, sha256 of the bytes read); CSV
    rows naming no input and inputs missing from the CSV are counted and logged. The file is read once (a
    FIFO or pipe is refused), so the sha256 --resume compares is that of the rows used."""
    try:
        data = read_regular_file(path)
        entries = read_patients_csv(path, data=data)
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
                     "rows_not_among_inputs": len(not_inputs), "inputs_not_listed": len(not_listed)}, \
        hashlib.sha256(data).hexdigest()


def load_operating_point(name: str, file: str | None, weights: str, min_score: float) -> dict[str, Any]:
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


def dicom_config_name(config_file: str) -> str:
    """The config as the DICOM outputs name it: its folder and file name (configs/paper/x.yaml -> paper/x.yaml)."""
    path = os.path.abspath(config_file)
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def argparse_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from a check that raises ValueError: argparse then reports the message."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


PHANTOM_PREFIX = "mammo_synth_"  # the built-in synthetic sets (mammo_tl.data.datasets.synthetic)


def warn_if_trained_on_phantoms(cfg: Any, files: Sequence[str]) -> str | None:
    """A warning (logged, and returned) when a model trained only on the built-in synthetic phantoms
    (DATASETS.TRAIN) predicts DICOM files: it has never seen a real mammogram, and its operating points come from
    phantoms. None otherwise."""
    train = list(cfg.DATASETS.TRAIN)
    dicoms = [f for f in files if str(f).lower().endswith((".dcm", ".dicom"))]
    if not train or not dicoms or not all(str(n).startswith(PHANTOM_PREFIX) for n in train):
        return None
    message = (f"this model was trained on the built-in synthetic phantoms only (DATASETS.TRAIN {train}) and is "
               f"predicting {len(dicoms)} DICOM file(s): it has never seen a real mammogram, so its boxes on real "
               "films say nothing about them, and its operating points were chosen on phantoms. Train on your "
               "data first (docs/getting_started.md)")
    logger.warning("%s", message)
    return message


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options tools/predict.py and tools/serve.py share: what is reported (--min-score, the operating
    point), what is read (--max-pixels) and how the model runs (--batch-size, --device)."""
    from ..data.image_io import DEFAULT_MAX_PIXELS

    p.add_argument("--min-score", type=argparse_type(check_min_score), default=0.05,
                   help="report boxes scoring at least this, 0 to 1 (default 0.05)")
    p.add_argument("--max-pixels", type=argparse_type(check_max_pixels), default=DEFAULT_MAX_PIXELS,
                   help=f"skip images with more pixels than this, before decoding them (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--operating-point", metavar="NAME",
                   help="recall decisions and layers at this stored operating point")
    p.add_argument("--operating-points", metavar="FILE",
                   help="the operating points file (default: operating_points.json beside MODEL.WEIGHTS)")
    p.add_argument("--batch-size", type=argparse_type(check_batch_size), default=1,
                   help="images per model call (default 1)")
    p.add_argument("--device", choices=("cuda", "cpu"), help="where the model runs (default: MODEL.DEVICE)")


def check_shard(value: Any) -> tuple[int, int]:
    """--shard I/N: shard I of N, numbered from 1 (tools/prepare_dataset.py's parse_shard)."""
    from ..data.prepare import PrepareError, parse_shard

    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{value[0]}/{value[1]}"
    try:
        return parse_shard(value)
    except PrepareError as e:
        raise ValueError(str(e)) from None


# What keeps images together in one shard, first that applies: the DICOM study, the --patients patient, the folder.
SHARD_KEYS = ("study", "patient", "folder")
_NOT_DICOM_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def shard_key(path: str, entry: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(kind, value) that decides an input's shard: ("study", StudyInstanceUID) for a DICOM file whose header
    has one (all images of a study in one shard, so its report covers them all), else ("patient", the
    --patients CSV's patient_id) for a file the CSV lists, else ("folder", its folder's absolute path). Only
    the header is read (up to the pixel data); a file that cannot be read falls through to the next key."""
    from ..data.dicom_header import read_header
    from ..data.image_checks import ImageReadError

    if not path.lower().endswith(_NOT_DICOM_SUFFIXES):
        try:
            uid = str(read_header(path).get("StudyInstanceUID", "") or "").strip()
        except ImageReadError:
            uid = ""
        if uid:
            return "study", uid
    if entry and entry.get("patient_id"):
        return "patient", str(entry["patient_id"])
    return "folder", os.path.dirname(os.path.abspath(path))


def shard_of_key(key: tuple[str, str], num_shards: int) -> int:
    """The shard (1..num_shards) of a :func:`shard_key`: by a hash of it, independent of the other inputs."""
    h = hashlib.sha256(f"{key[0]}:{key[1]}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(h[:8], "big") % num_shards + 1


def select_shard(files: Sequence[str], entries: Mapping[str, Mapping[str, Any]],
                 shard: tuple[int, int]) -> tuple[list[str], list[int], dict[str, int]]:
    """(shard ``shard``'s files in input order, their positions among ``files``, {key kind: inputs of this
    shard keyed by it})."""
    i, n = shard
    chosen, positions, kinds = [], [], dict.fromkeys(SHARD_KEYS, 0)
    for k, f in enumerate(files):
        key = shard_key(f, entries.get(f))
        if shard_of_key(key, n) == i:
            chosen.append(f)
            positions.append(k)
            kinds[key[0]] += 1
    return chosen, positions, kinds


def inputs_digest(files: Sequence[str]) -> str:
    """SHA-256 of the input list (absolute paths, in order): shards of one run share it."""
    return hashlib.sha256("\n".join(os.path.abspath(f) for f in files).encode("utf-8", "surrogateescape")).hexdigest()
