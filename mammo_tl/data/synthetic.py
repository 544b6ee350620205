"""Synthetic mammograms: the built-in data set, deterministic by seed.

Each patient has 2 to 4 views (CC/MLO of the left and/or right breast). An image is a breast-shaped
16-bit phantom with fibroglandular texture. A positive patient has one breast with cancer: the views of
that breast hold 1 or 2 *malignant masses* (irregular outline, spiculated margin), each annotated with a
box. Every other image is negative (``annotations: []``) and holds 1 to 3 *benign look-alikes*: round,
circumscribed masses of similar size and brightness, never annotated; the suspected targets the method
is about. Positive images may hold unannotated look-alikes too (``lookalike_in_positive_prob``).

Written as 16-bit PNG (and optionally DICOM, modality MG) with ``annotations.json`` (COCO style, with
``patient_id``, ``laterality`` and ``view`` on every image) and ``patients.csv``. Loaded, its records have
the shape every converter's records have (validated by the same ``validate_records``), so training and
evaluation take one path for both; the files on disk differ (converters write records.json + coco.json).
"""
import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import cv2
import numpy as np

from .records import box_annotation, export_coco, validate_records

logger = logging.getLogger(__name__)

# Bump when the generator's output changes for the same spec, so cached sets are regenerated.
GENERATOR_VERSION = 1
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
MAX_VALUE = 65535


@dataclass
class SyntheticSpec:
    """Everything that decides a synthetic data set; ``seed`` makes it reproducible."""

    num_positive_patients: int = 50
    num_negative_patients: int = 50
    seed: int = 0
    height: int = 320
    width: int = 256
    # radius range of masses and look-alikes, in pixels of this image size
    min_radius: float = 9.0
    max_radius: float = 16.0
    # contrast of a lesion over the local tissue, as a fraction of the 16-bit range
    min_contrast: float = 0.16
    max_contrast: float = 0.26
    max_lookalikes: int = 3
    # real positive mammograms often hold benign findings too; the baseline sees these as background
    lookalike_in_positive_prob: float = 0.5
    write_dicom: bool = False


def _smooth_noise(rng, shape, sigma):
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _breast_mask(rng, h, w, laterality, view):
    """Half-ellipse breast against the chest wall; right breasts face right (chest wall on the left)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = w * rng.uniform(0.70, 0.90)
    half_height = h * rng.uniform(0.40, 0.47)
    cy = h * rng.uniform(0.47, 0.53)
    # the outline wobbles a little so no two breasts are alike
    wobble = 1.0 + 0.04 * np.sin(yy / h * rng.uniform(4, 8) + rng.uniform(0, 6.28))
    inside = (xx / (depth * wobble)) ** 2 + ((yy - cy) / half_height) ** 2 <= 1.0
    mask = inside.astype(np.float32)
    pectoral = np.zeros_like(mask)
    if view == "MLO":  # pectoral muscle: a bright triangle in the upper chest-wall corner
        a, b = w * rng.uniform(0.25, 0.4), h * rng.uniform(0.35, 0.5)
        pectoral = ((xx / a + yy / b) <= 1.0).astype(np.float32)
        mask = np.maximum(mask, pectoral)
    if laterality == "L":
        mask, pectoral = mask[:, ::-1], pectoral[:, ::-1]
    return np.ascontiguousarray(mask), np.ascontiguousarray(pectoral)


def _lesion(rng, h, w, cx, cy, radius, malignant):
    """A lesion's intensity profile in [0, 1] and its tight box (x1, y1, x2, y2)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    dist = np.sqrt(dx ** 2 + dy ** 2)
    if malignant:
        # irregular outline: a few low harmonics with large amplitude
        r = np.full_like(theta, radius)
        for k in range(2, 6):
            r += radius * rng.uniform(0.05, 0.14) * np.cos(k * theta + rng.uniform(0, 6.28))
        body = np.clip((r - dist) / 1.5 + 0.5, 0, 1)
        # spiculated margin: thin bright lines radiating out of the mass
        spic = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(7, 13))):
            ang = rng.uniform(0, 2 * np.pi)
            length = radius * rng.uniform(1.6, 2.4)
            x2, y2 = cx + np.cos(ang) * length, cy + np.sin(ang) * length
            cv2.line(spic, (int(round(cx)), int(round(cy))), (int(round(x2)), int(round(y2))), 0.65, 1, cv2.LINE_AA)
        profile = np.maximum(body, spic * (dist > radius * 0.8))
    else:
        # benign look-alike: an ellipse with a smooth, circumscribed edge
        a = radius * rng.uniform(0.9, 1.15)
        b = radius * rng.uniform(0.85, 1.1)
        rot = rng.uniform(0, np.pi)
        u = dx * np.cos(rot) + dy * np.sin(rot)
        v = -dx * np.sin(rot) + dy * np.cos(rot)
        rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        profile = np.clip((1.0 - rr) * radius / 1.5 + 0.5, 0, 1)
    ys, xs = np.nonzero(profile > 0.25)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return profile.astype(np.float32), box


