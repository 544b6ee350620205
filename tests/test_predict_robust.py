"""tools/predict.py on bad inputs, bad options and interrupted runs: a clear error or a counted skip."""
import csv
import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from mammo_tl.data.synthetic import mammogram_dataset, write_dicom
from mammo_tl.inference import command as predict_mod
from mammo_tl.inference import loader as predict_loader
from mammo_tl.inference.command import PredictError, check_max_pixels, check_min_score, run_predict
from mammo_tl.data.inputs import SkippedImage, describe
from mammo_tl.inference.predictor import MammoPredictor
from tests.common import REPO, breast_phantom, run_in_process, tiny_cfg
from tests.test_weights import tiny_config_file

OPTS = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return tiny_config_file(tmp_path_factory)


def _png(path, img=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), breast_phantom(**kw) if img is None else img)
    return str(path)


def _dicom_without_patient_id(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds = mammogram_dataset(path, img, "", "", "CC")
    del ds.PatientID
    del ds.ImageLaterality
    ds.save_as(str(path), enforce_file_format=True)


def _bomb_png(path, width=20000, height=20000):
    """A PNG header claiming width x height 8-bit pixels (400 million: over the default limit) and a few
    bytes of data: decoding it would need gigabytes, reading its header needs none."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _predict_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "tools/predict.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _predict_here(*args):
    """tools/predict.py with ``args`` in this process (tests/common.py run_in_process: the same arguments, exit
    status and output), for runs checked for what they write and refuse: a Python start-up with torch and
    detectron2 (3.4 s of CPU) saved each. The first run of the test below stays a process, as typed."""
    return run_in_process(["tools/predict.py", *map(str, args)])


@pytest.mark.slow
def test_every_input_is_predicted_or_skipped_with_its_reason(tmp_path, config):
    """As the user types it: one folder with every kind of bad input beside good ones."""
    src = tmp_path / "in"
    _png(src / "a" / "x.png", seed=1)
    _png(src / "b" / "x.png", seed=2)  # same name as a/x.png: overlays and patients must not collide
    _png(src / "PAT1_L_CC.png", seed=3)
    (src / "c").mkdir()
    write_dicom(src / "c" / "scan.dcm", breast_phantom(seed=4), "PAT2", "R", "MLO")
    _dicom_without_patient_id(src / "d" / "scan.dcm", breast_phantom(seed=5))
    _png(src / "one_pixel.png", np.full((1, 1), 7, np.uint16))
    _png(src / "flat.png", np.zeros((200, 160), np.uint16))
    os.mkfifo(src / "pipe.png")  # named like an image: reading it would block forever
    _bomb_png(src / "bomb.png")
    (src / "broken.dcm").write_bytes(b"not a dicom at all")
    out = tmp_path / "out"

    r = _predict_cli("--config-file", config, "--input", src, "--output", out, "--overlay", "--min-score", "0",
                     *OPTS)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary == {
        "inputs": 10, "predicted": 5, "skipped": 5,
        "skipped_by_reason": {"constant_image": 1, "not_a_regular_file": 1, "too_many_pixels": 1, "too_small": 1,
                              "unreadable": 1},
        "unknown_patient": 3, "unknown_laterality": 3, "laterality_conflicts": 0, "patient_conflicts": 0,
        "patients": 5, "patient_ids_with_several_issuers": 0, "from_previous_run": 0,
        "previous_run_not_in_inputs": 0, "changed_since_previous_run": 0,
        "inputs_in_output_folders": 0, "changed_after_prediction": 0}
    assert "10 input(s): 5 predicted, 5 skipped" in r.stdout and "3 image(s) with unknown patient" in r.stdout
    skipped = {os.path.relpath(s["file_name"], src): s for s in json.load(open(out / "skipped.json"))}
    assert {k: v["kind"] for k, v in skipped.items()} == {
        "one_pixel.png": "too_small", "flat.png": "constant_image", "pipe.png": "not_a_regular_file",
        "bomb.png": "too_many_pixels", "broken.dcm": "unreadable"}
    assert "pixels" in skipped["bomb.png"]["reason"]
    assert "FIFO" in skipped["pipe.png"]["reason"]

    preds = {os.path.relpath(p["file_name"], src): p for p in json.load(open(out / "predictions.json"))}
    assert sorted(preds) == ["PAT1_L_CC.png", "a/x.png", "b/x.png", "c/scan.dcm", "d/scan.dcm"]
    unknown = [preds[k]["patient_id"] for k in ("a/x.png", "b/x.png", "d/scan.dcm")]
    assert all(p.startswith("unknown:") for p in unknown) and len(set(unknown)) == 3
    assert (preds["PAT1_L_CC.png"]["patient_id"], preds["c/scan.dcm"]["patient_id"]) == ("PAT1", "PAT2")
    patients = [row["patient_id"] for row in csv.DictReader(open(out / "patients.csv"))]
    assert sorted(patients) == sorted(["PAT1", "PAT2", *unknown])
    overlays = [p["overlay"] for p in preds.values()]
    assert len(set(overlays)) == 5 and all((out / o).is_file() for o in overlays)
    assert sorted(os.listdir(out / "overlays")) == sorted(os.path.basename(o) for o in overlays)
    lines = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert len(lines) == 10 and all(line["status"] in ("predicted", "skipped") for line in lines)

    # a second run into the same folder refuses to mix its results with these
    again = _predict_here("--config-file", config, "--input", src, "--output", out, *OPTS)
    assert again.returncode == 1
    assert "holds a previous run's results" in again.stderr and "--resume" in again.stderr
    assert "--overwrite" in again.stderr and str(out) in again.stderr


def test_untrained_model_refused_from_the_command_line(tmp_path, config):
    _png(tmp_path / "in" / "x.png")
    r = _predict_here("--config-file", config, "--input", tmp_path / "in", "--output", tmp_path / "out", *OPTS,
                      "MODEL.WEIGHTS", "")
    assert r.returncode == 1 and "MODEL.WEIGHTS is empty: predict needs a trained model" in r.stderr
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_bad_min_score_is_an_argument_error(tmp_path, config):
    _png(tmp_path / "in" / "x.png")
    r = _predict_here("--config-file", config, "--input", tmp_path / "in", "--output", tmp_path / "out",
                      "--min-score", "nan", *OPTS)
    assert r.returncode == 2 and "--min-score must be a finite number in [0, 1], got 'nan'" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-0.01", "1.5", "abc", None])
def test_min_score_must_be_finite_within_0_and_1(value):
    with pytest.raises(ValueError, match="--min-score must be"):
        check_min_score(value)


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "nan", "inf", "many"])
def test_max_pixels_must_be_a_positive_whole_number(value):
    with pytest.raises(ValueError, match="--max-pixels must be a whole number > 0"):
        check_max_pixels(value)


def test_valid_numeric_options_pass():
    assert (check_min_score("0"), check_min_score("1"), check_min_score(0.3)) == (0.0, 1.0, 0.3)
    assert (check_max_pixels("1000"), check_max_pixels(1e6)) == (1000, 1_000_000)
    with pytest.raises(ValueError, match="--min-score"):
        run_predict("no.yaml", ["none"], "out", min_score=float("nan"))


def test_max_pixels_skips_before_decoding(tmp_path, monkeypatch):
    path = _png(tmp_path / "x.png")  # 200 x 160 = 32,000 pixels
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("decoded despite the pixel limit"))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded despite the pixel limit"))
    with pytest.raises(SkippedImage, match=r"32,?000 pixels") as e:
        describe(path, max_pixels=31_999)
    assert e.value.kind == "too_many_pixels"


def test_unwritable_output_fails_before_the_first_image(tmp_path, config, monkeypatch):
    _png(tmp_path / "in" / "x.png")
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    monkeypatch.setattr(predict_loader, "describe", lambda *a, **k: pytest.fail("an image was read"))
    monkeypatch.setattr(predict_mod, "MammoPredictor", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(PredictError, match=r"--output .*blocker/out: not a writable folder"):
        run_predict(config, [str(tmp_path / "in")], str(tmp_path / "blocker" / "out"), OPTS)


class _Killed(BaseException):
    pass


def test_killed_run_keeps_its_results_and_resume_finishes_it(tmp_path, config, monkeypatch, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        _png(src / f"P{i}_L_CC.png", seed=i)
    (src / "broken.png").write_bytes(b"not a png")
    calls = []
    real_call = MammoPredictor.__call__

    def call(self, image):
        calls.append(1)
        if len(calls) == 3:
            raise _Killed()  # as if the process died while predicting the third image
        return real_call(self, image)

    monkeypatch.setattr(MammoPredictor, "__call__", call)
    with pytest.raises(_Killed):
        run_predict(config, [str(src)], str(out), OPTS, min_score=0.0)
    lines = [json.loads(line) for line in open(out / "predictions.jsonl")]
    # sorted inputs: P0, P1, P2 (killed), P3, broken; P0 and P1 are kept
    assert [os.path.basename(r["file_name"]) for r in lines] == ["P0_L_CC.png", "P1_L_CC.png"]
    assert not (out / "predictions.json").exists()

    with pytest.raises(PredictError, match=r"holds a previous run's results \(predictions\.jsonl, run\.json, "
                                           r"manifest\.json\)"):
        run_predict(config, [str(src)], str(out), OPTS, min_score=0.0)
    for changed, named in (({"min_score": 0.5}, "--min-score (0.0 then, 0.5 now)"),
                           ({"opts": OPTS + ["INPUT.FIXED_SIZE", "(96, 96)"]}, "config INPUT.FIXED_SIZE")):
        kwargs = {"opts": OPTS, "min_score": 0.0, **changed}
        with pytest.raises(PredictError, match=r"--resume: .* was predicted with other settings: " + named.replace(
                "(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            run_predict(config, [str(src)], str(out), resume=True, **kwargs)
    with pytest.raises(PredictError, match="--resume and --overwrite exclude each other"):
        run_predict(config, [str(src)], str(out), OPTS, resume=True, overwrite=True)

    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"file_name": "' + str(src / "P2_L_CC.png"))  # a line cut short by the kill
    calls.clear()
    capsys.readouterr()
    preds, skipped = run_predict(config, [str(src)], str(out), OPTS, min_score=0.0, resume=True)
    assert len(calls) == 2  # P2 and P3 only; broken.png is skipped before the model
    assert "--resume: 2 of 5 input(s) already predicted" in capsys.readouterr().out
    assert [os.path.basename(p["file_name"]) for p in preds] == [f"P{i}_L_CC.png" for i in range(4)]
    assert [os.path.basename(s["file_name"]) for s in skipped] == ["broken.png"]
    summary = json.load(open(out / "summary.json"))
    assert (summary["inputs"], summary["predicted"], summary["skipped"], summary["from_previous_run"]) == (5, 4, 1, 2)
    assert len(open(out / "predictions.jsonl").read().splitlines()) == 5  # the cut line is gone


def test_resume_refuses_other_weights(tmp_path, tmp_path_factory, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png")
    run_predict(config, [str(src)], str(out), OPTS)
    torch.manual_seed(7)
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(tmp_path)).save("other")
    with pytest.raises(PredictError, match=r"other settings: MODEL\.WEIGHTS \(.*model_tiny\.pth then, .*other\.pth "
                                           r"now: different files\)"):
        run_predict(config, [str(src)], str(out), OPTS + ["MODEL.WEIGHTS", str(tmp_path / "other.pth")],
                    resume=True)


def test_overwrite_starts_clean(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png")
    (src / "broken.png").write_bytes(b"not a png")
    run_predict(config, [str(src)], str(out), OPTS, overlay=True)
    assert len(json.load(open(out / "skipped.json"))) == 1
    old_overlay = os.listdir(out / "overlays")
    os.remove(src / "broken.png")
    os.rename(src / "P0_L_CC.png", src / "P1_R_CC.png")
    preds, skipped = run_predict(config, [str(src)], str(out), OPTS, overwrite=True)
    assert skipped == [] and json.load(open(out / "skipped.json")) == []  # not the old run's list
    assert [p["patient_id"] for p in preds] == ["P1"]
    assert not (out / "overlays").exists() and len(old_overlay) == 1  # the old run's overlay went with it
    assert len(open(out / "predictions.jsonl").read().splitlines()) == 1


def test_write_failures_are_errors(tmp_path, config, monkeypatch):
    src = tmp_path / "in"
    _png(src / "P0_L_CC.png")
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)  # what OpenCV does on a failed write
    with pytest.raises(PredictError, match=r"overlays/P0_L_CC_[0-9a-f]{8}\.png: overlay cannot be written"):
        run_predict(config, [str(src)], str(tmp_path / "out1"), OPTS, overlay=True)
    assert open(tmp_path / "out1" / "predictions.jsonl").read() == ""  # not recorded as done
    monkeypatch.undo()

    out = tmp_path / "out2"
    out.mkdir()
    (out / f"predictions.json.tmp.{os.getpid()}").mkdir()  # the file cannot be created
    with pytest.raises(PredictError, match=r"out2/predictions\.json: cannot be written \(IsADirectoryError"):
        run_predict(config, [str(src)], str(out), OPTS)


def test_missing_patient_id_never_merges_images(tmp_path):
    img = breast_phantom()
    _dicom_without_patient_id(tmp_path / "a" / "x.dcm", img)
    _dicom_without_patient_id(tmp_path / "b" / "x.dcm", img)
    metas = [describe(str(tmp_path / d / "x.dcm"))[1] for d in "ab"]
    assert all(m["unknown_patient"] and m["patient_id"].startswith("unknown:x_") for m in metas)
    assert metas[0]["patient_id"] != metas[1]["patient_id"]


def test_nothing_predicted_is_an_error_with_the_counts_written(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "flat.png", np.full((64, 64), 9, np.uint16))
    (src / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PredictError, match=r"no image could be predicted: all 2 input\(s\) skipped \(1 constant "
                                           r"image, 1 unreadable\)"):
        run_predict(config, [str(src)], str(out), OPTS)
    summary = json.load(open(out / "summary.json"))
    assert (summary["predicted"], summary["skipped_by_reason"]) == (0, {"constant_image": 1, "unreadable": 1})


def test_file_names_not_in_utf8_or_near_the_length_limit_are_predicted(tmp_path, config):
    """A name that is not valid UTF-8 (bytes from another system's encoding) and one of 250 bytes: both are
    predicted, with overlays, and every table is written (no leftover temporary files)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    latin1 = os.path.join(os.fsencode(src), b"M\xfcller_L_CC.png")  # "Muller" in Latin-1: not UTF-8
    long_name = "x" * 246 + ".png"
    assert cv2.imencode(".png", breast_phantom(seed=1))[0]
    with open(latin1, "wb") as f:
        f.write(cv2.imencode(".png", breast_phantom(seed=1))[1].tobytes())
    _png(src / long_name, seed=2)
    r = _predict_here("--config-file", config, "--input", src, "--output", out, "--overlay", "--min-score", "0",
                      *OPTS)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert (summary["inputs"], summary["predicted"], summary["skipped"]) == (2, 2, 0)
    patients = [row["patient_id"] for row in csv.DictReader(open(out / "patients.csv", encoding="utf-8"))]
    assert "M\\xfcller" in patients  # the undecodable byte written as an escape, the side and view still read
    preds = json.load(open(out / "predictions.json"))
    assert sorted(os.fsencode(p["file_name"]) for p in preds) == sorted([latin1, os.fsencode(src / long_name)])
    overlays = sorted(os.listdir(out / "overlays"))
    assert len(overlays) == 2 and all(len(o.encode()) <= 120 for o in overlays)
    assert sorted(os.path.basename(p["overlay"]) for p in preds) == overlays
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_overwrite_replaces_a_log_with_a_damaged_line(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        _png(src / f"P{i}_L_CC.png", seed=i)
    run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0)
    lines = open(out / "predictions.jsonl", "rb").read().split(b"\n")
    lines[1] = b'{"file_name": "' + b"\x00\xff" * 20  # a middle line damaged on disk
    (out / "predictions.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(PredictError, match=r"line 2 is not a prediction record .* use --overwrite"):
        run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0, resume=True)
    preds, _ = run_predict(config, [str(src)], str(out), OPTS, overlay=True, workers=0, overwrite=True)
    assert [p["patient_id"] for p in preds] == ["P0", "P1", "P2"]
    assert len(open(out / "predictions.jsonl").read().splitlines()) == 3
    assert sorted(os.listdir(out / "overlays")) == sorted(os.path.basename(p["overlay"]) for p in preds)


def test_resume_reuses_inputs_named_by_another_path(tmp_path, config, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(2):
        _png(src / f"P{i}_L_CC.png", seed=i)
    first, _ = run_predict(config, [str(src)], str(out), OPTS, workers=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(MammoPredictor, "__call__", lambda *a: pytest.fail("predicted again"))
    preds, _ = run_predict(config, ["in"], "out", OPTS, workers=0, resume=True)
    assert [p["file_name"] for p in preds] == [os.path.join("in", f"P{i}_L_CC.png") for i in range(2)]
    assert [p["scores"] for p in preds] == [p["scores"] for p in first]
    summary = json.load(open(out / "summary.json"))
    assert (summary["from_previous_run"], summary["previous_run_not_in_inputs"]) == (2, 0)


def test_resume_does_not_log_a_skipped_input_again(tmp_path, config):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "P0_L_CC.png")
    (src / "broken.png").write_bytes(b"not a png")
    run_predict(config, [str(src)], str(out), OPTS, workers=0)
    for _ in range(2):
        _, skipped = run_predict(config, [str(src)], str(out), OPTS, workers=0, resume=True)
        assert [os.path.basename(s["file_name"]) for s in skipped] == ["broken.png"]
    lines = [json.loads(line) for line in open(out / "predictions.jsonl")]
    assert sorted((os.path.basename(r["file_name"]), r["status"]) for r in lines) == [
        ("P0_L_CC.png", "predicted"), ("broken.png", "skipped")]
    (src / "broken.png").write_bytes(b"still not a png, another way")  # skipped again, for the same reason
    _png(src / "broken2.png", np.zeros((200, 160), np.uint16))
    run_predict(config, [str(src)], str(out), OPTS, workers=0, resume=True)
    assert len(open(out / "predictions.jsonl").read().splitlines()) == 3  # the new input's line only
