"""tools/export_model.py: a trained model as TorchScript or ONNX, for tools/predict.py --model
(:mod:`.runtime`) or any runtime that reads them.

The model is traced through detectron2's :class:`~detectron2.export.TracingAdapter` on one prepared image
(C, H, W) = (3, INPUT.FIXED_SIZE) and returns (boxes (n, 4) in that grid, scores (n,)) after the ROI heads'
score threshold and NMS; mapping boxes back to the stored image (crop, flip, resize) stays outside the graph.
ONNX is written by torch's TorchScript-based exporter (``dynamo=False``) at an explicit opset.

Before the folder is written, the exported model is run beside the PyTorch model on two test images and must
give the same boxes and scores (:data:`BOX_TOLERANCE`, :data:`SCORE_TOLERANCE`); a config detectron2 cannot
trace, or whose trace does not reproduce the model, is refused naming the config key.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import get_mammo_tl_cfg
from ..files import atomic_write_bytes, atomic_write_text, sha256_file
from ..modeling.findings import CANCER_CLASS
from .runtime import (BINDING_KEY, EXPORT_FORMAT_VERSION, EXPORT_JSON, FORMATS, ExportedPredictor,
                             ExportedPreparer, ExportError, _first_line, export_json_binding, map_back,
                             onnx_with_binding)

logger = logging.getLogger(__name__)
DEFAULT_OPSET = 17
# The ONNX opsets an export may ask for: detectron2's box pooling (ROIAlignV2, aligned=True) is ONNX RoiAlign
# with coordinate_transformation_mode "half_pixel", which exists from opset 16 (at 11 to 15 the export runs but
# its boxes differ by up to 100 pixels); torch's TorchScript-based exporter writes up to opset 20.
MIN_OPSET, MAX_OPSET = 16, 20
# The exported model must reproduce the PyTorch model's boxes (pixels of the model's input grid) and scores
# within these on the test images, else the export is refused.
BOX_TOLERANCE = 0.01
SCORE_TOLERANCE = 1e-4


def _config(config_file, opts):
    if not os.path.isfile(config_file):
        raise ExportError(f"--config-file {config_file}: file not found")
    cfg = get_mammo_tl_cfg()
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except Exception as e:  # yacs reports a bad key or value in many exception types
        raise ExportError(f"--config-file {config_file} {' '.join(map(str, opts))}: {type(e).__name__}: {e}") \
            from None
    cfg.MODEL.DEVICE = "cpu"  # traced on the CPU (a TorchScript trace keeps its device)
    cfg.freeze()
    return cfg


def exportable_problem(cfg: Any, fmt: str) -> str | None:
    """Why ``cfg`` cannot be exported in ``fmt`` (naming the config key), or None."""
    if cfg.INPUT.RESIZE_MODE != "fixed":
        return (f"INPUT.RESIZE_MODE {cfg.INPUT.RESIZE_MODE!r}: an exported model takes one input size; export "
                f"a config with INPUT.RESIZE_MODE 'fixed' (INPUT.FIXED_SIZE), as the paper's configs are")
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        return (f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}: only GeneralizedRCNN (Faster R-CNN) "
                f"models are exported")
    for key in ("MASK_ON", "KEYPOINT_ON"):
        if cfg.MODEL[key]:
            return f"MODEL.{key} True: an exported model returns boxes and scores only"
    if fmt == "onnx" and any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        return ("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolution has no ONNX operator; export "
                "--format torchscript")
    return None


def _test_image(size, seed):
    """A mammogram-like uint16 grid of about 1.5 times ``size``: a breast against the left edge, texture, a
    brighter mass, dark background (what the crop, window and model expect)."""
    h, w = (int(s * 1.5) for s in size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt((xx / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2)
    img = 0.05 + 0.02 * rng.random((h, w))
    img[r <= 1] = 0.45 + 0.1 * rng.random(int((r <= 1).sum()))
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.2, 0.5)
    img[((yy - cy) / (0.06 * h)) ** 2 + ((xx - cx) / (0.06 * w)) ** 2 <= 1] += 0.35
    return (np.clip(img, 0, 1) * 4095).astype(np.uint16)


def _inference(model, image):
    """The model's cancer-class boxes and scores (mammo_tl.modeling.findings), as the exported file returns them."""
    inst = model.inference([{"image": image}], do_postprocess=False)[0]
    if model.roi_heads.num_classes > 1:  # traced as a mask: the exported file drops the other classes too
        inst = inst[inst.pred_classes == CANCER_CLASS]
    return inst.pred_boxes.tensor, inst.scores


