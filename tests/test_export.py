"""tools/export_model.py and tools/predict.py --model: an exported model (TorchScript, ONNX) predicts the
PyTorch model's boxes and scores on real-format DICOMs, without detectron2's code in the model's path; an
exported folder that does not match what it records, and configs that cannot be exported, are refused."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.data.inputs import describe
from mammo_tl.checkpoint import WeightsError
from mammo_tl.export.exporter import export_model
from mammo_tl.export.runtime import ExportedPreparer, ExportError, load_exported
from mammo_tl.inference.command import PredictError, run_predict
from mammo_tl.data.prepared import InputPreparer
from tests.common import REPO, run_in_process, tiny_cfg
from tests.realistic_fixtures import CBIS_SHAPE, VINDR_SHAPES, mammogram, write_dicom
from tests.test_weights import tiny_config_file, tiny_weights

# One worker runs every test of this module (tests/conftest.py): the module fixtures below export the model in
# both formats and run the exported models in a process of their own, once, not once per worker.
pytestmark = pytest.mark.xdist_group("export")

OPTS = ["MODEL.DEVICE", "cpu"]
# Exported against PyTorch, in the stored image's pixels and as predictions.json rounds them (boxes to 0.01
# pixel, scores to 1e-5): one rounding step apart at most. Measured: equal boxes, scores within 1e-5.
BOX_ATOL, SCORE_ATOL = 0.02, 2e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model's config and weights, exported in both formats by the documented command."""
    root = tmp_path_factory.mktemp("export")
    weights, config = tiny_weights(tmp_path_factory), tiny_config_file(tmp_path_factory)
    models = {}
    for fmt, name in (("torchscript", "model.ts"), ("onnx", "model.onnx")):
        r = run_in_process([os.path.join("tools", "export_model.py"), "--config-file", config, "--format", fmt,
                            "--output", str(root / fmt), "MODEL.WEIGHTS", weights])
        assert r.returncode == 0, r.stderr
        models[fmt] = str(root / fmt / name)
    return {"root": root, "weights": weights, "config": config, "models": models}


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Three mammograms as hospitals store them: uncompressed, RLE Lossless, JPEG 2000 MONOCHROME1."""
    src = tmp_path_factory.mktemp("export_in")
    write_dicom(str(src / "a.dcm"), mammogram(CBIS_SHAPE, "L", [(90, 200, 140, 250)], seed=1), "P_1",
                laterality="L", view="CC")
    write_dicom(str(src / "b.dcm"), mammogram(VINDR_SHAPES[0], "R", [], seed=2), "P_1", laterality="R",
                view="CC", syntax=RLELossless)
    write_dicom(str(src / "c.dcm"), mammogram(VINDR_SHAPES[1], "L", [(60, 100, 100, 150)], seed=3), "P_2",
                laterality="L", view="MLO", photometric="MONOCHROME1", syntax=JPEG2000Lossless)
    return src


@pytest.fixture(scope="module")
def pytorch_run(setup, dicoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_pt") / "out"
    preds, _ = run_predict(setup["config"], [str(dicoms)], str(out), OPTS, workers=0)
    return {"out": out, "preds": preds}


def test_export_json_records_the_model_its_preparation_and_sources(setup):
    sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    for fmt, path in setup["models"].items():
        meta = json.load(open(os.path.join(os.path.dirname(path), "export.json")))
        assert meta["format"] == fmt and meta["model_file"] == os.path.basename(path)
        assert meta["model_sha256"] == sha(path)
        assert meta["source"]["weights_sha256"] == sha(setup["weights"])
        assert meta["source"]["config_file_sha256"] == sha(setup["config"])
        cfg = tiny_cfg()  # the synthetic configs neither crop nor flip: the phantoms are prepared that way
        assert (cfg.INPUT.CROP_TO_BREAST, cfg.INPUT.CANONICAL_FLIP) == (False, False)
        assert meta["input"] == {"size": [128, 128], "intensity_percentiles": [0.0, 100.0], "crop_to_breast": False,
                                 "canonical_flip": False, "resize": "area"}
        assert meta["opset"] == (17 if fmt == "onnx" else None)
        assert meta["score_threshold"] == 0.05  # the tiny config's MODEL.ROI_HEADS.SCORE_THRESH_TEST


def test_exported_preparation_is_predicts(setup, dicoms):
    prep = ExportedPreparer(json.load(open(os.path.join(os.path.dirname(setup["models"]["onnx"]),
                                                        "export.json")))["input"])
    reference = InputPreparer(tiny_cfg())
    for name in ("a.dcm", "c.dcm"):
        image, _ = describe(str(dicoms / name))
        a, b = prep(image), reference(image)
        assert a.tensor.dtype == b.tensor.dtype and bool((a.tensor == b.tensor).all())
        assert a.transform == b.transform


WRAPPER = r"""
import json, os, runpy, sys
import mammo_tl.export.runtime as rt
import mammo_tl.inference.predictor as predictor