def _place(rng, mask, radius, taken):
    """A lesion centre well inside the breast (and off the pectoral muscle), away from other lesions."""
    h, w = mask.shape
    inner = cv2.erode((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(radius * 2 + 4))
    ys, xs = np.nonzero(inner)
    if len(xs) == 0:
        raise RuntimeError("synthetic breast too small for a lesion; increase height/width")
    for _ in range(100):
        i = int(rng.integers(len(xs)))
        cx, cy = float(xs[i]), float(ys[i])
        if all((cx - x) ** 2 + (cy - y) ** 2 > (3.2 * max(radius, r)) ** 2 for x, y, r in taken):
            return cx, cy
    return cx, cy


def render_image(rng, spec: SyntheticSpec, laterality: str, view: str, num_masses: int, num_lookalikes: int):
    """One synthetic mammogram: (uint16 image, list of malignant-mass boxes, list of look-alike boxes)."""
    h, w = spec.height, spec.width
    mask, pectoral = _breast_mask(rng, h, w, laterality, view)
    soft = cv2.GaussianBlur(mask, (0, 0), 2.0)
    density = rng.uniform(0.3, 0.7)
    texture = 0.55 * _smooth_noise(rng, (h, w), 6.0) + 0.35 * _smooth_noise(rng, (h, w), 2.0) \
        + 0.25 * _smooth_noise(rng, (h, w), 14.0)
    tissue = 0.30 + 0.12 * density + 0.07 * texture
    img = soft * tissue + 0.18 * pectoral
    pectoral_free = mask * (1 - cv2.dilate(pectoral, np.ones((5, 5), np.uint8), iterations=3))

    taken, mass_boxes, lookalike_boxes = [], [], []
    for malignant, count in ((True, num_masses), (False, num_lookalikes)):
        for _ in range(count):
            radius = rng.uniform(spec.min_radius, spec.max_radius)
            cx, cy = _place(rng, pectoral_free, radius, taken)
            taken.append((cx, cy, radius))
            profile, box = _lesion(rng, h, w, cx, cy, radius, malignant)
            img = img + rng.uniform(spec.min_contrast, spec.max_contrast) * profile * mask
            (mass_boxes if malignant else lookalike_boxes).append(box)
    img = img + 0.01 * rng.standard_normal((h, w)).astype(np.float32)  # quantum noise
    img = np.clip(img, 0, 1) * (0.6 + 0.4 * soft)
    return (img * MAX_VALUE).astype(np.uint16), mass_boxes, lookalike_boxes


def write_dicom(path, image: np.ndarray, patient_id: str, laterality: str, view: str):
    """Minimal uncompressed MONOCHROME2 mammogram DICOM (modality MG) with pydicom."""
    mammogram_dataset(path, image, patient_id, laterality, view).save_as(str(path), enforce_file_format=True)


def mammogram_dataset(path, image: np.ndarray, patient_id: str, laterality: str, view: str):
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


def _patient_views(rng):
    """2 to 4 of the four standard views; a breast imaged at all has its CC view."""
    n = int(rng.integers(2, 5))
    if n == 4:
        return list(VIEWS)
    if n == 2:
        side = "LR"[int(rng.integers(2))]
        return [(side, "CC"), (side, "MLO")] if rng.random() < 0.6 else [("L", "CC"), ("R", "CC")]
    drop = int(rng.integers(4))
    return [v for i, v in enumerate(VIEWS) if i != drop]


def generate(root: str, spec: Optional[SyntheticSpec] = None, progress: bool = True) -> Dict[str, str]:
    """Write a synthetic data set under ``root``; returns the paths of annotations.json and patients.csv.

    Deterministic: the same spec gives byte-identical images and annotations.
    """
    from tqdm import tqdm


    spec = spec or SyntheticSpec()
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    labels = [1] * spec.num_positive_patients + [0] * spec.num_negative_patients
    rng.shuffle(labels)
    records, patients = [], []
    bar = tqdm(total=len(labels), desc=f"synthetic mammograms -> {root}", unit="patient", disable=not progress)
    for p, label in enumerate(labels):
        patient_id = f"SYN{spec.seed:03d}_{p:05d}"
        views = _patient_views(rng)
        sick_side = views[int(rng.integers(len(views)))][0] if label else None
        for laterality, view in views:
            positive = laterality == sick_side
            num_masses = int(rng.integers(1, 3)) if positive else 0
            if positive:
                num_look = int(rng.random() < spec.lookalike_in_positive_prob)
            else:
                num_look = int(rng.integers(1, spec.max_lookalikes + 1))
            img, mass_boxes, look_boxes = render_image(rng, spec, laterality, view, num_masses, num_look)
            image_id = len(records) + 1
            stem = f"{patient_id}_{laterality}_{view}"
            file_name = os.path.join("images", stem + ".png")
            cv2.imwrite(os.path.join(root, file_name), img)
            if spec.write_dicom:
                write_dicom(os.path.join(root, "images", stem + ".dcm"), img, patient_id, laterality, view)
            records.append(dict(file_name=file_name, height=spec.height, width=spec.width, image_id=image_id,
                                patient_id=patient_id, laterality=laterality, view=view, lookalike_boxes=look_boxes,
                                annotations=[box_annotation(b) for b in mass_boxes]))
        patients.append(dict(patient_id=patient_id, label=label, num_images=len(views)))
        bar.update(1)
    bar.close()
    csv_path = os.path.join(root, "patients.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patient_id", "label", "num_images"])
        writer.writeheader()
        writer.writerows(patients)
    # written last and atomically: its presence means a complete set (see matches_spec)
    ann_path = export_coco(records, os.path.join(root, "annotations.json"),
                           info=dict(description="mammo_tl synthetic mammograms", spec=asdict(spec),
                                     generator_version=GENERATOR_VERSION))
    logger.info("synthetic set %s: %d patients (%d positive), %d images, %d masses", root, len(patients),
                sum(labels), len(records), sum(len(r["annotations"]) for r in records))
    return {"annotations": ann_path, "patients": csv_path}


