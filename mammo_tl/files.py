"""File helpers shared by preparation, evaluation and prediction: content hashes, atomic writes and folder locks."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from typing import IO, Any


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_json(obj: Any, path: str | os.PathLike, **kwargs) -> None:
    """json.dump to a temporary file beside ``path``, then rename: a killed run never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **kwargs)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it: readers see the old file or the
    whole new one, never a part (the temporary file is removed if the write fails)."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def durable_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], tmp_folder: str | None = None,
                  mode: int = 0o666) -> None:
    """``write(f)`` into a temporary file, flushed and fsync'ed, then renamed to ``path`` and the folder fsync'ed:
    a process killed (or a machine stopped) at any moment leaves the previous ``path`` whole, or the new one
    whole, never a part. The temporary file is ``.<name>.<pid>-<random>.partial`` beside ``path``, and partial
    files a killed writer left for ``path`` are removed first (call it only from the folder's one writer); or,
    with ``tmp_folder`` (on the same file system, cleared by its owner: a DICOM node's spool), ``<random>.part``
    there. ``mode``: the new file's permission bits before the umask (0o600: its owner's only)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if tmp_folder is None:
        for stale in os.listdir(folder):
            if stale.startswith(f".{name}.") and stale.endswith(".partial"):
                try:
                    os.remove(os.path.join(folder, stale))
                except OSError:
                    pass
        tmp = os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    else:
        tmp = os.path.join(tmp_folder, f"{uuid.uuid4().hex}.part")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (not on Linux): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def writable_folder_problem(folder: str | os.PathLike) -> str | None:
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
# The FolderLocks this process holds, by id: closed in every child forked while they are held (DataLoader
# workers), so the kernel's flock belongs to the process that took it alone and ends with it. Otherwise the
# workers a kill -9 orphans keep holding it, and the next run is refused until they exit.
_HELD_LOCKS: dict[int, FolderLock] = {}


def _close_inherited_locks() -> None:
    for lock in list(_HELD_LOCKS.values()):
        fd, lock.fd = lock.fd, None
        if fd is not None:
            try:
                os.close(fd)  # the parent's descriptor of the same open file keeps the flock
            except OSError:
                pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


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


def _read_holder(fd):
    """The holder recorded in an open lock file: a dict, or None when empty or half written."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        holder = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder):
    if not holder:
        return "another process (its lock is being written)"
    return (f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})")


def _flock(fd, shared=False):
    """True: locked; False: another open file holds it; None: this file system has no flock."""
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ENOSYS (e.g. a Lustre mount without flock)
        return None
    return True


def lock_holder(folder: str | os.PathLike, name: str = LOCK_NAME) -> str | None:
    """A description of the live process holding ``folder/name`` (or of a holder on another host, which cannot be
    checked from here), or None when the lock is free. Probes without taking the lock for more than a moment."""
    import socket

    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        locked = _flock(fd, shared=True)
        holder = _read_holder(fd)
        if locked is False:
            return _describe(holder)
        if holder and holder.get("host") != socket.gethostname():
            return _describe(holder)
        if locked is None and holder and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]):
            return _describe(holder)
        return None
    finally:
        os.close(fd)  # releases the probe's shared flock


class FolderLock:
    """One writer per output folder: ``with FolderLock(folder, "predict"):`` holds ``folder/.mammo_tl.lock``
    (another ``name`` for a lock of one part of a folder) until the block ends, normally or by an exception.

    The lock is the kernel's ``flock`` on that file, which ends with the process holding it, however it ends; the
    file records the holder's command, pid, host and start time for the messages, and is removed on release. A
    second process asking for the same folder gets :class:`FolderLocked` naming the holder. A lock file left by a
    process that died (no flock on it any more) is taken over, with a warning. A lock file written on another host
    is refused even then: whether that process still runs cannot be checked from here (flock does not reach every
    network file system), and the message says which file to remove by hand. On a file system without flock the
    recorded pid decides (a live pid on this host holds the folder), with a warning that two processes starting
    at the same instant could both proceed. Children forked while the lock is held (DataLoader workers) close
    their copy of it at once: only the process that took the lock holds it, so a lock whose owner was killed
    is free however long its orphaned workers live."""

    def __init__(self, folder, command, name=LOCK_NAME):
        self.folder, self.command, self.path = folder, command, os.path.join(folder, name)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _refuse(self, holder, fd):
        os.close(fd)
        raise FolderLocked(f"{self.folder} is in use by {_describe(holder)}: one run writes a folder at a time; "
                           f"wait for it to finish or use another folder")

    def acquire(self) -> FolderLock:
        import datetime
        import logging
        import socket

        if self.held:
            raise FolderLocked(f"{self.folder}: this process already holds {self.path}")
        os.makedirs(self.folder, exist_ok=True)
        me = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        log = logging.getLogger(__name__)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _flock(fd)
            if locked is False:
                self._refuse(_read_holder(fd), fd)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (file removed) between our open and flock: open the new file
                os.close(fd)
                continue
            holder = _read_holder(fd)
            if holder and holder.get("host") != me["host"]:
                os.close(fd)
                raise FolderLocked(
                    f"{self.folder} is in use by {_describe(holder)}: one run writes a folder at a time. That host's "
                    f"process cannot be checked from here; if it is no longer running, remove {self.path}")
            if locked is None:
                if holder and isinstance(holder.get("pid"), int) and holder["pid"] != me["pid"] \
                        and _pid_alive(holder["pid"]):
                    self._refuse(holder, fd)
                log.warning("%s: the file system does not support flock; the folder lock relies on the recorded pid",
                            self.folder)
            if holder:
                log.warning("%s: lock left by %s, which is no longer running; taken over", self.folder,
                            _describe(holder))
            data = json.dumps(me).encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self.fd = fd
            _HELD_LOCKS[id(self)] = self
            return self
        raise FolderLocked(f"{self.folder}: its lock {self.path} kept changing; another process is starting there")

    def release(self) -> None:
        if not self.held:
            return
        fd, self.fd = self.fd, None
        _HELD_LOCKS.pop(id(self), None)
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.remove(self.path)  # before closing: a process that opened it meanwhile sees it gone, retries
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