calls, runs = set(), []
seen_path, argvs = sys.argv[1], json.loads(sys.argv[2])
def refuse(*args, **kwargs):
    raise AssertionError("a detectron2 model was built")
predictor.MammoPredictor.__init__ = refuse

def profiler(frame, event, arg):
    if event == "call" and os.sep + "detectron2" + os.sep in frame.f_code.co_filename:
        calls.add(frame.f_code.co_filename.split("detectron2" + os.sep)[-1] + ":" + frame.f_code.co_name)

def traced(f, name):
    def run(*args, **kwargs):
        runs.append(name)
        sys.setprofile(profiler)
        try:
            return f(*args, **kwargs)
        finally:
            sys.setprofile(None)
    return run
rt.ExportedPredictor._run = traced(rt.ExportedPredictor._run, "model")
rt.ExportedPreparer.__call__ = traced(rt.ExportedPreparer.__call__, "prepare")
for argv in argvs:
    if os.environ.get("MAMMO_TL_COMMAND_LOG"):  # the command as typed, for tests/doc_commands (as conftest logs runpy)
        with open(os.environ["MAMMO_TL_COMMAND_LOG"], "a") as log:
            log.write(json.dumps({"script": os.path.abspath(argv[0]), "argv": argv[1:], "cwd": os.getcwd(),
                                  "direct": True, "test": os.environ.get("PYTEST_CURRENT_TEST", "")}) + "\n")
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        assert not e.code, e.code
json.dump({"calls": sorted(calls), "runs": runs, "modeling_imported": "detectron2.modeling" in sys.modules},
          open(seen_path, "w"))
