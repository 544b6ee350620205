"""Checkpoints are written whole or not at all: a process killed (SIGKILL) in the middle of writing the best,
a periodic or the final checkpoint keeps the previous file and a last_checkpoint that names a complete one,
and --resume writes again a model_final.pth that such a kill cut short."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from mammo_tl.checkpoint import MammoCheckpointer
from tests.common import REPO


def _model(value):
    m = torch.nn.Linear(256, 256)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(value)
    return m


class _Trainer:
    """The trainer checkpointable as detectron2's DefaultTrainer is to its checkpointer: max_iter and iter."""

    def __init__(self, max_iter, it=0):
        self.max_iter, self.iter = max_iter, it

    def state_dict(self):
        return {"iteration": self.iter}

    def load_state_dict(self, state):
        self.iter = state["iteration"]


# Saves model_best (weights 1.0) with a periodic-less folder, so last_checkpoint names model_best.pth; then a
# better model (weights 2.0) as model_best, and the process is killed (SIGKILL: no cleanup, no finally) when
# half of the new file's bytes are written.
_KILLED_WHILE_SAVING = """
import io, os, signal, sys
import torch
sys.path.insert(0, {repo!r})
from tests.test_checkpoint_writes import _model
from mammo_tl.checkpoint import MammoCheckpointer

out = sys.argv[1]
MammoCheckpointer(_model(1.0), out).save("model_best", iteration=3)
real_save = torch.save

def save_half_then_die(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
MammoCheckpointer(_model(2.0), out).save(sys.argv[2], iteration=7)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model_best", "model_0000009", "model_final"])
def test_a_kill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    if name != "model_best":  # the file being replaced exists already (a rerun or a resumed run's final save)
        MammoCheckpointer(_model(0.5), str(out)).save(name, iteration=1)
    p = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING.format(repo=REPO), str(out), name], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    before = 0.5 if name != "model_best" else 1.0
    state = torch.load(out / f"{name}.pth", weights_only=True)  # whole: the previous content
    assert float(state["model"]["weight"][0, 0]) == before
    # last_checkpoint names a complete file, and --resume loads it
    assert (out / "last_checkpoint").read_text() == "model_best.pth"
    resumed = _model(9.0)
    MammoCheckpointer(resumed, str(out), purpose="train").resume_or_load("", resume=True)
    assert float(resumed.weight[0, 0].detach()) == 1.0
    # the next save clears what the killed one left
    assert [f for f in os.listdir(out) if f.endswith(".partial")]
    MammoCheckpointer(_model(3.0), str(out)).save(name, iteration=8)
    assert not [f for f in os.listdir(out) if f.endswith(".partial")]
    assert float(torch.load(out / f"{name}.pth", weights_only=True)["model"]["weight"][0, 0]) == 3.0


def test_resume_writes_again_a_final_checkpoint_a_kill_cut_short(tmp_path):
    """The last iteration's periodic checkpoint was written and tagged, then the run was killed while writing
    model_final.pth (as a version without atomic writes could be): resuming finds nothing left to train, so the
    final checkpoint is written from the resumed state instead of the truncated file being kept."""
    out = tmp_path / "run"
    out.mkdir()
    MammoCheckpointer(_model(4.0), str(out), trainer=_Trainer(10, 9)).save("model_0000009", iteration=9)
    good = (out / "model_0000009.pth").read_bytes()
    (out / "model_final.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        torch.load(out / "model_final.pth", weights_only=True)

    trainer = _Trainer(10)
    model = _model(0.0)
    checkpoint = MammoCheckpointer(model, str(out), purpose="train", trainer=trainer).resume_or_load("", resume=True)
    assert checkpoint["iteration"] == 9 and trainer.iter == 9
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 9 and final["trainer"] == {"iteration": 9}
    assert torch.equal(final["model"]["weight"], torch.full((256, 256), 4.0))
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def test_resume_before_the_last_iteration_leaves_the_final_checkpoint_to_training(tmp_path):
    """A truncated model_final.pth is removed; training from iteration 5 of 10 writes the final one itself."""
    out = tmp_path / "run"
    out.mkdir()
    MammoCheckpointer(_model(4.0), str(out), trainer=_Trainer(10, 4)).save("model_0000004", iteration=4)
    (out / "model_final.pth").write_bytes(b"PK\x03\x04 cut short")
    MammoCheckpointer(_model(0.0), str(out), purpose="train", trainer=_Trainer(10)).resume_or_load("", resume=True)
    assert not (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000004.pth"
