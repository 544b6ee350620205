"""File helpers shared by preparation, evaluation and prediction: content hashes and atomic writes."""
import hashlib
import json
import os


def sha256_file(path, block=1 << 20):
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_json(obj, path, **kwargs):
    """json.dump to a temporary file beside ``path``, then rename: a killed run never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def writable_folder_problem(folder):
    """None when ``folder`` is (or can be made) a folder a file can be written to; else why not. Checked by
    writing and removing a probe file, before any long work that would write there."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return "exists and is not a folder"
    probe = os.path.join(folder, f".mammo_tl_write_probe.{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as e:
        return f"not a writable folder ({type(e).__name__}: {e})"
    return None


LOCK_NAME = ".mammo_tl.lock"


class FolderLocked(RuntimeError):
    """Another live process (or one on another host) holds a folder's lock; the message names it."""


def _pid_alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _lock_holder(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class FolderLock:
    """One writer per output folder: ``with FolderLock(folder, "predict"):`` creates ``folder/.mammo_tl.lock``
    (O_EXCL) holding the holder's command, pid, host and start time, and removes it on exit.

    A second process asking for the same folder gets :class:`FolderLocked` naming the holder. A lock left by a
    dead process on this host (pid no longer running) is stale: it is replaced, with a warning. A lock from
    another host cannot be checked from here and is refused; the message says how to remove it by hand.
    A lock that cannot be read (half written) counts as held, unless it is older than ``stale_unreadable_s``."""

    def __init__(self, folder, command, stale_unreadable_s=60.0):
        self.folder, self.command, self.path = folder, command, os.path.join(folder, LOCK_NAME)
        self.stale_unreadable_s = stale_unreadable_s
        self.held = False

    def _describe(self, holder):
        return (f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"since {holder.get('started', '?')})")

    def acquire(self):
        import datetime
        import logging
        import socket
        import time

        os.makedirs(self.folder, exist_ok=True)
        me = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is None:
                    try:
                        age = time.time() - os.path.getmtime(self.path)
                    except OSError:
                        continue  # removed meanwhile: try again
                    if age < self.stale_unreadable_s:
                        raise FolderLocked(f"{self.folder} is in use: its lock {self.path} is being written by "
                                           f"another process; try again") from None
                    stale = True
                elif holder.get("host") == me["host"]:
                    stale = not (isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]))
                else:
                    raise FolderLocked(
                        f"{self.folder} is in use by {self._describe(holder)}: one run writes a folder at a time. "
                        f"That host's process cannot be checked from here; if it is no longer running, remove "
                        f"{self.path}") from None
                if not stale:
                    raise FolderLocked(f"{self.folder} is in use by {self._describe(holder)}: one run writes a "
                                       f"folder at a time; wait for it to finish or use another folder") from None
                logging.getLogger(__name__).warning(
                    "%s: lock left by %s, which is no longer running; taken over", self.folder,
                    self._describe(holder) if holder else "an unreadable lock file")
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise FolderLocked(f"{self.folder}: its lock {self.path} kept changing; another process is starting there")

    def release(self):
        if self.held:
            holder = _lock_holder(self.path)
            if holder is not None and holder.get("pid") == os.getpid():
                os.remove(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
