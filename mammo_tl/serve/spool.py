"""The DICOM node's spool (tools/serve.py): received instances, results and what was sent, on disk, so that a
node killed at any moment finishes every study and sends every result when it starts again.

Layout under the spool folder::

    tmp/                                  instances being received (renamed into their study when complete)
    studies/<StudyInstanceUID>/
        instances/<SOPInstanceUID>.dcm    every instance received (one file per SOP Instance UID)
        results/                          the presentation states and the report, then done.json (written last)
        results.new/                      results being written (removed, or completed, at start)
        sent/<destination>/<SOPInstanceUID>  one empty file per result acknowledged by that destination
        processed                         written when every destination acknowledged every result
    destinations.json                     each destination's key and the time results started to go to it
    status.json                           the running node's counts

The spool holds patient data: its folders are made 0700 and its files 0600 (a spool found readable by others is
made 0700 at start, and said so), whatever the umask.

Every file is written to a temporary name, fsynced, renamed, and its folder fsynced: after a crash a file is
whole or absent. A study is predicted again when its instances differ from those done.json names (an instance
added, or received again with other bytes), or when done.json was made by another model, config or options (the
spool's ``made_by``: a node restarted with other weights predicts what it holds again, rather than sending
another model's findings as its own). A result's SOP Instance UID is derived from what it says (the patient
module, the source study, series and image, the boxes and scores, the model): the same instances give the same
UIDs, and a result whose UID a destination acknowledged is not sent there again; a corrected patient identity
gives new UIDs, which are sent. A study's new report names the report its results held before, and those that
one named (Predecessor Documents Sequence).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .. import files

TMP, STUDIES, INSTANCES, RESULTS, NEW_RESULTS, SENT = "tmp", "studies", "instances", "results", "results.new", "sent"
DONE, PROCESSED = "done.json", "processed"
DESTINATIONS, STATUS = "destinations.json", "status.json"
FOLDER_MODE, FILE_MODE = 0o700, 0o600  # patient data: the node's user only
logger = logging.getLogger("mammo_tl.serve")


def _create(path: str):
    """A new file (``path`` must not exist) open for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")


def make_folder(path: str) -> None:
    """``os.makedirs`` with the spool's mode (0700) for every folder it creates (the parents too)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path:
        make_folder(parent)
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def fsync_folder(folder: str) -> None:
    """Make a rename or a removal in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def durable_write(path: str, data: bytes, tmp_folder: str) -> None:
    """Write ``data`` to ``path`` so that, once this returns, it survives a crash (:func:`mammo_tl.files.durable_write`
    with its temporary file in ``tmp_folder``, readable by the node's user only). Raises OSError."""
    files.durable_write(path, lambda f: f.write(data), tmp_folder=tmp_folder, mode=FILE_MODE)


