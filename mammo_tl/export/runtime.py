"""Running a model exported by tools/export_model.py (:mod:`.exporter`) without detectron2's modeling code:
ONNX Runtime for ``model.onnx``, TorchScript for ``model.ts``.

The exported folder holds the model file and ``export.json`` (:data:`EXPORT_JSON`): the model file's name
and sha256, the preparation predict applies before the model (input size, intensity percentiles, crop to the
breast, canonical flip), the score threshold inside the graph, and the source weights' and config's sha256.
:func:`load_exported` checks all of it where the folder enters, each error naming the file at fault.

The preparation here is :class:`~mammo_tl.data.prepared.InputPreparer`'s for INPUT.RESIZE_MODE "fixed" (the only mode
exported): crop and flip, area-average to the input size, window to 0..255, three channels; boxes come back in
the model's grid and are mapped to the stored image's pixels outside the graph, as MammoPredictor does.
This module imports numpy, torch and mammo_tl.data's preprocessing only.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data.image_io import to_model_input
from ..data.preprocess import DecodeGeometry, MammoTransform, preprocess
from ..data.resolution import ResolutionRequest
from ..data.prepared import PreparedImage

logger = logging.getLogger(__name__)
EXPORT_JSON = "export.json"
# 2: the model file holds the sha256 of its export.json (:func:`export_json_binding`); version 1 files had none
EXPORT_FORMAT_VERSION = 2
# The key under which the model file records :func:`export_json_binding`: an ONNX metadata_props entry, a
# TorchScript archive's extra file.
BINDING_KEY = "mammo_tl.export_json_sha256"
# export.json's keys that the binding leaves out: written after the model file is made (its sha256, the
# verification), or added when it is read.
_UNBOUND_KEYS = ("model_sha256", "verified", "path")
FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
SUFFIX_FORMAT = {".ts": "torchscript", ".onnx": "onnx"}


class ExportError(Exception):
    """An export that cannot be made or an exported folder that cannot be used; the message names the file,
    option or config key at fault."""


def _check(cond: bool, path: str, what: str) -> None:
    if not cond:
        raise ExportError(f"{path}: {what}")


def read_export_json(model_path: str) -> dict[str, Any]:
    """The checked ``export.json`` beside ``model_path`` (DIR/model.onnx or DIR/model.ts): it exists, was
    written by tools/export_model.py in a format version this code reads, names this model file and its
    format, and holds well-formed preparation parameters. The model file's sha256 is checked by
    :func:`load_exported`."""
    model_path = str(model_path)
    suffix = os.path.splitext(model_path)[1]
    if suffix not in SUFFIX_FORMAT:
        raise ExportError(f"--model {model_path}: expected an exported model file, DIR/model.onnx or DIR/model.ts "
                          f"(written by tools/export_model.py)")
    if not os.path.isfile(model_path):
        raise ExportError(f"--model {model_path}: file not found")
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), EXPORT_JSON)
    if not os.path.isfile(path):
        raise ExportError(f"{path}: not found; an exported model's folder holds the {EXPORT_JSON} that "
                          f"tools/export_model.py writes beside the model (its preparation and hashes)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    _check(isinstance(meta, dict) and meta.get("written_by") == "tools/export_model.py", path,
           "not an export.json written by tools/export_model.py")
    _check(meta.get("format_version") == EXPORT_FORMAT_VERSION, path,
           f"format_version {meta.get('format_version')!r}; this version of mammo_tl reads {EXPORT_FORMAT_VERSION} "
           f"(export the model again with tools/export_model.py)")
    fmt = SUFFIX_FORMAT[suffix]
    _check(meta.get("format") == fmt and meta.get("model_file") == os.path.basename(model_path), path,
           f"describes {meta.get('model_file')!r} ({meta.get('format')!r}), not {os.path.basename(model_path)} "
           f"({fmt})")
    _check(isinstance(meta.get("model_sha256"), str) and len(meta["model_sha256"]) == 64, path,
           "has no model_sha256")
    prep = meta.get("input")
    _check(isinstance(prep, dict), path, "has no 'input' (the preparation parameters)")
    size = prep.get("size")
    _check(isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size), path,
           f"input.size must be [height, width] in pixels, got {size!r}")
    pct = prep.get("intensity_percentiles")
    _check(isinstance(pct, list) and len(pct) == 2 and all(isinstance(p, (int, float)) for p in pct)
           and 0 <= pct[0] < pct[1] <= 100, path, f"input.intensity_percentiles must be [low, high] within "
                                                  f"[0, 100], got {pct!r}")
    for k in ("crop_to_breast", "canonical_flip"):
        _check(isinstance(prep.get(k), bool), path, f"input.{k} must be true or false, got {prep.get(k)!r}")
    thresh = meta.get("score_threshold")
    _check(isinstance(thresh, (int, float)) and math.isfinite(thresh) and 0 <= thresh <= 1, path,
           f"score_threshold must be a number in [0, 1], got {thresh!r}")
    for k in ("weights_sha256", "config_sha256"):
        _check(isinstance(meta.get("source", {}).get(k), str), path, f"source.{k} is missing")
    meta["path"] = path
    return meta


def export_json_binding(meta: Mapping[str, Any]) -> str:
    """The sha256 of export.json's content that the model file records: every key but those written after the
    model file is made (:data:`_UNBOUND_KEYS`), serialized canonically (sorted keys, no spaces). A changed
    preparation, flip, score threshold or source in export.json no longer matches the model's record."""
    bound = {k: v for k, v in meta.items() if k not in _UNBOUND_KEYS}
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: its key (field number, wire type 2), the payload's length, the payload."""
    out = bytearray()
    for varint in ((number << 3) | 2, len(payload)):
        rest = varint
        while True:
            byte, rest = rest & 0x7F, rest >> 7
            out.append(byte | (0x80 if rest else 0))
            if not rest:
                break
    return bytes(out) + payload