def _compare(reference, exported, what):
    (rb, rs), (eb, es) = reference, exported
    if rb.shape != eb.shape:
        return f"{what}: {len(rb)} box(es) from the PyTorch model, {len(eb)} from the exported one"
    if len(rb) == 0:
        return None
    db, ds = float(np.abs(rb - eb).max()), float(np.abs(rs - es).max())
    if db > BOX_TOLERANCE or ds > SCORE_TOLERANCE:
        return (f"{what}: boxes differ by up to {db:.3g} pixels, scores by up to {ds:.3g} (allowed "
                f"{BOX_TOLERANCE:g}, {SCORE_TOLERANCE:g})")
    return None


def export_model(config_file: str, fmt: str, output: str, opts: Sequence[str] = (),
                 opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export the model of ``config_file`` (with ``opts``; MODEL.WEIGHTS the trained checkpoint) to
    ``output``/model.ts or model.onnx with ``output``/export.json; returns export.json's content. Raises
    ExportError (or mammo_tl.checkpoint.WeightsError) naming what is wrong."""
    from detectron2.export import TracingAdapter
    from detectron2.modeling import build_model

    from ..checkpoint import load_model_weights
    from ..data.prepared import InputPreparer

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    valid_opset = isinstance(opset, int) and not isinstance(opset, bool) and MIN_OPSET <= opset <= MAX_OPSET
    if fmt == "onnx" and not valid_opset:
        raise ExportError(f"--opset {opset!r}: this model exports to ONNX opsets {MIN_OPSET} to {MAX_OPSET} (RoiAlign "
                          f"as detectron2 pools boxes exists from opset {MIN_OPSET}); the default is {DEFAULT_OPSET}")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ExportError(f"--output {output}: exists and is not a folder; name a folder for the model and "
                          f"{EXPORT_JSON}")
    cfg = _config(config_file, opts)
    problem = exportable_problem(cfg, fmt)
    if problem:
        raise ExportError(f"--config-file {config_file}: cannot export: {problem}")
    model_file = FORMATS[fmt]
    existing = [n for n in (EXPORT_JSON, *FORMATS.values()) if os.path.exists(os.path.join(output, n))]
    if existing:
        raise ExportError(f"--output {output} already holds an export ({', '.join(existing)}); remove it or "
                          f"choose another folder")
    model = build_model(cfg)
    model.eval()
    load_model_weights(model, cfg, purpose="predict")  # every weight from MODEL.WEIGHTS, else WeightsError
    prep = {"size": [int(s) for s in cfg.INPUT.FIXED_SIZE],
            "intensity_percentiles": [float(p) for p in cfg.INPUT.INTENSITY_PERCENTILES],
            "crop_to_breast": bool(cfg.INPUT.CROP_TO_BREAST), "canonical_flip": bool(cfg.INPUT.CANONICAL_FLIP),
            "resize": "area"}
    reference_prep, exported_prep = InputPreparer(cfg), ExportedPreparer(prep)
    images = [_test_image(prep["size"], seed) for seed in (0, 1)]
    prepared = [reference_prep(im) for im in images]
    for im, p in zip(images, prepared):
        if not torch.equal(exported_prep(im).tensor, p.tensor):
            raise ExportError(f"--config-file {config_file}: the preparation recorded in {EXPORT_JSON} does not "
                              f"reproduce predict's (INPUT.* keys); cannot export")
    config_text = cfg.dump()
    with open(config_file, "rb") as f:
        config_file_sha256 = hashlib.sha256(f.read()).hexdigest()
    meta = {"format_version": EXPORT_FORMAT_VERSION, "written_by": "tools/export_model.py", "mammo_tl": __version__,
            "torch": torch.__version__, "format": fmt, "model_file": model_file,
            "opset": int(opset) if fmt == "onnx" else None,
            "input": prep, "output": "boxes (n, 4) x1 y1 x2 y2 in the input grid, scores (n,)",
            "score_threshold": float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
            "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
            "source": {"config_file": os.path.abspath(config_file), "config_file_sha256": config_file_sha256,
                       "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
                       "weights": cfg.MODEL.WEIGHTS, "weights_sha256": sha256_file(cfg.MODEL.WEIGHTS)},
            "config": config_text}
    # the model file records the sha256 of this export.json's content: a changed preparation is refused on load
    binding = export_json_binding(meta)
    # eval() on the adapter too: torch.onnx.export restores the adapter's mode afterwards, on the model inside
    adapter = TracingAdapter(model, (prepared[0].tensor,), inference_func=_inference).eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches: checked by running it below
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False), buffer,
                               _extra_files={BINDING_KEY: binding})
            else:
                torch.onnx.export(adapter, adapter.flattened_inputs, buffer, opset_version=int(opset), dynamo=False,
                                  input_names=["image"], output_names=["boxes", "scores"])
    except Exception as e:
        raise ExportError(f"--config-file {config_file}: detectron2 cannot trace this model to {fmt} "
                          f"(MODEL.PROPOSAL_GENERATOR.NAME {cfg.MODEL.PROPOSAL_GENERATOR.NAME}, "
                          f"MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME}, "
                          f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}): {type(e).__name__}: {_first_line(e)}") \
            from None
    data = buffer.getvalue()
    if fmt == "onnx":
        data = onnx_with_binding(data, binding)
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    exported = ExportedPredictor(model_file, meta, "cpu", data)
    checks = []
    with torch.no_grad():
        for k, p in enumerate(prepared):
            ref = tuple(t.numpy() for t in _inference(model, p.tensor))
            got = exported._run(p.tensor)
            problem = _compare(ref, got, f"test image {k + 1}")
            if problem:
                raise ExportError(f"--config-file {config_file}: the {fmt} export does not reproduce the PyTorch "
                                  f"model ({problem}); not written")
            checks.append(len(ref[0]))
        # and through the mapping back to the stored grid that predict applies
        for im, p in zip(images, prepared):
            ref = map_back(*(t.numpy() for t in _inference(model, p.tensor)), p.transform, prep["size"])
            got = exported(im)
            # a model-grid pixel in stored pixels
            (h, w), (ih, iw) = p.transform.size, prep["size"]
            tolerance = BOX_TOLERANCE * max(h / ih, w / iw)
            if ref[0].shape != got[0].shape or (len(ref[0]) and np.abs(ref[0] - got[0]).max() > tolerance):
                raise ExportError(f"--config-file {config_file}: the {fmt} export's boxes differ from the PyTorch "
                                  f"model's in the stored image's pixels; not written")
    if not any(checks):
        logger.warning("%s: the model found no box above MODEL.ROI_HEADS.SCORE_THRESH_TEST %g on the export's test "
                       "images, so the check that the %s export reproduces it compared no boxes", config_file,
                       meta["score_threshold"], fmt)
    meta["verified"] = {"test_images": len(prepared), "boxes": checks, "box_tolerance": BOX_TOLERANCE,
                        "score_tolerance": SCORE_TOLERANCE}
    os.makedirs(output, exist_ok=True)
    atomic_write_bytes(os.path.join(output, model_file), data)
    atomic_write_text(os.path.join(output, EXPORT_JSON), json.dumps(meta, indent=1) + "\n")  # last: complete
    logger.info("exported %s to %s (%s, %d bytes)", config_file, os.path.join(output, model_file), fmt, len(data))
    return meta
