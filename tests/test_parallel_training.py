"""Trainings side by side (mammo_tl.experiments.rows.train_at_once, tools/demo.py --jobs): threads shared out,
each training's output in its own log, and a failing training stops the others and is named. The commands here
are small Python programs standing in for tools/train_net.py, so the scheduling is tested without training."""
import json
import os
import subprocess
import sys
import time

import pytest

from mammo_tl.experiments.rows import TRAINING_LOG, _last_iteration, run_rows, threads_per_job, train_at_once

WRITER = ("import json, os, sys, time\n"
          "out, n = sys.argv[1], int(sys.argv[2])\n"
          "with open(os.path.join(out, 'metrics.json'), 'w') as f:\n"
          "    for i in range(n):\n"
          "        f.write(json.dumps({'iteration': i, 'total_loss': 1.0}) + '\\n')\n"
          "print('threads', os.environ.get('OMP_NUM_THREADS'), 'start', time.time(), flush=True)\n"
          "time.sleep(float(sys.argv[3]))\n"
          "print('end', time.time(), flush=True)\n"
          "sys.exit(int(sys.argv[4]))\n")


def _training(tmp_path, name, iters=3, sleep=0.5, code=0):
    out = tmp_path / name
    return name, str(out), [sys.executable, "-c", WRITER, str(out), str(iters), str(sleep), str(code)], iters


def _times(tmp_path, name):
    words = (tmp_path / name / TRAINING_LOG).read_text().split()
    return words[1], float(words[3]), float(words[5])


def test_threads_are_the_cores_shared_out():
    assert [threads_per_job(j, 2) for j in (1, 2, 3)] == [2, 1, 1]
    assert threads_per_job(2, 16) == 8 and threads_per_job(3, 16) == 5


def test_two_jobs_run_side_by_side_with_their_share_of_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    train_at_once([_training(tmp_path, "a", sleep=2.5), _training(tmp_path, "b", sleep=2.5)], jobs=2, poll=0.05)
    (ta, a0, a1), (tb, b0, b1) = _times(tmp_path, "a"), _times(tmp_path, "b")
    assert ta == tb == "2"  # 4 cores, 2 jobs
    assert max(a0, b0) < min(a1, b1)  # the two ran at the same time
    assert _last_iteration(str(tmp_path / "a")) == 2


def test_one_job_at_a_time_keeps_the_callers_thread_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    train_at_once([_training(tmp_path, "a", sleep=0.2), _training(tmp_path, "b", sleep=0.2)], jobs=1, poll=0.05)
    (ta, _, a1), (tb, b0, _) = _times(tmp_path, "a"), _times(tmp_path, "b")
    assert ta == tb == "3" and a1 <= b0  # in turn


def test_a_failing_training_stops_the_others_and_is_named(tmp_path):
    slow = _training(tmp_path, "slow", sleep=60)
    bad = _training(tmp_path, "bad", sleep=0.1, code=3)
    start = time.time()
    with pytest.raises(subprocess.CalledProcessError) as e:
        train_at_once([slow, bad, _training(tmp_path, "never")], jobs=2, poll=0.05)
    assert time.time() - start < 30  # the 60 s training was stopped
    assert e.value.returncode == 3 and e.value.cmd == bad[2]
    assert e.value.output == f"see {tmp_path / 'bad' / TRAINING_LOG}"
    assert not (tmp_path / "never").exists()  # not started after the failure
    assert "end" not in (tmp_path / "slow" / TRAINING_LOG).read_text()


def test_last_iteration_reads_what_detectron2_writes(tmp_path):
    assert _last_iteration(str(tmp_path)) == -1  # no metrics.json yet
    lines = [{"iteration": 19, "loss": 1}, {"iteration": 39}, {"no_iteration": 1}, "not json"]
    (tmp_path / "metrics.json").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    assert _last_iteration(str(tmp_path)) == 39


def test_jobs_with_several_gpus_per_training_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--jobs 2"):
        run_rows([], str(tmp_path), num_gpus=2, jobs=2)
    with pytest.raises(ValueError, match="--jobs 0"):
        run_rows([], str(tmp_path), jobs=0)
