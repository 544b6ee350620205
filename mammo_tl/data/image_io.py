"""Reading stored mammograms (16-bit PNG, DICOM) and mapping them to the model's input range."""
import os

import cv2
import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class ImageReadError(Exception):
    """A file could not be read as a mammogram; the message names the file and the cause."""

    def __init__(self, path, cause):
        self.path, self.cause = str(path), cause
        super().__init__(f"{path}: {cause}")


def is_dicom_path(path) -> bool:
    return str(path).lower().endswith(DICOM_SUFFIXES)


def read_image(path) -> np.ndarray:
    """The stored pixel grid (rows x columns) as float32, brighter = denser tissue.

    PNG/TIFF/JPEG are read unchanged (16-bit kept); DICOM through :func:`mammo_tl.data.dicom.read_mammogram`.
    """
    path = str(path)
    if is_dicom_path(path):
        from .dicom import read_mammogram

        return read_mammogram(path)[0]
    if not os.path.exists(path):
        raise ImageReadError(path, "file not found")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(path, "not a readable image (OpenCV could not decode it)")
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2) if img.shape[2] >= 3 else img[..., 0]
    return img.astype(np.float32)


def to_model_input(image: np.ndarray, percentiles=(0.0, 100.0)) -> np.ndarray:
    """Window a single-channel image to 0..255 (float32) and repeat it to 3 channels (H, W, 3).

    The window runs from the image's ``percentiles[0]`` to its ``percentiles[1]`` percentile; (0, 100)
    is min-max scaling. Three channels keep ImageNet-pretrained backbones usable unchanged.
    """
    lo_p, hi_p = percentiles
    if (lo_p, hi_p) == (0.0, 100.0):
        lo, hi = float(image.min()), float(image.max())
    else:
        lo, hi = (float(v) for v in np.percentile(image, [lo_p, hi_p]))
    scaled = (np.clip(image, lo, hi) - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.repeat(scaled.astype(np.float32)[:, :, None], 3, axis=2)