def matches_spec(root: str, spec: SyntheticSpec) -> bool:
    """True when ``root`` holds a complete set generated from ``spec`` by this generator version."""
    try:
        with open(os.path.join(root, "annotations.json")) as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("spec") == asdict(spec) and info.get("generator_version") == GENERATOR_VERSION


def load_synthetic(root: str) -> List[dict]:
    """detectron2 dataset dicts of a set written by :func:`generate` (boxes in XYXY_ABS)."""
    from detectron2.structures import BoxMode

    ann_path = os.path.join(root, "annotations.json")
    if not os.path.exists(ann_path):
        raise FileNotFoundError(f"{ann_path} not found: generate the set first "
                                f"(python tools/make_synthetic.py --output {root})")
    with open(ann_path) as f:
        coco = json.load(f)
    by_image = {}
    for a in coco["annotations"]:
        x, y, bw, bh = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(
            {"bbox": [x, y, x + bw, y + bh], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0})
    records = []
    for im in coco["images"]:
        records.append(dict(
            file_name=os.path.join(root, im["file_name"]), height=im["height"], width=im["width"],
            image_id=im["id"], patient_id=im["patient_id"], laterality=im["laterality"], view=im["view"],
            annotations=by_image.get(im["id"], []),
        ))
    return validate_records(records, ann_path)
