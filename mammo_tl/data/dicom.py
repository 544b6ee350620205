"""DICOM mammograms -> float32 pixel grid and de-identified metadata."""
from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from . import jpeg2000
from .image_checks import ImageReadError, check_file_size, check_pixel_budget, check_regular_file, max_file_bytes

if TYPE_CHECKING:
    from pydicom import Dataset

    from .resolution import ResolutionRequest

# The only fields copied into `meta`: nothing that identifies a person beyond the data set's patient id.
_META_FIELDS = {
    "laterality": ("ImageLaterality", "Laterality"),
    "view": ("ViewPosition",),
}
# Pixels per block when rescaling or windowing: the float64 scratch stays in cache, no full-image copy.
_BLOCK_PIXELS = 1 << 16


class DicomReadError(ImageReadError):
    """A DICOM file that cannot be read as a mammogram (no pixel data, unsupported or truncated...)."""


def _first(ds, keywords, default=""):
    for k in keywords:
        v = getattr(ds, k, None)
        if v not in (None, ""):
            return str(v).strip()
    return default


def read_mammogram(path: str | os.PathLike, apply_voi: bool = True, max_pixels: int | None = None,
                   keep_integers: bool = False, resolution: ResolutionRequest | None = None) -> tuple[np.ndarray, dict]:
    """``(image, meta)`` of a mammogram DICOM: :func:`read_dicom` without the header."""
    return read_dicom(path, apply_voi, max_pixels, keep_integers, resolution=resolution)[:2]


def read_dicom(path: str | os.PathLike, apply_voi: bool = True, max_pixels: int | None = None,
               keep_integers: bool = False, data: bytes | None = None,
               resolution: ResolutionRequest | None = None) -> tuple[np.ndarray, dict, Dataset]:
    """Read a mammogram DICOM.

    Returns ``(image, meta, header)``: ``image`` is the stored pixel grid (rows x columns) as float32 with
    brighter = denser tissue (MONOCHROME1 is inverted), after Rescale Slope/Intercept and, when
    ``apply_voi`` and the file has one, its VOI LUT or window centre/width. ``meta`` holds patient_id,
    laterality, view, rows, columns, photometric_interpretation, bits_stored, transfer_syntax.
    A file with more than ``max_pixels`` pixels (rows x columns x frames from the header; None:
    :data:`~mammo_tl.data.image_io.DEFAULT_MAX_PIXELS`) is refused before decoding.
    ``keep_integers``: when no rescale or window applies, return the decoded 8/16-bit integer array
    instead (MONOCHROME1 inverted in place; every value equal to the float32 image's), saving a
    float32 copy for callers that take any dtype, such as :func:`~mammo_tl.data.preprocess.preprocess`.
    ``header`` is the pydicom dataset without its pixel data (every field of the source, identifying ones
    included: never write it to logs or JSON). Any failure raises :class:`DicomReadError` naming the file and the cause.
    ``data``: the file's bytes, already read (e.g. to hash exactly what is decoded); ``path`` then only names it.

    ``resolution``: a JPEG 2000 file (one frame, one grey unsigned component) is decoded at the level the
    request picks (:class:`~mammo_tl.data.resolution.ResolutionRequest`): ``image`` may then be smaller than
    rows x columns, and ``meta["decode_geometry"]`` (a :class:`~mammo_tl.data.preprocess.DecodeGeometry`)
    says how it maps to the stored grid, for :func:`~mammo_tl.data.preprocess.preprocess`. Every other
    file is decoded in full (``decode_geometry`` None), with ``meta["decode_fallback"]`` giving the reason.
    The rescale, window and inversion apply to the reduced pixels (the inversion's min + max is the reduced
    image's, an offset every min-max or percentile window removes).
    """
    path = str(path)
    # pydicom's warnings about malformed elements quote raw header bytes, names included: never shown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _read_mammogram(path, apply_voi, max_pixels, keep_integers, data, resolution)
        except DicomReadError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            # pydicom parses elements lazily, so a damaged element can fail on any access; and
            # pylibjpeg-rle's Rust decoder panics with a BaseException on bad data
            raise DicomReadError(path, f"corrupt DICOM ({type(e).__name__}: {e})") from None


