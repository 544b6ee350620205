"""tools/predict.py's output folders: checked writable first, locked for the run, a previous run found,
resumed (same settings, and per image the same file content) or removed.

Each folder predict writes (--output, --dicom-out) holds ``manifest.json``: {"output": the --output folder
that owns it, "files": {name: sha256}} of every file predict wrote there (null while a file is still being
appended to). --overwrite removes only listed files whose content is unchanged; --dicom-out belongs to one
--output, and another --output writing into it is refused.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import yaml

from ..config import flatten_config
from ..files import FolderLock, FolderLocked, sha256_file, writable_folder_problem
from ..outputs import OutputError, write_json
from .options import PredictError

logger = logging.getLogger(__name__)
JSONL, RUN = "predictions.jsonl", "run.json"
FINAL_FILES = ("predictions.json", "patients.csv", "skipped.json", "summary.json")
OVERLAYS = "overlays"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Keys that may differ between a run and its --resume without changing any result.
_RESUME_IGNORED_KEYS = ("MODEL.DEVICE", "MODEL.WEIGHTS")
# Options a run.json written before they existed stands for with these values.
_OPTION_DEFAULTS = {"amp": False, "patients_sha256": None, "operating_point": None, "model": None, "shard": None,
                    "decode": "full"}


def _run_record(cfg, options):
    weights = cfg.MODEL.WEIGHTS
    sha = sha256_file(weights) if weights and os.path.isfile(weights) else None
    return {"weights": weights, "weights_sha256": sha, "options": options, "config": cfg.dump()}


def _resume_differences(old, new):
    """What differs between the recorded run and this one, in words; [] when it may be resumed."""
    diffs = []
    if old.get("weights_sha256") != new["weights_sha256"]:
        what = "the model" if (old.get("options") or {}).get("model") or new["options"].get("model") \
            else "MODEL.WEIGHTS"
        diffs.append(f"{what} ({old.get('weights')} then, {new['weights']} now: different files)")
    old_options = old.get("options", {})
    for k, v in new["options"].items():
        before = old_options.get(k, _OPTION_DEFAULTS.get(k))
        if before != v:
            what = "JPEG 2000 decoding" if k == "decode" else f"--{k.replace('_', '-')}"
            diffs.append(f"{what} ({before!r} then, {v!r} now)")
    a, b = (flatten_config(yaml.safe_load(r["config"]) or {}) for r in (old, new))
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
                                   f"--overwrite to start again (it removes this file, which its "
                                   f"{MANIFEST} lists as this tool's)") from None
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


class _Folder:
    """What --output and --dicom-out share: the writable check, the lock, the manifest."""

    option = ""

    def __init__(self, folder):
        self.folder = folder
        _writable_folder(folder, self.option)
        self.manifest = None  # read once the folder is locked

    def path(self, *names: str) -> str:
        return os.path.join(self.folder, *names)

    def lock(self) -> FolderLock:
        """The folder's lock (files.FolderLock), acquired, then the folder's manifest read; PredictError naming
        the holder when another process holds it."""
        try:
            lock = FolderLock(self.folder, "tools/predict.py").acquire()
        except FolderLocked as e:
            raise PredictError(f"{self.option} {e}") from None
        try:
            self.manifest = self._read_manifest()
        except PredictError:
            lock.release()
            raise
        return lock

    def _read_manifest(self):
        path = self.path(MANIFEST)
        if not os.path.lexists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            files = data["files"]
            if not (isinstance(files, dict) and all(isinstance(v, (str, type(None))) for v in files.values())):
                raise ValueError("'files' is not a mapping of names to sha256")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PredictError(f"{self.option} {path}: not a manifest written by tools/predict.py "
                               f"({type(e).__name__}: {e}); move it away or use another folder") from None
        data["files"] = {n: h for n, h in files.items() if self._own_name(n)}
        return data

    def _own_name(self, name):
        """A name this folder's manifest may list (nothing outside the folder, nothing odd)."""
        return isinstance(name, str) and name == os.path.normpath(name) and not os.path.isabs(name) \
            and not name.startswith("..") and name not in (MANIFEST, ".mammo_tl.lock")

    def write_manifest(self, owner: str, files: Mapping[str, str | None]) -> None:
        """Replace manifest.json: ``files`` {name: sha256 or None (being written)} owned by ``owner``."""
        self.manifest = {"format_version": MANIFEST_VERSION, "written_by": "tools/predict.py",
                         "output": owner, "files": dict(sorted(files.items()))}
        try:
            write_json(self.path(MANIFEST), self.manifest)
        except OutputError as e:
            raise PredictError(str(e)) from None

    def listed(self) -> dict[str, str | None]:
        return dict(self.manifest["files"]) if self.manifest else {}

    def present(self) -> list[str]:
        """Every file in the folder (and its overlays/), relative names, but the manifest and the lock."""
        names = []
        for sub in ("", OVERLAYS):
            folder = self.path(sub) if sub else self.folder
            if not os.path.isdir(folder):
                continue
            for n in sorted(os.listdir(folder)):
                name = os.path.join(sub, n) if sub else n
                if os.path.isfile(self.path(name)) and self._own_name(name):
                    names.append(name)
        return names

    def removal_plan(self, listed: Mapping[str, str | None],
                     removable_unhashed: Collection[str] = ()) -> tuple[list[str], list[str], list[str]]:
        """(names to remove, names left: listed but changed, names left: not listed) for --overwrite.
        ``removable_unhashed``: listed names known to be this tool's whatever their sha256 (none yet, or a log
        damaged since)."""
        remove, changed = [], []
        for name, sha in sorted(listed.items()):
            p = self.path(name)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            ok = name in removable_unhashed or (sha is not None and sha256_file(p) == sha)
            (remove if ok else changed).append(name)
        unlisted = [n for n in self.present() if n not in listed]
        return remove, changed, unlisted

    def remove(self, names: Iterable[str]) -> None:
        _remove([self.path(n) for n in names] + ([self.path(MANIFEST)] if os.path.lexists(self.path(MANIFEST))
                                                 else []))
        self.manifest = None

    def warn_left(self, changed: Sequence[str], unlisted: Sequence[str]) -> None:
        if changed:
            logger.warning("--overwrite: %s: %d file(s) written by the previous run but changed since, left in "
                           "place: %s", self.folder, len(changed), _few(changed))
        if unlisted:
            logger.warning("--overwrite: %s: %d file(s) this tool did not write (not in its %s), left in "
                           "place: %s", self.folder, len(unlisted), MANIFEST, _few(unlisted))