"""


@pytest.fixture(scope="module")
def isolated(setup, dicoms, tmp_path_factory):
    """The documented tools/predict.py --model command in a process of its own, for both formats, recording
    every call into detectron2's code while the exported model prepares and runs an image."""
    root = tmp_path_factory.mktemp("export_isolated")
    (root / "wrapper.py").write_text(WRAPPER)
    argvs = [[os.path.join("tools", "predict.py"), "--model", setup["models"][fmt], "--input", str(dicoms),
              "--output", str(root / fmt), "--overlay", "--dicom-out", str(root / f"{fmt}_dicom"), "--workers", "0",
              *(["--trust-torchscript"] if fmt == "torchscript" else [])]
             for fmt in ("onnx", "torchscript")]
    r = subprocess.run([sys.executable, str(root / "wrapper.py"), str(root / "seen.json"), json.dumps(argvs)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"seen": json.load(open(root / "seen.json")), "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_predicts_the_pytorch_models_boxes(setup, dicoms, pytorch_run, isolated, fmt):
    assert {pydicom.dcmread(str(dicoms / n)).file_meta.TransferSyntaxUID for n in ("b.dcm", "c.dcm")} == \
        {RLELossless, JPEG2000Lossless}
    out = isolated["root"] / fmt
    preds = json.load(open(out / "predictions.json"))
    reference = pytorch_run["preds"]
    assert [p["file_name"] for p in preds] == [p["file_name"] for p in reference] and len(preds) == 3
    for got, want in zip(preds, reference):
        assert len(got["boxes"]) == len(want["boxes"]) > 0
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=BOX_ATOL, rtol=0)
        np.testing.assert_allclose(got["scores"], want["scores"], atol=SCORE_ATOL, rtol=0)
        assert (got["patient_id"], got["laterality"], got["view"]) == (want["patient_id"], want["laterality"],
                                                                        want["view"])
        assert os.path.isfile(out / got["overlay"])
    for name in ("skipped.json", "patients.csv"):
        assert open(out / name).read() == open(pytorch_run["out"] / name).read()
    summary = json.load(open(out / "summary.json"))
    assert summary["dicom"]["images_without_dicom_output"] == 3  # no series UIDs in these files
    run = json.load(open(out / "run.json"))
    assert run["weights_sha256"] == json.load(open(os.path.join(os.path.dirname(setup["models"][fmt]),
                                                                "export.json")))["model_sha256"]


@pytest.mark.slow
def test_predict_model_runs_no_detectron2_code(isolated):
    seen = isolated["seen"]
    assert seen["runs"].count("model") == 6 and seen["runs"].count("prepare") == 6  # 3 images, 2 formats
    assert seen["calls"] == []


BARE_ONNX = r"""
import json, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
boxes, scores = session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})[:2]
heavy = sorted(m for m in ("torch", "detectron2", "mammo_tl") if m in sys.modules)
print(json.dumps({"boxes": np.asarray(boxes).tolist(), "scores": np.asarray(scores).tolist(), "imported": heavy}))
"""


def test_onnx_model_runs_with_onnx_runtime_alone(setup, dicoms, tmp_path):
    """model.onnx is what a hospital's inference runtime loads: in a fresh interpreter that imports only numpy
    and ONNX Runtime (no torch, detectron2 or mammo_tl), the prepared image that export.json describes gives
    the graph's boxes and scores as mammo_tl's own runtime gets them."""
    model = setup["models"]["onnx"]
    meta = json.load(open(os.path.join(os.path.dirname(model), "export.json")))
    prepared = ExportedPreparer(meta["input"])(describe(str(dicoms / "a.dcm"))[0])
    np.save(tmp_path / "input.npy", prepared.tensor.numpy())
    r = subprocess.run([sys.executable, "-I", "-c", BARE_ONNX, model, str(tmp_path / "input.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    bare = json.loads(r.stdout)
    assert bare["imported"] == []
    boxes, scores = load_exported(model)._run(prepared.tensor)
    assert len(bare["scores"]) == len(scores) > 0
    np.testing.assert_allclose(np.array(bare["boxes"]).reshape(-1, 4), boxes, atol=1e-4, rtol=0)
    np.testing.assert_allclose(bare["scores"], scores, atol=1e-6, rtol=0)


def _copy(setup, fmt, tmp_path):
    folder = tmp_path / f"copy_{fmt}"
    shutil.copytree(os.path.dirname(setup["models"][fmt]), folder)
    return folder


def test_exported_folder_is_checked_where_it_enters(setup, dicoms, tmp_path):
    def predict(model, **kw):
        return run_predict(kw.pop("config", None), [str(dicoms)], str(tmp_path / "out"), workers=0, model=str(model),
                           overwrite=True, trust_torchscript=True, **kw)

    folder = _copy(setup, "onnx", tmp_path)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(PredictError, match=r"model\.onnx: its sha256 .* differs from .*export\.json"):
        predict(folder / "model.onnx")
    os.remove(folder / "export.json")
    with pytest.raises(PredictError, match=r"export\.json: not found"):
        predict(folder / "model.onnx")
    folder = _copy(setup, "torchscript", tmp_path)
    shutil.copy(setup["models"]["onnx"], folder / "model.onnx")  # a model.onnx beside a TorchScript export.json
    with pytest.raises(PredictError, match=r"export\.json: describes 'model\.ts' \('torchscript'\), not model\.onnx"):
        predict(folder / "model.onnx")
    meta = json.load(open(folder / "export.json"))
    meta["input"]["size"] = [128]
    json.dump(meta, open(folder / "export.json", "w"))
    with pytest.raises(PredictError, match=r"export\.json: input\.size must be \[height, width\]"):
        predict(folder / "model.ts")
    with pytest.raises(PredictError, match=r"--model \S+ and --config-file"):
        predict(setup["models"]["onnx"], config=setup["config"])
    with pytest.raises(PredictError, match=r"--min-score 0\.01 is below the score threshold inside the exported "
                                           r"model \(0\.05"):
        predict(setup["models"]["onnx"], min_score=0.01)
    with pytest.raises(PredictError, match=r"--model .*model\.txt: expected an exported model file"):
        predict(tmp_path / "model.txt")
    assert not (tmp_path / "out" / "predictions.json").exists()


class _WritesAFile(torch.nn.Module):
    """A TorchScript model whose forward overwrites the first bytes of a user's file (a shared memory map)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_file(self.path, shared=True, size=5, dtype=torch.uint8)
        t.fill_(88)
        return torch.zeros(0, 4), torch.zeros(0) * t.sum()


def test_torchscript_runs_only_when_trusted_and_onnx_is_the_default(setup, dicoms, tmp_path):
    """A model.ts is a program: one whose forward writes a user's file, with an export.json recording its sha256,
    is refused by predict without --trust-torchscript, before it is loaded; with the flag its code runs (which is
    why the flag exists). tools/export_model.py without --format writes ONNX."""
    import warnings

    folder = _copy(setup, "torchscript", tmp_path)
    victim = tmp_path / "notes.txt"
    victim.write_text("hello world")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        # an attacker writes both files: the model records export.json's binding as an exported one does
        from mammo_tl.export.runtime import BINDING_KEY, export_json_binding

        torch.jit.save(torch.jit.script(_WritesAFile(str(victim))), str(folder / "model.ts"),
                       _extra_files={BINDING_KEY: export_json_binding(json.load(open(folder / "export.json")))})
    meta = json.load(open(folder / "export.json"))
    meta["model_sha256"] = hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()
    json.dump(meta, open(folder / "export.json", "w"))

    argv = [os.path.join("tools", "predict.py"), "--model", str(folder / "model.ts"), "--input",
            str(dicoms / "a.dcm"), "--output", str(tmp_path / "out"), "--workers", "0"]
    r = run_in_process(argv)
    assert r.returncode == 1
    assert f"--model {folder / 'model.ts'}: a TorchScript file is a program, not data" in r.stderr
    assert "--trust-torchscript" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_text() == "hello world"
    assert not (tmp_path / "out").exists()  # refused before any folder is made
    r = run_in_process([*argv, "--trust-torchscript"])
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "XXXXX world"  # what trusting a .ts means

    r = run_in_process([os.path.join("tools", "export_model.py"), "--config-file", setup["config"], "--output",
                        str(tmp_path / "default"), "MODEL.WEIGHTS", setup["weights"]])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "default")) == ["export.json", "model.onnx"]
    assert json.load(open(tmp_path / "default" / "export.json"))["format"] == "onnx"


def test_resume_does_not_reuse_another_models_results(setup, dicoms, tmp_path):
    out = str(tmp_path / "out")
    run_predict(None, [str(dicoms / "a.dcm")], out, workers=0, model=setup["models"]["onnx"])
    with pytest.raises(PredictError, match=r"--resume: .* other settings: the model \(.*model\.onnx then, "
                                           r".*model\.ts now: different files\); --model"):
        run_predict(None, [str(dicoms / "a.dcm")], out, workers=0, model=setup["models"]["torchscript"], resume=True,
                    trust_torchscript=True)
    with pytest.raises(PredictError, match=r"--resume: .* other settings: the model .*; --model"):
        run_predict(setup["config"], [str(dicoms / "a.dcm")], out, OPTS, workers=0, resume=True)
    preds, _ = run_predict(None, [str(dicoms / "a.dcm")], out, workers=0, model=setup["models"]["onnx"], resume=True)
    assert len(preds) == 1


def test_configs_that_cannot_be_exported_are_refused_naming_the_key(setup, tmp_path):
    def export(opts, fmt="onnx"):
        return export_model(setup["config"], fmt, str(tmp_path / "e"), opts)

    with pytest.raises(ExportError, match=r"INPUT\.RESIZE_MODE 'shortest_edge'"):
        export(["INPUT.RESIZE_MODE", "shortest_edge"])
    with pytest.raises(ExportError, match=r"MODEL\.MASK_ON True"):
        export(["MODEL.MASK_ON", "True"])
    with pytest.raises(ExportError, match=r"MODEL\.META_ARCHITECTURE 'RetinaNet'"):
        export(["MODEL.META_ARCHITECTURE", "RetinaNet"])
    with pytest.raises(ExportError, match=r"MODEL\.RESNETS\.DEFORM_ON_PER_STAGE"):
        export(["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, False]"])
    with pytest.raises(ExportError, match=r"--format 'tflite'"):
        export([], fmt="tflite")
    with pytest.raises(WeightsError):
        export(["MODEL.WEIGHTS", ""])
    with pytest.raises(ExportError, match=r"--output \S+ already holds an export \(export\.json, model\.onnx\)"):
        export_model(setup["config"], "onnx", os.path.dirname(setup["models"]["onnx"]))
    assert not (tmp_path / "e").exists()


def test_a_trace_that_fails_or_differs_is_refused_and_nothing_written(setup, tmp_path, monkeypatch):
    import torch

    from mammo_tl.export import runtime as export_runtime

    def broken_trace(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    with monkeypatch.context() as m:
        m.setattr(torch.jit, "trace", broken_trace)
        with pytest.raises(ExportError, match=r"detectron2 cannot trace this model to torchscript \("
                                              r"MODEL\.PROPOSAL_GENERATOR\.NAME TopLikelihoodRPN, "
                                              r"MODEL\.ROI_HEADS\.NAME SuspectedTargetROIHeads, "
                                              r".*RuntimeError: unsupported operator"):
            export_model(setup["config"], "torchscript", str(tmp_path / "e"))
    real = export_runtime.ExportedPredictor._run

    def shifted(self, tensor):  # an export whose boxes are off by a tenth of a pixel
        boxes, scores = real(self, tensor)
        return boxes + 0.1, scores

    monkeypatch.setattr(export_runtime.ExportedPredictor, "_run", shifted)
    with pytest.raises(ExportError, match=r"does not reproduce the PyTorch model \(test image 1: boxes differ by up to "
                                          r"0\.1 pixels"):
        export_model(setup["config"], "torchscript", str(tmp_path / "e"))
    assert not (tmp_path / "e").exists()


def _bound_sha256(meta):
    """export.json's content as the model file binds it, computed here: every key but the model's own sha256,
    the verification record and the path added on reading; sorted keys, no spaces."""
    bound = {k: v for k, v in meta.items() if k not in ("model_sha256", "verified", "path")}
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_the_model_file_binds_its_export_json(setup, dicoms, tmp_path):
    import onnxruntime
    import torch

    onnx_meta = json.load(open(os.path.join(os.path.dirname(setup["models"]["onnx"]), "export.json")))
    session = onnxruntime.InferenceSession(setup["models"]["onnx"], providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["mammo_tl.export_json_sha256"] == _bound_sha256(onnx_meta)
    ts_meta = json.load(open(os.path.join(os.path.dirname(setup["models"]["torchscript"]), "export.json")))
    extra = {"mammo_tl.export_json_sha256": ""}
    torch.jit.load(setup["models"]["torchscript"], _extra_files=extra)
    assert extra["mammo_tl.export_json_sha256"].decode() == _bound_sha256(ts_meta)

    for fmt, change in (("onnx", ("intensity_percentiles", [1.0, 99.0])), ("torchscript", ("canonical_flip", True)),
                        ("onnx", ("crop_to_breast", True))):
        folder = _copy(setup, fmt, tmp_path / f"{fmt}_{change[0]}")
        meta = json.load(open(folder / "export.json"))
        meta["input"][change[0]] = change[1]  # well-formed, and every score would change
        json.dump(meta, open(folder / "export.json", "w"))
        with pytest.raises(PredictError, match=r"export\.json: differs from the export\.json that \S+ was exported "
                                               r"with .* changed after export"):
            run_predict(None, [str(dicoms / "a.dcm")], str(tmp_path / "out"), workers=0,
                        model=str(folder / setup["models"][fmt].rsplit("/", 1)[1]), trust_torchscript=True)
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_damaged_model_files_are_refused_naming_the_file(setup, dicoms, tmp_path):
    for fmt, name, what in (("onnx", "model.onnx", "ONNX"), ("torchscript", "model.ts", "TorchScript")):
        folder = _copy(setup, fmt, tmp_path)
        data = b"garbage in place of a model " * 40
        (folder / name).write_bytes(data)
        meta = json.load(open(folder / "export.json"))
        meta["model_sha256"] = hashlib.sha256(data).hexdigest()  # replaced consistently: the hash cannot tell
        json.dump(meta, open(folder / "export.json", "w"))
        with pytest.raises(PredictError, match=rf"--model \S+{name}: not a usable {what} model, damaged or replaced"):
            run_predict(None, [str(dicoms / "a.dcm")], str(tmp_path / "out"), workers=0, model=str(folder / name),
                        trust_torchscript=True)


def test_export_options_are_checked_before_any_work(setup, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(ExportError, match=r"--output \S+a_file: exists and is not a folder"):
        export_model(setup["config"], "onnx", str(tmp_path / "a_file"))
    for opset in (9, 11, 15, 21):  # 11 to 15 trace, but their RoiAlign moves boxes by up to 100 pixels
        with pytest.raises(ExportError, match=rf"--opset {opset}: this model exports to ONNX opsets 16 to 20"):
            export_model(setup["config"], "onnx", str(tmp_path / "e"), opset=opset)
    r = run_in_process([os.path.join("tools", "export_model.py"), "--config-file", setup["config"], "--format", "onnx",
                        "--output", str(tmp_path / "e"), "--opset", "9"])
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--opset 9" in r.stderr
    assert not (tmp_path / "e").exists()