def onnx_with_binding(data: bytes, binding: str) -> bytes:
    """The serialized ONNX ModelProto ``data`` with a metadata_props entry (field 14; key 1, value 2)
    {:data:`BINDING_KEY`: ``binding``}: a field appended to a serialized message is part of it (protobuf's
    merge rule), so no ONNX library is needed."""
    entry = _protobuf_field(1, BINDING_KEY.encode()) + _protobuf_field(2, binding.encode())
    return data + _protobuf_field(14, entry)


def model_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a prediction made by an exported model is keyed by (predict's run.json, --resume, merge)."""
    return {"format": meta["format"], "model_sha256": meta["model_sha256"],
            "source_weights_sha256": meta["source"]["weights_sha256"],
            "config_sha256": meta["source"]["config_sha256"]}


class ExportedPreparer:
    """Stored pixel grid -> :class:`~mammo_tl.data.prepared.PreparedImage` from an export.json's ``input``: the same
    tensor as :class:`~mammo_tl.data.prepared.InputPreparer` gives for the config it was exported from."""

    def __init__(self, prep: Mapping[str, Any]) -> None:
        self.size = tuple(int(s) for s in prep["size"])
        self.percentiles = tuple(float(p) for p in prep["intensity_percentiles"])
        self.crop, self.flip = bool(prep["crop_to_breast"]), bool(prep["canonical_flip"])
        self.resolution = ResolutionRequest(self.size, self.crop)  # as InputPreparer's

    def __call__(self, image: np.ndarray, geometry: DecodeGeometry | None = None) -> PreparedImage:
        out, transform = preprocess(image, size=self.size, crop=self.crop, canonical_flip=self.flip,
                                    geometry=geometry)
        tensor = torch.from_numpy(np.ascontiguousarray(to_model_input(out, self.percentiles).transpose(2, 0, 1)))
        return PreparedImage(tensor, transform)


class ExportedPredictor:
    """MammoPredictor's interface (``prepare``, ``__call__``, ``predict_batch``, ``cfg.MODEL.DEVICE``) over an
    exported model: ONNX Runtime or TorchScript, one image per call (the graph takes one image)."""

    def __init__(self, model_path: str, meta: Mapping[str, Any], device: str = "cpu",
                 data: bytes | None = None) -> None:
        self.meta, self.format = dict(meta), meta["format"]
        self.prepare = ExportedPreparer(meta["input"])
        self.cfg = SimpleNamespace(MODEL=SimpleNamespace(DEVICE=device))  # what predict's loader reads
        if self.format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ExportError(f"--model {model_path}: ONNX Runtime is not installed (pip install onnxruntime, "
                                  f"or mammo_tl's 'export' extra)") from None
            providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
            if providers[0] not in onnxruntime.get_available_providers():
                raise ExportError(f"--device {device}: this ONNX Runtime has no {providers[0]} (it has "
                                  f"{', '.join(onnxruntime.get_available_providers())})")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            try:
                self.session = onnxruntime.InferenceSession(data if data is not None else model_path, options,
                                                            providers=providers)
                self.input_name = self.session.get_inputs()[0].name
                recorded = self.session.get_modelmeta().custom_metadata_map.get(BINDING_KEY)
            except Exception as e:  # InvalidProtobuf, Fail, ...: a damaged or replaced file
                raise ExportError(f"--model {model_path}: not a usable ONNX model, damaged or replaced "
                                  f"({type(e).__name__}: {_first_line(e)}); export it again") from None
        else:
            if device != "cpu":
                raise ExportError(f"--device {device}: a TorchScript model exported by tools/export_model.py is "
                                  f"traced on the CPU and runs there; use --device cpu, or the ONNX export")
            extra = {BINDING_KEY: ""}
            try:
                self.module = torch.jit.load(io.BytesIO(data) if data is not None else model_path,
                                             map_location="cpu", _extra_files=extra)
                self.module.eval()
            except Exception as e:  # RuntimeError from the archive reader: a damaged or replaced file
                raise ExportError(f"--model {model_path}: not a usable TorchScript model, damaged or replaced "
                                  f"({type(e).__name__}: {_first_line(e)}); export it again") from None
            recorded = extra[BINDING_KEY]
            recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
        expected = export_json_binding(meta)
        if recorded != expected:
            where = meta.get("path", EXPORT_JSON)
            raise ExportError(f"{where}: differs from the export.json that {model_path} was exported with (the model "
                              f"records sha256 {str(recorded or 'none')[:12]}..., this one's content hashes to "
                              f"{expected[:12]}...): its preparation or settings were changed after export, and "
                              f"would change every score. Restore it, or export the model again")

    def _run(self, tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if self.format == "onnx":
            boxes, scores = self.session.run(None, {self.input_name: tensor.numpy()})[:2]
            return np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        with torch.no_grad():
            boxes, scores = self.module(tensor)[:2]
        return boxes.numpy(), scores.numpy()

    def __call__(self, image: np.ndarray | PreparedImage) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (n, 4) in the stored image's pixels, scores (n,)), as MammoPredictor returns them."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray | PreparedImage]) -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for im in images:
            p = im if isinstance(im, PreparedImage) else self.prepare(im)
            boxes, scores = self._run(p.tensor)
            results.append(map_back(boxes, scores, p.transform, tuple(p.tensor.shape[-2:])))
        return results


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def map_back(boxes: np.ndarray, scores: np.ndarray, transform: MammoTransform,
             input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in the model's input grid ``input_size`` (H, W) -> the stored image's pixels, outside the graph:
    detectron2's detector_postprocess to ``transform.size`` (scale, clip, drop empty boxes), as MammoPredictor
    asks the model for, then the transform's inverse, clipped to the stored image."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    h, w = transform.size
    b[:, [0, 2]] *= np.float32(w / input_size[1])
    b[:, [1, 3]] *= np.float32(h / input_size[0])
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    keep = (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0)
    out = transform.inverse_boxes(b[keep])
    oh, ow = transform.original_size
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, ow)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, oh)
    return out, np.asarray(scores, np.float32)[keep].astype(np.float64)


def load_exported(model_path: str, device: str = "cpu", meta: Mapping[str, Any] | None = None) -> ExportedPredictor:
    """The exported model at ``model_path`` with its export.json checked (``meta``: as read before by
    :func:`read_export_json`), and the model file's sha256 equal to the one recorded at export (else
    ExportError naming the file)."""
    meta = read_export_json(model_path) if meta is None else meta
    try:
        with open(model_path, "rb") as f:
            data = f.read()  # hashed and loaded from the same bytes
    except OSError as e:
        raise ExportError(f"--model {model_path}: cannot be read ({type(e).__name__}: {e.strerror})") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta["model_sha256"]:
        raise ExportError(f"--model {model_path}: its sha256 {sha[:12]}... differs from the {meta['model_sha256'][:12]}"
                          f"... that {meta['path']} records: the file was changed or replaced after export")
    return ExportedPredictor(model_path, meta, device, data)