def _read_mammogram(path, apply_voi, max_pixels, keep_integers, data=None, resolution=None):
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    if data is None:
        st = check_regular_file(path, DicomReadError)
        check_file_size(path, st.st_size, max_pixels, DicomReadError)
    _check_deflated_size(path, data, max_pixels)
    try:
        ds = pydicom.dcmread(path if data is None else io.BytesIO(data))
    except InvalidDicomError as e:
        raise DicomReadError(path, f"not a DICOM file ({e})") from None
    except Exception as e:  # truncated or mangled headers surface as many exception types
        raise DicomReadError(path, f"corrupt or truncated DICOM header ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        if _mentions_pixel_data(path, data):
            # pydicom stops silently at an element longer than the bytes left: the file was cut short
            raise DicomReadError(path, "truncated or corrupt: its pixel data element is cut short (the file ends "
                                       "before the length its header gives)")
        raise DicomReadError(path, "no pixel data (not an image object)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(path, f"not a grayscale mammogram (PhotometricInterpretation {photometric!r})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    shape = f"{rows} x {cols}" + (f" x {frames} frames" if frames != 1 else "")
    check_pixel_budget(path, rows * cols * max(frames, 1), shape, max_pixels, DicomReadError)
    if frames != 1:
        raise DicomReadError(path, f"{frames} frames (NumberOfFrames): one image per file expected; give each "
                                   f"frame as a file of its own", kind="multi_frame")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown"))
    if syntax in jpeg2000.J2K_SYNTAXES:
        _check_codestream_size(path, ds, rows, cols)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    grid_args = (ds, apply_voi and has_voi, photometric == "MONOCHROME1", keep_integers)
    image, geometry, fallback = None, None, None
    if resolution is not None:
        image, geometry, fallback = _reduced_decode(path, ds, syntax, frames, resolution, grid_args)
    if image is None:
        try:
            pixels = ds.pixel_array
        except NotImplementedError as e:
            raise DicomReadError(path, f"unsupported transfer syntax {syntax} ({e})") from None
        except Exception as e:
            raise DicomReadError(path, f"pixel data cannot be decoded, truncated or corrupt "
                                       f"({type(e).__name__}: {e})") from None
        if pixels.ndim != 2:
            raise DicomReadError(path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}")
        del ds.PixelData  # the encoded bytes are not needed while the float image is built
        image = _pixel_grid(pixels, *grid_args)
    if image is None:
        raise DicomReadError(path, "pixel data holds non-finite values after rescaling")
    meta = {
        "patient_id": str(getattr(ds, "PatientID", "")).strip(),
        "laterality": _first(ds, _META_FIELDS["laterality"]).upper()[:1],
        "view": _first(ds, _META_FIELDS["view"]).upper(),
        "rows": rows,
        "columns": cols,
        "photometric_interpretation": photometric,
        "bits_stored": int(getattr(ds, "BitsStored", 16)),
        "transfer_syntax": syntax,
        "voi_applied": bool(apply_voi and has_voi),
    }
    if resolution is not None:
        meta["decode_geometry"] = geometry
        meta["decode_fallback"] = fallback
    return image, meta, ds


def _check_deflated_size(path, data, max_pixels):
    """A Deflated Explicit VR Little Endian file inflated in steps, refused (before pydicom inflates it whole)
    when it expands beyond :func:`~.image_checks.max_file_bytes`: a few KB can inflate to gigabytes."""
    import io
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        with (open(path, "rb") if data is None else io.BytesIO(data)) as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return
            bound, inflated = max_file_bytes(max_pixels), 0
            inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            while chunk := fp.read(1 << 20):
                while chunk:
                    inflated += len(inflate.decompress(chunk, 1 << 24))
                    chunk = inflate.unconsumed_tail
                    if inflated > bound:
                        raise DicomReadError(path, f"deflated DICOM expanding to more than {bound:,} bytes (the bound "
                                                   f"for max_pixels pixels); not read", kind="too_large")
    except DicomReadError:
        raise
    except Exception:  # not a DICOM, or a damaged deflate stream: dcmread reports it
        return


def _mentions_pixel_data(path, data):
    """True when the file's bytes hold the Pixel Data tag (7FE0,0010) although pydicom found no such element."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _check_codestream_size(path, ds, rows, cols):
    """Refuse a JPEG 2000 file whose codestream's image size is not the header's Rows x Columns: decoding it
    would allocate the codestream's size (gigabytes for a forged header), which the pixel budget never saw."""
    from pydicom.encaps import generate_frames

    try:
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = jpeg2000.parse_codestream(codestream)
    except Exception as e:
        raise DicomReadError(path, f"JPEG 2000 pixel data without a readable codestream header, truncated or "
                                   f"corrupt ({type(e).__name__}: {e})") from None
    if (info.height, info.width) != (rows, cols):
        raise DicomReadError(path, f"its JPEG 2000 codestream is {info.height} x {info.width} pixels but its header "
                                   f"says Rows x Columns {rows} x {cols}: corrupt or forged; not decoded")


def _reduced_decode(path, ds, syntax, frames, resolution, grid_args):
    """(image, geometry, None) decoded at the level ``resolution`` picks, or (None, None, why not) when the
    file is decoded in full instead. A codestream that fails at a reduced level is decoded in full by pydicom,
    whose error (if it fails too) is the one reported."""
    if syntax not in jpeg2000.J2K_SYNTAXES:
        return None, None, f"transfer syntax {syntax} has no reduced resolutions"
    if frames != 1 or int(getattr(ds, "SamplesPerPixel", 1)) != 1 or int(getattr(ds, "PixelRepresentation", 0)):
        return None, None, "not one frame of unsigned grey samples"
    from pydicom.encaps import generate_frames

    try:
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
        info = jpeg2000.parse_codestream(codestream)
    except Exception as e:
        return None, None, f"JPEG 2000 header unreadable ({type(e).__name__}: {e})"
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits_allocated = int(getattr(ds, "BitsAllocated", 16))
    if (info.height, info.width) != (rows, cols) or info.precision != int(getattr(ds, "BitsStored", 16)) \
            or bits_allocated not in (8, 16):
        return None, None, (f"the codestream ({info.height} x {info.width}, {info.precision} bits) differs from "
                            f"the header ({rows} x {cols}, {getattr(ds, 'BitsStored', '?')} bits stored)")
    levels = jpeg2000.usable_levels(info)
    if levels == [0]:
        return None, None, (f"no reduced level this decoder reads ({info.levels} wavelet levels, "
                            f"{info.components} component(s), offset {info.x_offset}, {info.y_offset})")
    dtype = np.uint8 if bits_allocated == 8 else np.uint16

    def decode_at(r: int) -> np.ndarray:
        pixels = jpeg2000.decode(codestream, r, info).astype(dtype, copy=False)
        image = _pixel_grid(pixels, *grid_args)
        if image is None:
            raise DicomReadError(path, "pixel data holds non-finite values after rescaling")
        return image

    try:
        image, geometry = resolution.decode(decode_at, (rows, cols), levels)
    except ValueError as e:
        return None, None, str(e)
    del ds.PixelData
    return image, geometry, None


def _linear_window(ds):
    """(center, width, y_min, y_max) of the LINEAR / LINEAR_EXACT window pydicom's apply_windowing would
    apply (PS3.3 C.11.2.1.2), or None when pydicom must handle the file (VOI LUT sequence, SIGMOID,
    invalid width, modality LUT)."""
    if ds.get("VOILUTSequence") or ds.get("ModalityLUTSequence"):
        return None
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    func = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
    elem_c, elem_w = ds["WindowCenter"], ds["WindowWidth"]
    center = float(elem_c.value[0] if elem_c.VM > 1 else elem_c.value)
    width = float(elem_w.value[0] if elem_w.VM > 1 else elem_w.value)
    if func == "LINEAR" and width >= 1:
        center, width = center - 0.5, width - 1
    elif not (func == "LINEAR_EXACT" and width > 0):
        return None
    bits = int(ds.BitsStored)
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0, 2 ** bits - 1
    else:
        y_min, y_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    return center, width, y_min, y_max


def _pixel_grid(pixels, ds, voi, invert, keep_integers=False):
    """The pixel grid as float32 after modality rescale, the VOI window and MONOCHROME1 inversion; None when
    a value is not finite. Equal to pydicom's apply_modality_lut / apply_voi_lut computed in float64 and
    stored as float32, without their full-size float64 copies: common cases are computed block by block.
    With ``keep_integers``, an 8/16-bit array needing no rescale or window comes back as integers."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    integer = np.issubdtype(pixels.dtype, np.integer)
    rescale = None
    if ds.get("ModalityLUTSequence"):
        rescale = "lut"
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        if (slope, intercept) != (1.0, 0.0):
            rescale = (slope, intercept)
    window = _linear_window(ds) if voi else None
    if rescale == "lut" or (voi and window is None):
        # rare files: pydicom's own functions on the whole image, as they come
        image = apply_modality_lut(pixels, ds).astype(np.float32)
        if voi:
            image = apply_voi_lut(image, ds).astype(np.float32)
        lo, hi = image.min(), image.max()  # NaN propagates through min/max: one pass decides finiteness
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None
        if invert:
            np.subtract(hi + lo, image, out=image)
        return image

    if rescale is None and window is None and integer and pixels.dtype.itemsize <= 2 and keep_integers:
        if not pixels.flags.writeable:
            pixels = pixels.copy()
        if invert:
            # min + max - x lies in [min, max]: exact in the array's own dtype, wrapping included
            c = np.asarray(int(pixels.max()) + int(pixels.min()), dtype=np.int64).astype(pixels.dtype)
            np.subtract(c, pixels, out=pixels)
        return pixels
    image = np.empty(pixels.shape, np.float32)
    if rescale is None and window is None:
        if invert and integer and pixels.dtype.itemsize <= 2:
            # exact in float32, so the inversion is done while converting (one pass)
            c = np.float32(pixels.max()) + np.float32(pixels.min())
            np.subtract(c, pixels, out=image, dtype=np.float32)
            return image
        np.copyto(image, pixels, casting="unsafe")
        if not integer:
            lo, hi = image.min(), image.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                return None
        if invert:
            np.subtract(image.max() + image.min(), image, out=image)
        return image

    step = max(1, _BLOCK_PIXELS // max(1, pixels.shape[1]))
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for r in range(0, pixels.shape[0], step):
        block = image[r:r + step]
        if rescale is not None:
            x = pixels[r:r + step].astype(np.float64) * rescale[0]
            x += rescale[1]
            block[...] = x  # rounded to float32 as pydicom's result was before windowing
        else:
            np.copyto(block, pixels[r:r + step], casting="unsafe")
        if window is not None:
            center, width, y_min, y_max = window
            x = block.astype(np.float64)
            y = ((x - center) / width + 0.5) * (y_max - y_min) + y_min
            y[x <= center - width / 2] = y_min
            y[x > center + width / 2] = y_max
            block[...] = y
        b_lo, b_hi = block.min(), block.max()
        if not (np.isfinite(b_lo) and np.isfinite(b_hi)):
            return None
        lo, hi = min(lo, b_lo), max(hi, b_hi)
    if invert:
        np.subtract(hi + lo, image, out=image)
    return image