def _few(names, n=5):
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class _Output(_Folder):
    """The output folder: checked writable first, previous run detected, results appended as they come."""

    option = "--output"

    def previous_run(self) -> list[str]:
        found = [n for n in (JSONL, RUN) + FINAL_FILES + (MANIFEST,) if os.path.exists(self.path(n))]
        overlays = self.path(OVERLAYS)
        if os.path.isdir(overlays) and os.listdir(overlays):
            found.append(OVERLAYS + "/")
        return found

    def remove_previous_run(self) -> None:
        """--overwrite: the files the manifest lists, unchanged, and the overlays the previous run's records
        name with their sha256, go; everything else stays, named in a warning. Refused (nothing removed) when
        a file this run writes would stay: it would be replaced without having been ours."""
        listed = self.listed()
        # a line of the log damaged on disk (not JSON at all) does not make it another program's file: the
        # manifest lists it as this tool's, and its readable records still name their overlays
        records = _jsonl_records_or_none(self.path(JSONL), skip_unparsable=JSONL in listed)
        for r in (records or {}).values():
            if isinstance(r.get("overlay"), str) and isinstance(r.get("overlay_sha256"), str) \
                    and self._own_name(r["overlay"]):
                listed.setdefault(r["overlay"], r["overlay_sha256"])
        # a stopped run's log has no sha256 yet, and a log damaged on disk has another: listed as this tool's, it
        # goes when every line that is JSON is one of this tool's records
        remove, changed, unlisted = self.removal_plan(listed, (JSONL,) if records is not None else ())
        blocking = [n for n in (JSONL, RUN) + FINAL_FILES if n in changed or n in unlisted]
        if blocking:
            raise PredictError(f"--overwrite: {self.folder} holds {', '.join(blocking)}, which this tool did not "
                               f"write or which changed since (not listed in {MANIFEST} with their sha256); "
                               f"they are not removed, and this run would replace them: move them away, or use "
                               f"another --output")
        self.remove(remove)
        overlays = self.path(OVERLAYS)
        try:
            if os.path.isdir(overlays) and not os.listdir(overlays):
                os.rmdir(overlays)
        except OSError as e:
            raise PredictError(f"--overwrite: {e.filename}: cannot be removed ({type(e).__name__}: "
                               f"{e.strerror})") from None
        self.warn_left(changed, unlisted)


