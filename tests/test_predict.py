"""Preprocessing geometry and tools/predict.py: boxes come back in the original pixel grid."""
import csv
import json

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from mammo_tl.data.preprocess import MammoTransform, breast_bbox, preprocess
from mammo_tl.inference import command as predict_mod
from mammo_tl.inference.predictor import MammoPredictor


def _phantom(h=600, w=480, chest_wall="right"):
    """A breast against one edge, a film label in the opposite corner, a bright square 'lesion'."""
    img = np.full((h, w), 200.0, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w - 1 if chest_wall == "right" else 0
    img[((xx - cx) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1] = 3000.0
    lx = 10 if chest_wall == "right" else w - 50
    img[15:35, lx:lx + 40] = 4000.0  # label outside the breast
    lesion = (300, 250, 330, 290) if chest_wall == "right" else (150, 250, 180, 290)
    x1, y1, x2, y2 = lesion
    img[y1:y2, x1:x2] = 6000.0
    return img, np.array([lesion], dtype=np.float64)


def test_transform_round_trip():
    t = MammoTransform((4000, 3000), (500, 200, 2500, 3900), True, (512, 512))
    boxes = np.array([[600.5, 300, 900, 700], [2400, 3800, 2500, 3900]])
    np.testing.assert_allclose(t.inverse_boxes(t.apply_boxes(boxes)), boxes, atol=1e-6)
    # the flip mirrors inside the crop: the crop's left edge maps to the output's right edge
    np.testing.assert_allclose(t.apply_boxes([[500, 200, 500, 200]])[0, [0, 1]], [512, 0])
    assert MammoTransform.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_breast_bbox_drops_the_label():
    img, _ = _phantom()
    x1, y1, x2, y2 = breast_bbox(img)
    assert x1 > 60, "the film label at the far left must not be in the crop"
    assert x2 == 480 and y1 < 0.1 * 600 + 10 and y2 > 0.9 * 600 - 10


@pytest.mark.parametrize("chest_wall", ["left", "right"])
def test_lesion_found_in_preprocessed_image_maps_back_within_a_pixel(chest_wall):
    img, lesion = _phantom(chest_wall=chest_wall)
    out, t = preprocess(img, size=(256, 256), crop=True, canonical_flip=True)
    assert t.flip == (chest_wall == "right")
    mask = (out > 5000).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
    np.testing.assert_allclose(t.apply_boxes(lesion), found, atol=1.0)
    # one preprocessed pixel spans 1/scale original pixels; compare at that resolution
    sx, sy = t.scale
    back = t.inverse_boxes(found)
    assert np.all(np.abs(back - lesion)[:, [0, 2]] <= 1.0 / sx + 1)
    assert np.all(np.abs(back - lesion)[:, [1, 3]] <= 1.0 / sy + 1)


class _FixedModel(torch.nn.Module):
    """Returns one box at a known place in the coordinates the model is asked for (height, width)."""

    def __init__(self, rel_box):
        super().__init__()
        self.rel_box = rel_box
        self.seen = []

    def forward(self, batched):
        out = []
        for b in batched:
            h, w = b["height"], b["width"]
            self.seen.append((h, w, tuple(b["image"].shape)))
            x1, y1, x2, y2 = self.rel_box
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor([[x1 * w, y1 * h, x2 * w, y2 * h]]))
            inst.scores = torch.tensor([0.8])
            out.append({"instances": inst})
        return out


def test_predictor_loads_the_checkpoint_it_is_given(tmp_path_factory):
    """The real constructor: the tiny config, a checkpoint saved by detectron2, loaded weight for weight."""
    from tests.common import tiny_cfg
    from tests.test_weights import tiny_weights

    weights = tiny_weights(tmp_path_factory)
    torch.manual_seed(123)  # another initialisation than the saved one: equality below means loaded
    predictor = MammoPredictor(tiny_cfg(opts=["MODEL.WEIGHTS", weights]))
    saved = torch.load(weights, weights_only=True)["model"]
    loaded = predictor.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    img, _ = _phantom(300, 240)
    boxes, scores = predictor(img)
    assert boxes.shape == (len(scores), 4) and np.all((scores >= 0) & (scores <= 1))


def test_predict_writes_boxes_in_original_coordinates(tmp_path, tmp_path_factory, monkeypatch):
    from tests.test_weights import tiny_config_file, tiny_weights

    img, _ = _phantom(chest_wall="right")
    png = tmp_path / "in" / "PAT1_R_CC.png"
    png.parent.mkdir()
    cv2.imwrite(str(png), img.astype(np.uint16))
    from mammo_tl.data.synthetic import write_dicom

    write_dicom(tmp_path / "in" / "scan.dcm", img.astype(np.uint16), "PAT2", "R", "MLO")
    (tmp_path / "in" / "broken.dcm").write_bytes(b"not a dicom at all")
    rel = (0.25, 0.5, 0.5, 0.75)
    model = _FixedModel(rel)
    loaded = []
    real_init = MammoPredictor.__init__

    def init(self, cfg, **kwargs):
        real_init(self, cfg, **kwargs)  # builds the tiny model and loads the saved checkpoint
        loaded.append(self.model.state_dict())
        self.model = model  # then answers with a known box, to check the geometry

    monkeypatch.setattr(MammoPredictor, "__init__", init)
    results, skipped = predict_mod.run_predict(
        tiny_config_file(tmp_path_factory), [str(tmp_path / "in")], str(tmp_path / "out"),
        ["MODEL.DEVICE", "cpu", "INPUT.CROP_TO_BREAST", "True", "INPUT.CANONICAL_FLIP", "True",
         "INPUT.FIXED_SIZE", "(64, 64)"], overlay=True)
    saved_state = torch.load(tiny_weights(tmp_path_factory), weights_only=True)["model"]
    assert len(loaded) == 1 and all(torch.equal(loaded[0][k], v) for k, v in saved_state.items())
    assert [(s["kind"], "DICOM" in s["reason"]) for s in skipped] == [("unreadable", True)]  # broken.dcm
    _, t = preprocess(img, size=(64, 64), crop=True, canonical_flip=True)  # as predict prepares it
    h, w = t.size
    expected = t.inverse_boxes([[rel[0] * w, rel[1] * h, rel[2] * w, rel[3] * h]])[0]
    by_patient = {r["patient_id"]: r for r in results}
    assert set(by_patient) == {"PAT1", "PAT2"}
    assert (by_patient["PAT1"]["laterality"], by_patient["PAT1"]["view"]) == ("R", "CC")
    assert (by_patient["PAT2"]["laterality"], by_patient["PAT2"]["view"]) == ("R", "MLO")
    for r in results:
        np.testing.assert_allclose(r["boxes"][0], expected, atol=1.0)
        assert r["scores"] == [0.8]
    assert all(seen[2] == (3, 64, 64) for seen in model.seen)
    saved = json.load(open(tmp_path / "out" / "predictions.json"))
    assert saved == results
    rows = list(csv.DictReader(open(tmp_path / "out" / "patients.csv")))
    assert rows == [{"patient_id": "PAT1", "score": "0.800000"}, {"patient_id": "PAT2", "score": "0.800000"}]
    overlay = by_patient["PAT1"]["overlay"]
    assert overlay.startswith("overlays/PAT1_R_CC_") and (tmp_path / "out" / overlay).exists()
    assert json.load(open(tmp_path / "out" / "skipped.json")) == skipped


def test_help_states_every_default_and_what_output_is():
    """tools/predict.py --help as a user reads it: --min-score says its default, --output what it is."""
    import re

    from tests.common import run_in_process

    r = run_in_process(["tools/predict.py", "--help"])
    assert r.returncode == 0
    text = re.sub(r"\s+", " ", r.stdout)
    assert re.search(r"--min-score MIN_SCORE report boxes scoring at least this, 0 to 1 \(default 0\.05\)", text)
    assert re.search(r"--output DIR the folder the results go to", text)


def test_a_phantom_trained_model_on_dicom_files_is_warned_about(caplog):
    """make demo's models know only the built-in phantoms: predicting DICOM files with one says so; a model trained
    on a user's set, or phantom PNGs, gets no warning."""
    import logging

    from mammo_tl.inference.options import warn_if_trained_on_phantoms
    from tests.common import tiny_cfg

    demo = tiny_cfg("synthetic_ddsm/d_tl_similarity.yaml", opts=["DATASETS.TRAIN", "('mammo_synth_ddsm_train',)"])
    with caplog.at_level(logging.WARNING, logger="mammo_tl.inference.options"):
        message = warn_if_trained_on_phantoms(demo, ["a/scan.dcm", "b.png", "c.DCM"])
    assert "built-in synthetic phantoms" in message and "2 DICOM file(s)" in message
    assert message in caplog.text
    assert warn_if_trained_on_phantoms(demo, ["b.png"]) is None
    own = tiny_cfg(opts=["DATASETS.TRAIN", "('cbis_ddsm_paper_train',)"])
    assert warn_if_trained_on_phantoms(own, ["a/scan.dcm"]) is None
