"""Finished runs kept without their weights, and put back (tools/archive_runs.py).

An experiment that outlives the machine it runs on (runs over several sessions, or a report rebuilt elsewhere)
keeps each finished run's small files: its config.yaml, run_inputs.json (the records' digest and every image's
SHA-256), metrics.json, validation_curve.json, selection.json, operating_points.json and its test evaluation
(inference/ and inference_final/: eval_results.json, patient_metrics.json, patients.csv, images.json). Left out, and
listed in the archive: the weights (``*.pth``), TensorBoard events, logs, lock files, detectron2's per-box results
(coco_instances_results.json, several MB per evaluation), its ground-truth cache (``*_coco_format.json``) and
this machine's sizes and mtimes of its images (run_inputs.local.json, a cache of the image hashes).

``archived.json`` in each archived run names every file it keeps with its SHA-256, every file left out, and the
SHA-256 of the weights its test results belong to (the validation-chosen checkpoint) and of model_final.pth. From
it:

* a restored run is *finished*: tools/demo.py, tools/budget_curve.py and tools/run_ablation.py reuse it, under the
  same guarantees as a run trained there (same config, same records, same image content: run_inputs.json);
* its operating points are checked against the recorded digest of its weights, as they are against the weights
  themselves in a complete run;
* the reports show everything but what needs per-box results (the gallery and the scores by finding say why).

Restoring checks every file against its recorded SHA-256 first, and refuses a folder that holds another run.
"""
from __future__ import annotations

import datetime
import fnmatch
import os
import shutil
from collections.abc import Iterator

from ..evaluation.runs import ARCHIVE_FILE, is_finished, load_archive, selected_weights
from ..files import atomic_write_json, sha256_file

FORMAT = 1
# what is left out of an archive (file names, matched anywhere in the run folder)
LEFT_OUT = ("*.pth", "last_checkpoint", "events.out.tfevents.*", "log.txt*", "training_output.log", "*.lock",
            ".mammo_tl.lock", "coco_instances_results.json", "*_coco_format.json", "run_inputs.local.json")


class ArchiveError(ValueError):
    """An archive that cannot be written or restored; the message names the folder or file."""


def _left_out(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in LEFT_OUT)


def _files(run_dir: str) -> Iterator[str]:
    """Every regular file under ``run_dir``, relative to it, sorted."""
    for root, dirs, names in os.walk(run_dir):
        dirs.sort()
        for n in sorted(names):
            path = os.path.join(root, n)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.relpath(path, run_dir)


def find_runs(root: str) -> tuple[list[str], list[str]]:
    """(finished, unfinished) run folders under ``root`` (relative to it): folders holding a config.yaml, finished
    when they hold inference/eval_results.json and the weights it belongs to (or are archived runs)."""
    finished, unfinished = [], []
    for here, dirs, names in os.walk(root):
        dirs.sort()
        if "config.yaml" not in names:
            continue
        dirs[:] = []  # a run's own sub-folders (inference/ ...) hold no runs
        rel = os.path.relpath(here, root)
        (finished if is_finished(here) else unfinished).append(rel)
    return finished, unfinished


def archive_run(run_dir: str, dest: str) -> dict:
    """Copy the finished run ``run_dir``'s small files to ``dest`` with archived.json (the module docstring);
    returns the archive record. A ``dest`` already holding this archive is left as it is; one holding anything
    else is refused."""
    if load_archive(run_dir) is not None:
        record = load_archive(run_dir)  # an archived run archived again: its record stands
        weights = record["weights"]
    else:
        selected = selected_weights(run_dir)
        final = os.path.join(run_dir, "model_final.pth")
        for path in (os.path.join(run_dir, "inference", "eval_results.json"), selected, final):
            if not os.path.exists(path):
                raise ArchiveError(f"{run_dir}: not a finished run ({path} not found): only finished runs are archived")
        weights = {os.path.relpath(p, run_dir): sha256_file(p) for p in dict.fromkeys((selected, final))}
    kept, left_out = {}, []
    for rel in _files(run_dir):
        if rel == ARCHIVE_FILE:
            continue
        if _left_out(os.path.basename(rel)):
            left_out.append(rel)
        else:
            kept[rel] = sha256_file(os.path.join(run_dir, rel))
    record = {"format": FORMAT, "weights": weights, "files": kept, "left_out": left_out,
              "archived_from": os.path.abspath(run_dir),
              "archived_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    held = load_archive(dest) if os.path.isdir(dest) else None
    if held is not None:
        if held.get("files") == kept and held.get("weights") == weights:
            return held  # archived before, the same files
        raise ArchiveError(f"{dest} holds the archive of another run (or of this one with other files): remove it "
                           f"or archive to another folder")
    if os.path.isdir(dest) and os.listdir(dest):
        raise ArchiveError(f"{dest} is not empty and holds no archive: choose another folder")
    for rel in kept:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(run_dir, rel), os.path.join(dest, rel))
    atomic_write_json(record, os.path.join(dest, ARCHIVE_FILE), indent=1)
    return record


