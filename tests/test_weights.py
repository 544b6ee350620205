"""Weights files: no pickle of unknown origin is run, no untrained or partial model passes for a trained one."""
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from mammo_tl.checkpoint import (MammoCheckpointer, WeightsError, convert_pickle_weights,
                                        is_model_zoo_url, load_model_weights)
from mammo_tl.inference.predictor import MammoPredictor
from tests.common import REPO, tiny_cfg


def tiny_weights(tmp_path_factory):
    """A checkpoint of the tiny model (seed 0), saved with detectron2's checkpointer once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny_weights"
    path = root / "model_tiny.pth"
    if not path.exists():
        root.mkdir(exist_ok=True)
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(root)).save("model_tiny")
    return str(path)


def tiny_config_file(tmp_path_factory, weights_path=None):
    """The tiny config as a YAML file with MODEL.WEIGHTS = the session's tiny checkpoint (or weights_path)."""
    weights_path = weights_path or tiny_weights(tmp_path_factory)
    path = os.path.join(os.path.dirname(weights_path), f"tiny_{os.path.basename(weights_path)}.yaml")
    if not os.path.exists(path):
        cfg = tiny_cfg(opts=["MODEL.WEIGHTS", weights_path])
        with open(path, "w") as f:
            f.write(cfg.dump())
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory)


def _model(seed=1):
    torch.manual_seed(seed)
    return build_model(tiny_cfg())