class Spool:
    """The spool folder (see the module's doc). ``lock`` orders what changes a study's folder as a whole (an
    instance renamed into it, results committed, the study removed by retention)."""

    def __init__(self, folder: str, made_by: Mapping[str, Any] | None = None):
        self.folder = os.path.abspath(folder)
        self.made_by = dict(made_by or {})
        self.lock = threading.Lock()
        self.since: dict[str, float] = {}  # destination key -> results made before this time are not sent there
        self._said: set[str] = set()  # what was logged once (a stray entry, an unreadable done.json)
        make_folder(self.folder)
        mode = os.stat(self.folder).st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.folder, FOLDER_MODE)
            logger.warning("spool %s: was readable by others (mode %03o); made 0700 (it holds patient data)",
                           self.folder, mode)
        for sub in (TMP, STUDIES):
            make_folder(os.path.join(self.folder, sub))
        for name in os.listdir(self.tmp):  # parts of instances a stopped node was receiving: never acknowledged
            path = os.path.join(self.tmp, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
            else:
                logger.warning("spool %s: %s is not a file this node writes; left there", self.folder, path)
        for study in self.studies():
            self._finish_commit(study)

    @property
    def tmp(self) -> str:
        return os.path.join(self.folder, TMP)

    def study(self, study_uid: str, *names: str) -> str:
        return os.path.join(self.folder, STUDIES, study_uid, *names)

    def studies(self) -> list[str]:
        """The studies' folders; anything else under studies/ (a stray file) is logged once and left alone."""
        folder = os.path.join(self.folder, STUDIES)
        out = []
        for name in sorted(os.listdir(folder)):
            if os.path.isdir(os.path.join(folder, name)) and not os.path.islink(os.path.join(folder, name)):
                out.append(name)
            elif self._once(f"stray:{name}"):
                logger.warning("spool %s: %s is not a study folder; left alone", self.folder,
                               os.path.join(folder, name))
        return out

    def _once(self, what: str) -> bool:
        """True the first time ``what`` is asked about (what is logged once)."""
        with self.lock:
            new = what not in self._said
            self._said.add(what)
        return new

    # ---- instances ---------------------------------------------------------------------------------------
    def store(self, study_uid: str, sop_uid: str, data: bytes) -> bool:
        """Durably store an instance; False when the same bytes were already stored (nothing written)."""
        path = self.study(study_uid, INSTANCES, f"{sop_uid}.dcm")
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return False
        except FileNotFoundError:
            pass
        tmp = os.path.join(self.tmp, f"{uuid.uuid4().hex}.part")
        try:
            with _create(tmp) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self.lock:
                make_folder(os.path.dirname(path))
                os.replace(tmp, path)
                fsync_folder(os.path.dirname(path))
                fsync_folder(self.study(study_uid))
                fsync_folder(os.path.dirname(self.study(study_uid)))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return True

    def instances(self, study_uid: str) -> dict[str, list[int]]:
        """{file name: [size, mtime_ns]} of the study's instances."""
        folder = self.study(study_uid, INSTANCES)
        out = {}
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            st = os.stat(os.path.join(folder, name))
            out[name] = [st.st_size, st.st_mtime_ns]
        return out

    # ---- results -----------------------------------------------------------------------------------------
    def done(self, study_uid: str) -> dict[str, Any] | None:
        """The study's done.json, or None while it has no committed results. A done.json that cannot be read
        (truncated, not JSON: a damaged disk) counts as none, said once: the study is predicted again."""
        path = self.study(study_uid, RESULTS, DONE)
        try:
            with open(path, encoding="utf-8") as f:
                done = json.load(f)
            if not isinstance(done, dict) or not isinstance(done.get("outputs", []), list):
                raise ValueError("not a done.json object")
            return done
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            if self._once(f"done:{path}:{size}"):
                logger.warning("study %s: %s cannot be read (%s: %s); its results are made again", study_uid, path,
                               type(e).__name__, e)
            return None

    def pending(self, study_uid: str) -> bool:
        """Whether the study's instances are not (all, or not as they are now) those its results describe, or its
        results were made by another model, config or options than ``made_by``."""
        done = self.done(study_uid)
        current = self.instances(study_uid)
        return bool(current) and (done is None or done.get("inputs") != current
                                  or done.get("made_by", {}) != self.made_by)

    def new_results(self, study_uid: str) -> str:
        """An empty results.new/ folder for the study's next results."""
        folder = self.study(study_uid, NEW_RESULTS)
        shutil.rmtree(folder, ignore_errors=True)
        make_folder(os.path.dirname(folder))
        os.mkdir(folder, FOLDER_MODE)
        return folder

    def commit_results(self, study_uid: str, inputs: Mapping[str, list[int]], outputs: Iterable[str],
                       info: Mapping[str, Any]) -> dict[str, Any]:
        """Make results.new/ (holding ``outputs``) the study's results: files fsynced, done.json written last
        (with each output's SOP Instance UID and sha256), then renamed into place. Returns done.json's content."""
        import pydicom

        from ..files import sha256_file

        folder = self.study(study_uid, NEW_RESULTS)
        files = []
        for name in outputs:
            path = os.path.join(folder, name)
            os.chmod(path, FILE_MODE)
            fsync_file(path)
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            files.append({"name": name, "sop_instance_uid": uid, "sha256": sha256_file(path)})
        done = {**info, "inputs": dict(inputs), "made_by": self.made_by, "outputs": files, "time": time.time()}
        durable_write(os.path.join(folder, DONE), json.dumps(done, indent=1).encode(), folder)
        with self.lock:
            self._finish_commit(study_uid)
        return done

    def _finish_commit(self, study_uid):
        """results.new/ with its done.json replaces results/; one without done.json is an unfinished write."""
        new, old = self.study(study_uid, NEW_RESULTS), self.study(study_uid, RESULTS)
        if not os.path.isdir(new):
            return
        if not os.path.isfile(os.path.join(new, DONE)):
            shutil.rmtree(new)
            return
        shutil.rmtree(old, ignore_errors=True)
        os.replace(new, old)
        if os.path.exists(self.study(study_uid, PROCESSED)):
            os.remove(self.study(study_uid, PROCESSED))
        fsync_folder(self.study(study_uid))

    # ---- sending -----------------------------------------------------------------------------------------
    def unsent(self, study_uid: str, destination: str) -> list[dict[str, str]]:
        """The study's results that ``destination`` has not acknowledged, in sending order."""
        done = self.done(study_uid)
        if not done or done.get("time", 0) < self.since.get(destination, 0):
            return []
        sent = self.study(study_uid, SENT, destination)
        return [o for o in done["outputs"] if not os.path.exists(os.path.join(sent, o["sop_instance_uid"]))]

    def mark_sent(self, study_uid: str, destination: str, sop_instance_uid: str) -> None:
        folder = self.study(study_uid, SENT, destination)
        make_folder(folder)
        durable_write(os.path.join(folder, sop_instance_uid), b"", self.tmp)

    def mark_processed(self, study_uid: str) -> float:
        """The time every result of the study was acknowledged by every destination (recorded once)."""
        path = self.study(study_uid, PROCESSED)
        if not os.path.exists(path):
            durable_write(path, str(time.time()).encode(), self.tmp)
        try:
            with open(path, encoding="utf-8") as f:
                return float(f.read())
        except ValueError:  # damaged: written again
            durable_write(path, str(time.time()).encode(), self.tmp)
            return time.time()

    def register_destinations(self, keys: Iterable[str], backlog: bool = False) -> list[str]:
        """Record the destinations the node sends to (destinations.json). One not sent to before gets only the
        results made from now on, not the retained ones, unless ``backlog``; returns the new ones. A spool
        without destinations.json (made before it was kept) takes every destination as known."""
        path = os.path.join(self.folder, DESTINATIONS)
        known: dict[str, float] | None
        try:
            with open(path, encoding="utf-8") as f:
                known = {str(k): float(v) for k, v in json.load(f).items()}
        except FileNotFoundError:
            known = None if self.studies() else {}
        except (ValueError, TypeError, AttributeError, OSError) as e:
            logger.warning("spool %s: %s cannot be read (%s); every destination taken as known", self.folder, path,
                           type(e).__name__)
            known = None
        now = time.time()
        new = [k for k in keys if known is not None and k not in known]
        self.since = {k: (known or {}).get(k, 0.0 if backlog or known is None else now) for k in keys}
        try:
            durable_write(path, json.dumps(self.since, indent=1).encode(), self.tmp)
        except OSError as e:  # a full disk: the node starts all the same, and records them at a later start
            logger.error("spool %s: %s cannot be written (%s: %s); the destinations are recorded at the next start",
                         self.folder, path, type(e).__name__, e.strerror or e)
        return new

    def write_status(self, status: Mapping[str, Any]) -> None:
        """status.json, durably (raises OSError, e.g. on a full disk)."""
        durable_write(os.path.join(self.folder, STATUS), json.dumps(status).encode(), self.tmp)

    def remove_study(self, study_uid: str) -> bool:
        """Remove a processed study (retention), unless an instance arrived since its results were made."""
        with self.lock:
            if self.pending(study_uid):
                return False
            shutil.rmtree(self.study(study_uid))
            fsync_folder(os.path.join(self.folder, STUDIES))
        return True