def check_archive(run_dir: str, allow_left_out: bool = False) -> dict:
    """The archived run's record after checking that every file it names is there with its SHA-256 and that it holds
    no other file (with ``allow_left_out``, none but files an archive leaves out: the lock and log a reuse writes);
    ArchiveError names the first that is not."""
    try:
        record = load_archive(run_dir)
    except (OSError, ValueError) as e:
        raise ArchiveError(f"{os.path.join(run_dir, ARCHIVE_FILE)}: unreadable ({e})") from None
    if record is None or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        raise ArchiveError(f"{os.path.join(run_dir, ARCHIVE_FILE)}: not an archive of format {FORMAT}")
    for rel, digest in record["files"].items():
        path = os.path.join(run_dir, rel)
        if not os.path.isfile(path):
            raise ArchiveError(f"{path}: named in {ARCHIVE_FILE} but missing")
        if sha256_file(path) != digest:
            raise ArchiveError(f"{path}: its content differs from the SHA-256 {ARCHIVE_FILE} recorded")
    extra = [rel for rel in _files(run_dir) if rel != ARCHIVE_FILE and rel not in record["files"]
             and not (allow_left_out and _left_out(os.path.basename(rel)))]
    if extra:
        raise ArchiveError(f"{os.path.join(run_dir, extra[0])}: not part of the archive ({len(extra)} such file(s))")
    return record


def _needs_restoring(record: dict, dest: str) -> bool:
    """False when ``dest`` already holds the archived run ``record``, True when it holds nothing or only a
    run_inputs.json (written for a run not started yet); refuses a ``dest`` that holds anything else."""
    if not os.path.isdir(dest):
        return True
    held = load_archive(dest) if os.path.exists(os.path.join(dest, ARCHIVE_FILE)) else None
    if held is not None and held.get("files") == record["files"] and held.get("weights") == record["weights"]:
        return False
    others = [rel for rel in _files(dest) if rel != "run_inputs.json"]
    if others:
        raise ArchiveError(f"{dest} holds another run or part of one (e.g. {others[0]}): remove it, or restore into "
                           f"another folder")
    return True


def restore_run(archived: str, dest: str) -> bool:
    """Copy the archived run ``archived`` (checked first) to ``dest``; False when ``dest`` already holds it. A
    ``dest`` holding anything but a run_inputs.json (written for a run not yet started) is refused."""
    record = check_archive(archived)
    if not _needs_restoring(record, dest):
        return False
    for rel in [*record["files"], ARCHIVE_FILE]:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(archived, rel), os.path.join(dest, rel))
    return True


def archive_runs(src: str, dest: str) -> dict[str, list[str]]:
    """Archive every finished run under ``src`` into the same place under ``dest``; returns the runs archived,
    those already there, and the unfinished ones left (relative folders)."""
    if not os.path.isdir(src):
        raise ArchiveError(f"{src}: no such folder")
    finished, unfinished = find_runs(src)
    out = {"archived": [], "unchanged": [], "unfinished": unfinished}
    for rel in finished:
        target = os.path.join(dest, rel)
        before = load_archive(target) if os.path.exists(os.path.join(target, ARCHIVE_FILE)) else None
        archive_run(os.path.join(src, rel), target)
        out["unchanged" if before is not None else "archived"].append(rel)
    return out


def restore_runs(archive: str, output: str) -> dict[str, list[str]]:
    """Restore every archived run under ``archive`` into the same place under ``output``; returns the runs restored
    and those already there. Every archive, and every folder it would go to, is checked before any is copied."""
    if not os.path.isdir(archive):
        raise ArchiveError(f"{archive}: no such folder")
    runs = []
    for here, dirs, names in os.walk(archive):
        dirs.sort()
        if ARCHIVE_FILE in names:
            dirs[:] = []
            runs.append(os.path.relpath(here, archive))
    if not runs:
        raise ArchiveError(f"{archive}: holds no archived run ({ARCHIVE_FILE})")
    for rel in runs:  # every archive and every destination checked before any run is copied
        _needs_restoring(check_archive(os.path.join(archive, rel)), os.path.join(output, rel))
    out = {"restored": [], "unchanged": []}
    for rel in runs:
        done = restore_run(os.path.join(archive, rel), os.path.join(output, rel))
        out["restored" if done else "unchanged"].append(rel)
    return out


def describe(result: dict[str, list[str]]) -> str:
    """One line per kind of outcome, with the runs: what tools/archive_runs.py prints."""
    return "\n".join(f"{kind}: {len(runs)}" + (f" ({', '.join(runs)})" if runs else "")
                     for kind, runs in result.items())