def _jsonl_records_or_none(path, skip_unparsable=False):
    """The records of a predictions.jsonl when every complete line is one of this tool's records; None when
    it is missing or any line is not. ``skip_unparsable``: lines that are not JSON at all (damaged bytes) are
    left out instead; a JSON line that is not a record still gives None."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return None
    records = {}
    for line in lines[:-1]:
        if skip_unparsable:
            try:
                json.loads(line)
            except ValueError:
                continue
        try:
            r = json.loads(line)
            if not (isinstance(r, dict) and isinstance(r["file_name"], str) and r["status"] in ("predicted",
                                                                                              "skipped")):
                return None
        except (ValueError, KeyError, TypeError):
            return None
        records[r["file_name"]] = r
    return records


def _remove(paths):
    try:
        for p in paths:
            os.remove(p)
    except OSError as e:
        raise PredictError(f"--overwrite: {e.filename}: cannot be removed ({type(e).__name__}: "
                           f"{e.strerror})") from None


class _DicomFolder(_Folder):
    """--dicom-out: checked writable first; the presentation states and reports of a previous run found; the
    --output that owns it (its manifest's "output")."""

    option = "--dicom-out"

    def __init__(self, folder):
        from ..outputs.dicom import is_output_file

        self._is_ours = is_output_file
        super().__init__(folder)

    def _own_name(self, name):
        return super()._own_name(name) and os.sep not in name

    def present(self) -> list[str]:
        return sorted(n for n in os.listdir(self.folder) if os.path.isfile(self.path(n)) and self._own_name(n))

    def previous_run(self) -> list[str]:
        return sorted(n for n in os.listdir(self.folder)
                      if self._is_ours(n) and os.path.isfile(os.path.join(self.folder, n)))

    def owner(self) -> str | None:
        return self.manifest.get("output") if self.manifest else None

    def check_owner(self, output: str, resume: bool) -> None:
        """Refuse another --output's folder, and (with --resume) a folder whose files no manifest accounts
        for: a report written now must cover every image of its study that this folder's reports cover."""
        owner = self.owner()
        if owner is not None and owner != output:
            raise PredictError(
                f"--dicom-out {self.folder} belongs to --output {owner} (its {MANIFEST} says so): its reports "
                f"cover that run's images, and a run into another --output would replace them with reports "
                f"that miss those. Add images to that run (--output {owner} --resume, with all the inputs), or "
                f"use another --dicom-out")
        if resume and owner is None and self.previous_run():
            raise PredictError(
                f"--dicom-out {self.folder} holds presentation states or reports but no {MANIFEST} saying which "
                f"--output wrote them, so --resume cannot tell whether its reports would cover them: use "
                f"another --dicom-out, or --overwrite (which leaves those files in place)")

    def remove_previous_run(self) -> list[str]:
        remove, changed, unlisted = self.removal_plan(self.listed())
        self.remove(remove)
        self.warn_left(changed, unlisted)
        return remove


def _resumable_records(out, record):
    """--resume: (the previous run's predicted records, its skipped records), by file name, after checking it
    ran with the same settings."""
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
        return {}, {}
    # skipped images are tried again (the file may have been fixed since); their records say why they were skipped
    records = _read_jsonl(out.path(JSONL))
    return ({k: r for k, r in records.items() if r.get("status") == "predicted"},
            {k: r for k, r in records.items() if r.get("status") == "skipped"})


FILE_KEYS = ("file_size", "file_mtime_ns", "file_sha256")


def content_change(record: Mapping[str, Any]) -> str | None:
    """Why a previous prediction no longer describes its file (None when the file's size, modification time
    and sha256 still equal the record's)."""
    path = record["file_name"]
    if not all(k in record for k in FILE_KEYS):
        return "predicted without the file's sha256 (an older version of this tool)"
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot be read now ({type(e).__name__})"
    if (st.st_size, st.st_mtime_ns) != (record["file_size"], record["file_mtime_ns"]):
        return "its size or modification time changed"
    try:
        sha = sha256_file(path)
    except OSError as e:
        return f"cannot be read now ({type(e).__name__})"
    return None if sha == record["file_sha256"] else "its content changed"


def reusable_records(done: Mapping[str, dict], files: Iterable[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """--resume: (the previous records of ``files`` whose file is unchanged, {file: why predicted again})."""
    reuse, changed = {}, {}
    for f in files:
        if f in done:
            why = content_change(done[f])
            if why is None:
                reuse[f] = done[f]
            else:
                changed[f] = why
    if changed:
        logger.warning("--resume: %d image(s) predicted by the previous run changed since, predicted again: %s",
                       len(changed), _few([f"{f} ({why})" for f, why in changed.items()], 3))
    return reuse, changed
