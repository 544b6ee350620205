"""tools/predict.py with images decoded in DataLoader workers and batched through the model: the same
results in the same order as one image at a time, skips and failures from the workers reported, resume
intact, device options checked."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from mammo_tl.inference import command as predict_mod
from mammo_tl.inference import loader as predict_loader
from mammo_tl.inference.command import PredictError, check_batch_size, check_workers, run_predict
from mammo_tl.data.prepared import InputPreparer
from mammo_tl.inference.predictor import MammoPredictor
from tests.common import breast_phantom
from tests.test_weights import tiny_config_file

OPTS = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config_file(tmp_path_factory)


@pytest.fixture
def inputs(tmp_path):
    """Seven images, two of them not predictable, sorted: P0..P5 with broken.png and flat.png among them."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        cv2.imwrite(str(src / f"P{i}_L_CC.png"), breast_phantom(seed=i, h=200 + 8 * i))
    (src / "P1_broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(src / "P3_flat.png"), np.full((64, 64), 9, np.uint16))
    return src


def _names(records):
    return [os.path.basename(r["file_name"]) for r in records]


def test_workers_and_batches_give_the_one_at_a_time_results_in_input_order(inputs, tmp_path, config):
    one, _ = run_predict(config, [str(inputs)], str(tmp_path / "one"), OPTS, min_score=0.0, workers=0, batch_size=1)
    many, skipped = run_predict(config, [str(inputs)], str(tmp_path / "many"), OPTS, min_score=0.0, workers=2,
                                batch_size=3)
    order = ["P0_L_CC.png", "P1_L_CC.png", "P1_broken.png", "P2_L_CC.png", "P3_L_CC.png", "P3_flat.png",
             "P4_L_CC.png"]
    assert sorted(order) == order
    assert _names(many) == [n for n in order if n not in ("P1_broken.png", "P3_flat.png")] == _names(one)
    assert [(os.path.basename(s["file_name"]), s["kind"]) for s in skipped] == [("P1_broken.png", "unreadable"),
                                                                                ("P3_flat.png", "constant_image")]
    lines = [json.loads(line) for line in open(tmp_path / "many" / "predictions.jsonl")]
    assert _names(lines) == order  # skips produced in the workers, written in input order
    for a, b in zip(one, many):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=0.02)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=2e-5)
    # a batch of three is one model call
    calls = []
    real = MammoPredictor.predict_batch

    def counted(self, images):
        calls.append(len(images))
        return real(self, images)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(MammoPredictor, "predict_batch", counted)
        run_predict(config, [str(inputs)], str(tmp_path / "counted"), OPTS, workers=1, batch_size=3)
    # batches [P0, P1, broken], [P2, P3, flat], [P4]: the last one alone goes through __call__, itself a batch of 1
    assert calls == [2, 2, 1]


class _Killed(BaseException):
    pass


def test_killed_batched_run_resumes(inputs, tmp_path, config, monkeypatch, capsys):
    out = tmp_path / "out"
    real = MammoPredictor.predict_batch
    calls = []

    def dies_on_second(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise _Killed()
        return real(self, images)

    monkeypatch.setattr(MammoPredictor, "predict_batch", dies_on_second)
    with pytest.raises(_Killed):
        run_predict(config, [str(inputs)], str(out), OPTS, workers=2, batch_size=2)
    # the first batch [P0, P1] was written; the second [broken, P2] died in the model, broken.png with it
    assert _names(json.loads(line) for line in open(out / "predictions.jsonl")) == ["P0_L_CC.png", "P1_L_CC.png"]
    monkeypatch.setattr(MammoPredictor, "predict_batch", real)
    capsys.readouterr()
    preds, _ = run_predict(config, [str(inputs)], str(out), OPTS, workers=2, batch_size=3, resume=True)
    assert "--resume: 2 of 7 input(s) already predicted" in capsys.readouterr().out
    assert _names(preds) == ["P0_L_CC.png", "P1_L_CC.png", "P2_L_CC.png", "P3_L_CC.png", "P4_L_CC.png"]
    assert json.load(open(out / "summary.json"))["from_previous_run"] == 2


def test_preparing_failure_in_a_worker_names_the_file(inputs, tmp_path, config, monkeypatch):
    real = InputPreparer.__call__

    def fails_on_tall(self, image):
        if image.shape[0] == 216:  # P2_L_CC.png
            raise ValueError("a preparing step went wrong")
        return real(self, image)

    monkeypatch.setattr(InputPreparer, "__call__", fails_on_tall)  # inherited by the forked workers
    with pytest.raises(PredictError, match=r"P2_L_CC\.png: the decoded image could not be prepared for the model "
                                           r"\(ValueError: a preparing step went wrong\)"):
        run_predict(config, [str(inputs)], str(tmp_path / "out"), OPTS, workers=2)


def test_a_worker_that_dies_is_an_error_with_advice(inputs, tmp_path, config, monkeypatch):
    real = predict_loader.describe

    def dies(path, **kw):
        if path.endswith("P2_L_CC.png"):
            os._exit(9)  # as when the kernel kills a worker out of memory
        return real(path, **kw)

    monkeypatch.setattr(predict_loader, "describe", dies)
    with pytest.raises(PredictError, match=r"a worker decoding images stopped .*fewer --workers \(now 2\) need less "
                                           r"memory"):
        run_predict(config, [str(inputs)], str(tmp_path / "out"), OPTS, workers=2)


def test_device_and_amp_are_checked_before_any_work(inputs, tmp_path, config, monkeypatch):
    monkeypatch.setattr(predict_mod, "MammoPredictor", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(PredictError, match=r"--amp: mixed precision runs on CUDA only, and the device is 'cpu'"):
        run_predict(config, [str(inputs)], str(tmp_path / "out"), OPTS, amp=True)
    with pytest.raises(PredictError, match=r"--amp: .*the device is 'cpu'"):
        run_predict(config, [str(inputs)], str(tmp_path / "out"), ["MODEL.DEVICE", "cuda"], device="cpu", amp=True)
    if not torch.cuda.is_available():
        with pytest.raises(PredictError, match=r"MODEL\.DEVICE cuda: .*; use --device cpu"):
            run_predict(config, [str(inputs)], str(tmp_path / "out"), OPTS, device="cuda")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("check", "value", "message"), [
    (check_workers, "-1", "--workers must be a whole number >= 0, got '-1'"),
    (check_workers, "1.5", "--workers must be a whole number >= 0"),
    (check_batch_size, "0", "--batch-size must be a whole number >= 1, got '0'"),
    (check_batch_size, "two", "--batch-size must be a whole number >= 1"),
])
def test_worker_and_batch_options(check, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check(value)
    assert (check_workers("0"), check_workers(3), check_batch_size("8")) == (0, 3, 8)
