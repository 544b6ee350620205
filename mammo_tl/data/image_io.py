"""Reading stored mammograms (16-bit PNG, DICOM via dicom.py) and mapping them to the model's input range.

:func:`read_stored_image` is the one reader: pixels, metadata and (DICOM) header of any input file, used by
the training mapper and tools/prepare_dataset.py (through :func:`read_image`, its pixels) and by
tools/predict.py (:func:`mammo_tl.data.inputs.describe`). :func:`image_size` reads only the header, for the
data set converters. The checks every reader makes before decoding, and ImageReadError, live in
image_checks.py (re-exported here)."""
from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from .dicom import read_dicom
from .dicom_header import read_header
from .image_checks import FileIdentity, check_file_size, read_whole_file
from .image_checks import (DEFAULT_MAX_PIXELS, DICOM_SUFFIXES, ImageReadError, check_pixel_budget,  # noqa: F401
                           check_regular_file, is_dicom_path)

if TYPE_CHECKING:
    from .resolution import ResolutionRequest

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header_size(path, max_pixels, data=None):
    """(width, height) from a PNG/TIFF/JPEG/... header without decoding; None when Pillow refused to even
    open it because it exceeds Pillow's own bomb limit, which lies above ``max_pixels``. ``data``: the
    file's bytes, already read (``path`` then only names it). A file of several pages or frames (a multi-page
    TIFF) is refused: one image per file, as for DICOM."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        try:
            with open(path, "rb") as f:
                head = f.read(24)
        except OSError as e:  # e.g. PermissionError: counted like any unreadable file
            raise ImageReadError(path, f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    else:
        head = data[:24]
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":  # the cache's own format, read on every step
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our budget decides
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                frames = getattr(im, "n_frames", 1)
                size = im.size
        if frames != 1:
            raise ImageReadError(path, f"{frames} pages or frames ({im.format}): one image per file expected (only "
                                       f"its first would be read); give each as a file of its own",
                                 kind="multi_frame")
        return size
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        threshold = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if limit < threshold:
            raise ImageReadError(path, f"more than {threshold:,} pixels ({e}), over the limit of {limit:,} "
                                       "pixels (max_pixels); not decoded", kind="too_many_pixels") from None
        return None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (no known image format header)") from None
    except Exception as e:  # a damaged header
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from None


class StoredImage(NamedTuple):
    """What :func:`read_stored_image` returns."""

    pixels: np.ndarray
    # DICOM: :func:`~mammo_tl.data.dicom.read_dicom`'s meta; other formats: rows, columns
    meta: dict
    # DICOM: the pydicom dataset without its pixel data (identifying fields included); other formats: None
    header: object | None


def read_stored_image(path: str | os.PathLike, max_pixels: int | None = None, keep_integers: bool = False,
                      resolution: ResolutionRequest | None = None) -> StoredImage:
    """The stored pixel grid (rows x columns) as float32, brighter = denser tissue, with its metadata.

    PNG/TIFF/JPEG are read unchanged (16-bit kept); DICOM through :func:`mammo_tl.data.dicom.read_dicom`.
    A file with more than ``max_pixels`` pixels (None: :data:`DEFAULT_MAX_PIXELS`), judged from its header,
    raises :class:`ImageReadError` before decoding, as does anything but a regular file.
    ``keep_integers``: a grayscale 8/16-bit image comes back in its integer dtype when its values equal
    the float32 image's (see :func:`~mammo_tl.data.dicom.read_mammogram`).
    ``resolution``: decode a JPEG 2000 DICOM at the level it picks (see :func:`~mammo_tl.data.dicom.read_dicom`:
    meta's ``decode_geometry`` and ``decode_fallback``); other files are decoded in full.
    """
    path = str(path)
    if is_dicom_path(path):
        return StoredImage(*read_dicom(path, max_pixels=max_pixels, keep_integers=keep_integers,
                                       resolution=resolution))
    check_file_size(path, check_regular_file(path).st_size, max_pixels)
    size = _header_size(path, max_pixels)
    if size is not None:
        w, h = size
        check_pixel_budget(path, w * h, f"{w} x {h}", max_pixels)
    data, _ = read_whole_file(path, max_pixels)  # bytes, not cv2.imread: OpenCV fails on names not in UTF-8
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise ImageReadError(path, "not a readable image (OpenCV could not decode it)")
    return StoredImage(*_pixels_and_meta(img, keep_integers, resolution))


def read_stored_image_identified(path: str | os.PathLike, max_pixels: int | None = None, keep_integers: bool = False,
                                 resolution: ResolutionRequest | None = None) -> tuple[StoredImage, FileIdentity]:
    """(:class:`StoredImage`, :class:`FileIdentity`) of an input: the identity describes exactly the bytes
    the pixels (and a DICOM header) were decoded from.

    Every file is read into memory once, hashed, and decoded (pixels and DICOM header) from that copy, so a file
    written while it is read can never mix two contents. The same checks as :func:`read_stored_image` come first
    (regular file; the pixel budget from the header, before decoding)."""
    path = str(path)
    if is_dicom_path(path):
        check_regular_file(path)
        data, identity = read_whole_file(path, max_pixels)
        stored = StoredImage(*read_dicom(path, max_pixels=max_pixels, keep_integers=keep_integers, data=data,
                                         resolution=resolution))
        return stored, identity
    check_file_size(path, check_regular_file(path).st_size, max_pixels)
    size = _header_size(path, max_pixels)
    if size is not None:
        w, h = size
        check_pixel_budget(path, w * h, f"{w} x {h}", max_pixels)
    data, identity = read_whole_file(path, max_pixels)
    # the budget again, on the bytes decoded: the file may have been replaced since its header was read
    size = _header_size(path, max_pixels, data)
    if size is not None:
        w, h = size
        check_pixel_budget(path, w * h, f"{w} x {h}", max_pixels)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise ImageReadError(path, "not a readable image (OpenCV could not decode it)")
    return StoredImage(*_pixels_and_meta(img, keep_integers, resolution)), identity


def _pixels_and_meta(img, keep_integers, resolution=None):
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2) if img.shape[2] >= 3 else img[..., 0]
    if not (keep_integers and img.dtype in (np.uint8, np.uint16)):
        img = img.astype(np.float32)
    meta = {"rows": int(img.shape[0]), "columns": int(img.shape[1])}
    if resolution is not None:
        meta.update(decode_geometry=None, decode_fallback="not a DICOM file (decoded in full)")
    return img, meta, None


def read_image(path: str | os.PathLike, max_pixels: int | None = None, keep_integers: bool = False) -> np.ndarray:
    """The pixels of :func:`read_stored_image`."""
    return read_stored_image(path, max_pixels=max_pixels, keep_integers=keep_integers).pixels


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a stored image from its header, without decoding its pixels (DICOM Rows and
    Columns; the PNG/TIFF/JPEG header). Raises :class:`ImageReadError` naming the file."""
    path = str(path)
    if is_dicom_path(path):
        ds = read_header(path)
        try:
            return int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError):
            raise ImageReadError(path, "no Rows/Columns in the DICOM header: not an image") from None
    check_regular_file(path)
    size = _header_size(path, None)
    if size is None:  # beyond Pillow's own limit: decode to know
        return tuple(read_image(path).shape[:2])
    return size[1], size[0]


def to_model_input(image: np.ndarray, percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
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
