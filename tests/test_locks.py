"""mammo_tl.files.FolderLock: one writer per folder, refused with the holder named; a lock of a dead process
taken over; a lock from another host refused; released on exit and on exception; one winner of a real race."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mammo_tl.files import LOCK_NAME, FolderLock, FolderLocked, lock_holder

FILES_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mammo_tl", "files.py")
# A child that loads files.py alone (stdlib only: starts in milliseconds, not detectron2's seconds).
CHILD = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("mammo_files", {FILES_PY!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
folder, start, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    pass
try:
    with m.FolderLock(folder, "child"):
        print("won", flush=True)
        time.sleep(hold)
except m.FolderLocked as e:
    print("lost", e, flush=True)
"""


def _write_lock(folder, **holder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump(holder, f)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_held_lock_refused_naming_the_holder(tmp_path):
    folder = str(tmp_path / "out")
    with FolderLock(folder, "train_net"):
        with pytest.raises(FolderLocked) as e:
            FolderLock(folder, "predict").acquire()
        msg = str(e.value)
        assert f"{folder} is in use by train_net (pid {os.getpid()} on {socket.gethostname()}, since " in msg
        assert lock_holder(folder).startswith(f"train_net (pid {os.getpid()} on {socket.gethostname()}")
        with open(os.path.join(folder, LOCK_NAME)) as f:
            held = json.load(f)
        assert (held["command"], held["pid"], held["host"]) == ("train_net", os.getpid(), socket.gethostname())
    assert lock_holder(folder) is None


def test_held_by_another_process_refused(tmp_path):
    folder = str(tmp_path / "out")
    child = subprocess.Popen([sys.executable, "-c", CHILD, folder, "0", "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "won"
        with pytest.raises(FolderLocked, match=rf"in use by child \(pid {child.pid} on {socket.gethostname()}"):
            FolderLock(folder, "prepare").acquire()
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_dead_pid_taken_over(tmp_path, caplog):
    folder = str(tmp_path / "out")
    dead = _dead_pid()
    _write_lock(folder, command="predict", pid=dead, host=socket.gethostname(), started="2026-01-01T00:00:00")
    with caplog.at_level(logging.WARNING, logger="mammo_tl.files"), FolderLock(folder, "train_net"), \
            open(os.path.join(folder, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == os.getpid()
    assert f"lock left by predict (pid {dead} on {socket.gethostname()}" in caplog.text
    assert "taken over" in caplog.text
    assert not os.path.exists(os.path.join(folder, LOCK_NAME))


def test_lock_of_killed_holder_taken_over(tmp_path):
    """A holder killed with SIGKILL leaves its lock file; the kernel's lock on it ended with the process."""
    folder = str(tmp_path / "out")
    child = subprocess.Popen([sys.executable, "-c", CHILD, folder, "0", "60"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "won"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with open(os.path.join(folder, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == child.pid  # left behind
    assert lock_holder(folder) is None
    with FolderLock(folder, "train_net"):
        assert lock_holder(folder).startswith(f"train_net (pid {os.getpid()}")


def test_lock_naming_a_live_reused_pid_taken_over(tmp_path):
    """The file names a pid that runs again (here: this test's parent), but nothing holds the lock: the pid was
    reused after the holder died. Judging by the pid alone would refuse the folder forever."""
    folder = str(tmp_path / "out")
    _write_lock(folder, command="predict", pid=os.getppid(), host=socket.gethostname(), started="2026-01-01")
    with FolderLock(folder, "train_net"), open(os.path.join(folder, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == os.getpid()


def test_lock_from_another_host_refused(tmp_path):
    folder = str(tmp_path / "out")
    _write_lock(folder, command="predict", pid=1234, host="gpu-node-7.example", started="2026-01-01T10:00:00")
    with pytest.raises(FolderLocked) as e:
        FolderLock(folder, "train_net").acquire()
    path = os.path.join(folder, LOCK_NAME)
    assert str(e.value) == (f"{folder} is in use by predict (pid 1234 on gpu-node-7.example, since 2026-01-01T10:00:00)"
                            f": one run writes a folder at a time. That host's process cannot be checked from here; "
                            f"if it is no longer running, remove {path}")
    with open(path) as f:
        assert json.load(f)["host"] == "gpu-node-7.example"  # left as it was
    assert lock_holder(folder).startswith("predict (pid 1234 on gpu-node-7.example")


def test_released_on_exit_and_on_exception(tmp_path):
    folder = str(tmp_path / "out")
    path = os.path.join(folder, LOCK_NAME)
    with FolderLock(folder, "a") as lock:
        assert lock.held and os.path.exists(path)
    assert not lock.held and not os.path.exists(path)
    with pytest.raises(ValueError, match="boom"), FolderLock(folder, "b"):
        raise ValueError("boom")
    assert not os.path.exists(path)
    with FolderLock(folder, "c"):  # free again
        pass


def test_separate_names_are_separate_locks(tmp_path):
    folder = str(tmp_path / "out")
    with FolderLock(folder, "shard 1/2", name=".mammo_tl.shard-1-of-2.lock"), \
            FolderLock(folder, "shard 2/2", name=".mammo_tl.shard-2-of-2.lock"):
        assert lock_holder(folder) is None
        assert lock_holder(folder, ".mammo_tl.shard-1-of-2.lock").startswith("shard 1/2 (pid")


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale_lock_left"])
def test_processes_racing_for_one_folder_one_wins(tmp_path, stale):
    """Four processes ask for one folder at the same instant, three rounds: exactly one wins each round, also when
    they all find a stale lock to take over (two takers must not both remove it and both proceed)."""
    for round_ in range(3):
        folder = str(tmp_path / f"race{round_}")
        if stale:
            _write_lock(folder, command="old", pid=_dead_pid(), host=socket.gethostname(), started="2026-01-01")
        start = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, folder, str(start), "1.0"], stdout=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        won = [o for o in outs if o.startswith("won")]
        lost = [o for o in outs if o.startswith("lost")]
        assert (len(won), len(lost)) == (1, 3), outs
        assert all("is in use by" in o for o in lost), outs
        assert not os.path.exists(os.path.join(folder, LOCK_NAME))


def test_two_takers_of_a_stale_lock_interleaved_one_wins(tmp_path, monkeypatch):
    """Deterministic form of the takeover race: two threads both read the stale lock before either acts on it
    (a barrier inside the read), then t1 acts late. Removing "the stale file" by what t1 read earlier would remove
    t0's fresh lock and let both proceed."""
    import threading

    import mammo_tl.files as files

    folder = str(tmp_path / "out")
    _write_lock(folder, command="old", pid=_dead_pid(), host=socket.gethostname(), started="2026-01-01")
    barrier = threading.Barrier(2, timeout=10)
    real = files._read_holder

    def read_together(fd):
        holder = real(fd)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        if threading.current_thread().name == "t1":
            time.sleep(0.3)  # t0 acts on what it read first: removes the stale file and writes its own lock
        return holder

    monkeypatch.setattr(files, "_read_holder", read_together)
    results, locks = [], []

    def take(name):
        try:
            locks.append(FolderLock(folder, name).acquire())
            results.append("won")
        except FolderLocked:
            results.append("lost")

    threads = [threading.Thread(target=take, args=(f"t{i}",), name=f"t{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["lost", "won"]
    for lock in locks:
        lock.release()


# A run that forks a worker while it holds the lock (as predict's DataLoader does), then is killed with -9: the
# worker lives on, orphaned.
FORKING_CHILD = f"""
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("mammo_files", {FILES_PY!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
lock = m.FolderLock(sys.argv[1], "predict").acquire()
worker = os.fork()
if worker == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)  # the test reads the owner's output to its end
    time.sleep(60)
    os._exit(0)
print(worker, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_lock_of_a_killed_owner_is_free_while_its_forked_workers_live(tmp_path, caplog):
    folder = str(tmp_path / "out")
    run = subprocess.run([sys.executable, "-c", FORKING_CHILD, folder], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL
    worker = int(run.stdout.split()[0])
    try:
        os.kill(worker, 0)  # the orphaned worker is alive...
        assert os.path.exists(os.path.join(folder, LOCK_NAME))
        # ...and the lock is taken over at once
        with caplog.at_level(logging.WARNING, logger="mammo_tl.files"), FolderLock(folder, "predict --resume"):
            assert "no longer running; taken over" in caplog.text
    finally:
        os.kill(worker, signal.SIGKILL)
