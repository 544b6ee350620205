"""What a set holds (docs/phantom.md, section 5): writing a set (:func:`generate`: PNG, optional DICOM,
annotations.json, patients.csv) and reading it back (:func:`load_synthetic`, :func:`load_phantom_truth`)."""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..records import box_annotation, export_coco, validate_records
from .patients import draw_ddsm_case, draw_patient
from .render import render_image
from .spec import GENERATOR_VERSION, SyntheticSpec
from .tissue import BETA_RANGE, GLANDULAR_FRACTION

if TYPE_CHECKING:
    from pydicom.dataset import FileDataset

# the package's name, "mammo_tl.data.synthetic", as the one module had: its log records keep their logger
logger = logging.getLogger(__package__)


def write_dicom(path: str | os.PathLike, image: np.ndarray, patient_id: str, laterality: str, view: str) -> None:
    """Minimal uncompressed MONOCHROME2 mammogram DICOM (modality MG) with pydicom."""
    mammogram_dataset(path, image, patient_id, laterality, view).save_as(str(path), enforce_file_format=True)


def mammogram_dataset(path: str | os.PathLike, image: np.ndarray, patient_id: str, laterality: str,
                      view: str) -> FileDataset:
    """The pydicom dataset :func:`write_dicom` saves: 16-bit MONOCHROME2, explicit VR little endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
    return ds


LESION_KEYS = ("class", "kind", "shape", "margin", "radius", "contrast", "box", "center")


def generate(root: str, spec: SyntheticSpec | None = None, progress: bool = True) -> dict[str, str]:
    """Write a synthetic data set under ``root``; returns the paths of annotations.json and patients.csv.

    Deterministic: the same spec gives byte-identical images and annotations. The spec, its protocol included,
    is recorded in annotations.json (``info.spec``); a ``screening`` set's files are those generator version 3
    wrote before protocols existed, byte for byte, but for the two new keys of ``info.spec``.
    """
    from tqdm import tqdm

    spec = spec or SyntheticSpec()
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    labels = [1] * spec.num_positive_patients + [0] * spec.num_negative_patients
    rng.shuffle(labels)
    records, truth, patients = [], [], []
    draw = draw_ddsm_case if spec.protocol == "ddsm" else draw_patient
    bar = tqdm(total=len(labels), desc=f"synthetic mammograms -> {root}", unit="patient", disable=not progress)
    for p, label in enumerate(labels):
        patient_id = f"SYN{spec.seed:03d}_{p:05d}"
        views, density, gf, beta, breasts = draw(rng, spec, label)
        lo, hi = GLANDULAR_FRACTION[density]
        for laterality, view in views:
            b = breasts[laterality]
            # the two breasts and two views of a woman differ a little in texture and density
            img_beta = float(np.clip(beta + rng.normal(0, 0.08), *BETA_RANGE))
            img_gf = float(np.clip(gf + rng.normal(0, 0.02), lo, hi))
            out = render_image(rng, spec, laterality, view, b["masses"], b["lookalikes"], b["calcifications"],
                               density, img_gf, img_beta)
            image_id = len(records) + 1
            stem = f"{patient_id}_{laterality}_{view}"
            file_name = os.path.join("images", stem + ".png")
            cv2.imwrite(os.path.join(root, file_name), out.image)
            if spec.write_dicom:
                write_dicom(os.path.join(root, "images", stem + ".dcm"), out.image, patient_id, laterality, view)
            records.append(dict(file_name=file_name, height=spec.height, width=spec.width, image_id=image_id,
                                patient_id=patient_id, laterality=laterality, view=view,
                                lookalike_boxes=out.lookalike_boxes,
                                annotations=[box_annotation(m["box"]) for m in out.masses]))
            truth.append(dict(density=density, glandular_fraction=round(img_gf, 4), beta=round(img_beta, 4),
                              mass_margins=[m["margin"] for m in out.masses],
                              lookalike_kinds=[m["kind"] for m in out.lookalikes],
                              calcification_boxes=out.calcification_boxes,
                              lesions=[{k: m[k] for k in LESION_KEYS} for m in (*out.masses, *out.lookalikes)]))
        patients.append(dict(patient_id=patient_id, label=label, num_images=len(views), density=density))
        bar.update(1)
    bar.close()
    csv_path = os.path.join(root, "patients.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "label", "num_images", "density"])
        writer.writeheader()
        writer.writerows(patients)
    # COCO via the one exporter, then the phantom's truth per image; written last and atomically: its
    # presence means a complete set (see matches_spec)
    from ...files import atomic_write_json

    ann_path = os.path.join(root, "annotations.json")
    base = export_coco(records, os.path.join(root, ".annotations.coco.json"),
                       info=dict(description="mammo_tl synthetic mammograms", spec=asdict(spec),
                                 generator_version=GENERATOR_VERSION))
    with open(base) as f:
        coco = json.load(f)
    os.remove(base)
    for im, extra in zip(coco["images"], truth):
        im.update(extra)
    atomic_write_json(coco, ann_path)
    logger.info("synthetic set %s (%s protocol): %d patients (%d positive), %d images, %d masses", root,
                spec.protocol, len(patients), sum(labels), len(records),
                sum(len(r["annotations"]) for r in records))
    return {"annotations": ann_path, "patients": csv_path}


def matches_spec(root: str, spec: SyntheticSpec) -> bool:
    """True when ``root`` holds a complete set generated from ``spec`` (its protocol included) by this generator
    version; a set made under another protocol, or by a generator that recorded none, does not match."""
    try:
        with open(os.path.join(root, "annotations.json")) as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("spec") == asdict(spec) and info.get("generator_version") == GENERATOR_VERSION


def _read_annotations(root):
    ann_path = os.path.join(root, "annotations.json")
    if not os.path.exists(ann_path):
        raise FileNotFoundError(f"{ann_path} not found: generate the set first "
                                f"(python tools/make_synthetic.py --output {root})")
    with open(ann_path) as f:
        return ann_path, json.load(f)


def load_synthetic(root: str) -> list[dict]:
    """detectron2 dataset dicts of a set written by :func:`generate` (boxes in XYXY_ABS). The phantom's
    truth (density, look-alikes, lesion kinds) is left out, as for every data set: :func:`load_phantom_truth`."""
    from detectron2.structures import BoxMode

    ann_path, coco = _read_annotations(root)
    by_image = {}
    for a in coco["annotations"]:
        x, y, bw, bh = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            {"bbox": [x, y, x + bw, y + bh], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0})
    records = [dict(file_name=os.path.join(root, im["file_name"]), height=im["height"], width=im["width"],
                    image_id=im["id"], patient_id=im["patient_id"], laterality=im["laterality"], view=im["view"],
                    annotations=by_image.get(im["id"], []))
               for im in coco["images"]]
    return validate_records(records, ann_path)


TRUTH_KEYS = ("density", "glandular_fraction", "beta", "mass_margins", "lookalike_boxes", "lookalike_kinds",
              "calcification_boxes", "lesions")


def load_phantom_truth(root: str) -> dict[int, dict]:
    """image_id (as :func:`load_synthetic` gives it) -> the phantom's truth for that image: patient_id,
    density, glandular_fraction, beta, mass_margins, lookalike_boxes, lookalike_kinds, calcification_boxes and
    lesions (class, kind, shape, margin, radius, contrast, box, center per mass and look-alike)."""
    ann_path, coco = _read_annotations(root)
    out = {}
    for im in coco["images"]:
        missing = [k for k in TRUTH_KEYS if k not in im]
        if missing:
            raise ValueError(f"{ann_path}: image {im['id']} has no {missing}: made by an older generator; "
                             "generate the set again")
        out[im["id"]] = dict({k: im[k] for k in TRUTH_KEYS}, patient_id=im["patient_id"])
    return out