class _Evil:
    """Unpickling this creates the marker file: what a crafted weights file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _write_evil(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _Evil(marker)}, "__author__": "x"}, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_evil_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    _write_evil(evil, marker)
    cfg = tiny_cfg(opts=["MODEL.WEIGHTS", str(evil)])
    with pytest.raises(WeightsError, match=r"evil\.pkl: refusing to unpickle.*MODEL\.WEIGHTS_TRUSTED_PICKLE"):
        MammoPredictor(cfg)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        MammoCheckpointer(_model(), purpose="train").load(str(evil))
    # the same bytes under a .pth name go through torch.load(weights_only=True), which refuses them
    disguised = tmp_path / "evil.pth"
    disguised.write_bytes(evil.read_bytes())
    with pytest.raises(WeightsError, match=r"evil\.pth: not a plain-tensor checkpoint"):
        load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(disguised)]), purpose="predict")
    # so does the converter, unless told the file is trusted
    with pytest.raises(WeightsError, match=r"evil\.pkl: refusing to unpickle"):
        convert_pickle_weights(str(evil), str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()
    assert not marker.exists()
    # the file is a real threat: plain unpickling runs it
    _write_evil(tmp_path / "evil2.pkl", tmp_path / "pwned2")
    with open(tmp_path / "evil2.pkl", "rb") as f:
        pickle.load(f)
    assert (tmp_path / "pwned2").exists()


def test_model_zoo_urls_are_the_only_trusted_origin():
    assert is_model_zoo_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert is_model_zoo_url("https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl")
    for url in ("https://dl.fbaipublicfiles.com.evil.org/detectron2/R-50.pkl",
                "http://dl.fbaipublicfiles.com/detectron2/R-50.pkl",
                "https://dl.fbaipublicfiles.com/other/R-50.pkl",
                "https://dl.fbaipublicfiles.com/detectron2/../other/R-50.pkl",
                "https://dl.fbaipublicfiles.com/detectron2/%2e%2e/other/R-50.pkl",
                "detectron2://../x.pkl", "/home/me/R-50.pkl", "R-50.pkl"):
        assert not is_model_zoo_url(url), url


# Caffe2 names of a few backbone weights and the detectron2 names detectron2's c2 conversion gives them
# (ResNet stem "conv1" -> stem.conv1, "res_conv1_gn" -> stem.conv1.norm, "branch2a" -> conv1).
_C2_NAMES = {
    "conv1_w": "backbone.bottom_up.stem.conv1.weight",
    "res_conv1_gn_s": "backbone.bottom_up.stem.conv1.norm.weight",
    "res_conv1_gn_b": "backbone.bottom_up.stem.conv1.norm.bias",
    "res2_0_branch2a_w": "backbone.bottom_up.res2.0.conv1.weight",
    "res3_1_branch2b_w": "backbone.bottom_up.res3.1.conv2.weight",
}


def _caffe2_pickle(path):
    shapes = _model().state_dict()
    rng = np.random.default_rng(0)
    blobs = {c2: rng.standard_normal(tuple(shapes[d2].shape)).astype(np.float32) for c2, d2 in _C2_NAMES.items()}
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # detectron2 drops solver state from Caffe2 files
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return blobs


def test_trusted_pickle_opt_in_and_converted_file_load_the_same_state(tmp_path, caplog):
    pkl = tmp_path / "R-18-c2.pkl"
    blobs = _caffe2_pickle(pkl)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(pkl)]), purpose="train")
    from_pickle = _model()
    with caplog.at_level(logging.WARNING, logger="mammo_tl.checkpoint"):
        load_model_weights(from_pickle, tiny_cfg(opts=["MODEL.WEIGHTS", str(pkl), "MODEL.WEIGHTS_TRUSTED_PICKLE",
                                                      "True"]), purpose="train")
    total = len(from_pickle.state_dict())
    assert f"loaded {len(_C2_NAMES)} of {total} model weights" in caplog.text
    for c2, d2 in _C2_NAMES.items():
        np.testing.assert_array_equal(from_pickle.state_dict()[d2].numpy(), blobs[c2])

    pth = tmp_path / "R-18-c2.pth"
    r = subprocess.run([sys.executable, "tools/convert_weights.py", "--trusted", str(pkl), str(pth)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    raw = torch.load(pth, weights_only=True)
    assert raw["__author__"] == "Caffe2" and raw["matching_heuristics"] is True
    assert sorted(raw["model"]) == sorted(_C2_NAMES)  # Caffe2 names kept: renamed on load, as for the .pkl
    from_converted = _model()
    load_model_weights(from_converted, tiny_cfg(opts=["MODEL.WEIGHTS", str(pth)]), purpose="train")
    a, b = from_pickle.state_dict(), from_converted.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_converted_model_zoo_format_loads_for_prediction(tmp_path, weights):
    """A detectron2-format .pkl (numpy arrays under detectron2 names) of a whole model, converted."""
    state = torch.load(weights, weights_only=True)["model"]
    pkl = tmp_path / "model_final.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    pth = tmp_path / "model_final.pth"
    summary = convert_pickle_weights(str(pkl), str(pth), trusted=True)
    assert summary["tensors"] == len(state) and summary["author"] == "Detectron2 Model Zoo"
    predictor = MammoPredictor(tiny_cfg(opts=["MODEL.WEIGHTS", str(pth)]))
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(WeightsError, match=r"must end in \.pth"):
        convert_pickle_weights(str(pkl), str(tmp_path / "again.pkl"), trusted=True)


def test_empty_weights_refused_for_predict_and_evaluate():
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty: predict needs a trained model"):
        MammoPredictor(tiny_cfg())
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty: evaluate needs a trained model"):
        load_model_weights(_model(), tiny_cfg(), purpose="evaluate")


@pytest.mark.parametrize("content", [{"iteration": 7, "scheduler": {"last_epoch": 7}}, {"model": {}}])
def test_checkpoint_without_model_weights_refused(tmp_path, content):
    path = tmp_path / "state.pth"
    torch.save(content, path)
    for purpose in ("train", "predict"):
        with pytest.raises(WeightsError, match=r"state\.pth: holds no model weights"):
            load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(path)]), purpose=purpose)


def test_partial_checkpoint_refused_naming_the_missing_weights(tmp_path, weights, caplog):
    state = torch.load(weights, weights_only=True)["model"]
    partial = {k: v for k, v in state.items() if not k.startswith("roi_heads.")}
    path = tmp_path / "no_roi_heads.pth"
    torch.save({"model": partial}, path)
    # tiny model: box head fc1, fc2 (weight, bias) and box predictor cls_score, bbox_pred (weight, bias)
    msg = (r"no_roi_heads\.pth: 8 of 98 model weights are not in the checkpoint \(roi_heads\.box_head \(4\), "
           r"roi_heads\.box_predictor \(4\)")
    for purpose in ("predict", "evaluate"):
        with pytest.raises(WeightsError, match=msg):
            load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(path)]), purpose=purpose)
    # training may start from part of a model (e.g. an ImageNet backbone), and says what is random
    with caplog.at_level(logging.WARNING, logger="mammo_tl.checkpoint"):
        load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(path)]), purpose="train")
    assert "loaded 90 of 98 model weights" in caplog.text and "roi_heads.box_predictor (4)" in caplog.text

    # a weight of the wrong shape counts as missing, and its shapes are named
    other = build_model(tiny_cfg(opts=["MODEL.ROI_BOX_HEAD.FC_DIM", 32]))
    wrong = tmp_path / "fc32.pth"
    torch.save({"model": other.state_dict()}, wrong)
    with pytest.raises(WeightsError, match=r"6 of 98 .*roi_heads\.box_head\.fc1\.bias \(shape \(32,\) in the "
                                           r"checkpoint, \(64,\) in the model\)"):
        MammoPredictor(tiny_cfg(opts=["MODEL.WEIGHTS", str(wrong)]))

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"encoder.layer0.weight": torch.zeros(3)}}, unrelated)
    with pytest.raises(WeightsError, match=r"unrelated\.pth: none of the model's 98 weights are in the checkpoint "
                                           r"\(its 1 entries: encoder\.layer0 \(1\)"):
        load_model_weights(_model(), tiny_cfg(opts=["MODEL.WEIGHTS", str(unrelated)]), purpose="train")


def test_training_from_scratch_is_allowed_and_logged(tiny_datasets, tmp_path, caplog):
    from detectron2.engine.hooks import PeriodicCheckpointer

    from mammo_tl.engine import Trainer

    cfg = tiny_cfg(opts=["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 1])
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, MammoCheckpointer) and trainer.checkpointer.purpose == "train"
    periodic = next(h for h in trainer._hooks if isinstance(h, PeriodicCheckpointer))
    assert periodic.checkpointer is trainer.checkpointer
    with caplog.at_level(logging.WARNING, logger="mammo_tl.checkpoint"):
        trainer.resume_or_load(resume=False)
    assert "MODEL.WEIGHTS is empty: training from random initialisation" in caplog.text

    marker = tmp_path / "pwned"
    _write_evil(tmp_path / "evil.pkl", marker)
    evil_cfg = tiny_cfg(opts=["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(tmp_path / "evil.pkl")])
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        Trainer(evil_cfg).resume_or_load(resume=False)
    assert not marker.exists()


def test_resume_with_empty_or_dangling_last_checkpoint_names_the_file(tmp_path, weights):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000004.pth").write_bytes(open(weights, "rb").read())
    tag = out / "last_checkpoint"
    cfg = tiny_cfg(opts=["OUTPUT_DIR", str(out)])
    tag.write_text("")
    with pytest.raises(WeightsError, match=rf"{tag} is empty: --resume needs it to name the checkpoint.*"
                                           r"checkpoints in .*: model_0000004\.pth"):
        load_model_weights(_model(), cfg, purpose="train", resume=True)
    tag.write_text("model_0000099.pth\n")
    with pytest.raises(WeightsError, match=rf"{tag} names 'model_0000099\.pth', which is not a file in {out}"):
        load_model_weights(_model(), cfg, purpose="evaluate", resume=True)
    # --eval-only --resume: the checkpoint named there, even with MODEL.WEIGHTS empty
    tag.write_text("model_0000004.pth")
    model = _model()
    load_model_weights(model, cfg, purpose="evaluate", resume=True)
    state = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
