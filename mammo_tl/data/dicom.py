"""DICOM mammograms -> float32 pixel grid and de-identified metadata."""
import os
import warnings

import numpy as np

from .image_io import ImageReadError

# The only fields copied into `meta`: nothing that identifies a person beyond the data set's patient id.
_META_FIELDS = {
    "laterality": ("ImageLaterality", "Laterality"),
    "view": ("ViewPosition",),
}


class DicomReadError(ImageReadError):
    """A DICOM file that cannot be read as a mammogram (no pixel data, unsupported or truncated...)."""


def _first(ds, keywords, default=""):
    for k in keywords:
        v = getattr(ds, k, None)
        if v not in (None, ""):
            return str(v).strip()
    return default


def read_mammogram(path, apply_voi: bool = True):
    """Read a mammogram DICOM.

    Returns ``(image, meta)``: ``image`` is the stored pixel grid (rows x columns) as float32 with
    brighter = denser tissue (MONOCHROME1 is inverted), after Rescale Slope/Intercept and, when
    ``apply_voi`` and the file has one, its VOI LUT or window centre/width. ``meta`` holds patient_id,
    laterality, view, rows, columns, photometric_interpretation, bits_stored, transfer_syntax.
    Any failure raises :class:`DicomReadError` naming the file and the cause.
    """
    path = str(path)
    # pydicom's warnings about malformed elements quote raw header bytes, names included: never shown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _read_mammogram(path, apply_voi)
        except DicomReadError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            # pydicom parses elements lazily, so a damaged element can fail on any access; and
            # pylibjpeg-rle's Rust decoder panics with a BaseException on bad data
            raise DicomReadError(path, f"corrupt DICOM ({type(e).__name__}: {e})") from None


def _read_mammogram(path, apply_voi):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not os.path.exists(path):
        raise DicomReadError(path, "file not found")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise DicomReadError(path, f"not a DICOM file ({e})") from None
    except Exception as e:  # truncated or mangled headers surface as many exception types
        raise DicomReadError(path, f"corrupt or truncated DICOM header ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise DicomReadError(path, "no pixel data (not an image object)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError(path, f"not a grayscale mammogram (PhotometricInterpretation {photometric!r})")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown"))
    try:
        pixels = ds.pixel_array
    except NotImplementedError as e:
        raise DicomReadError(path, f"unsupported transfer syntax {syntax} ({e})") from None
    except Exception as e:
        raise DicomReadError(path, f"pixel data cannot be decoded, truncated or corrupt "
                                   f"({type(e).__name__}: {e})") from None
    if pixels.ndim != 2:
        raise DicomReadError(path, f"expected one 2-D frame, got pixel array of shape {pixels.shape}")

    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    image = apply_modality_lut(pixels, ds).astype(np.float32)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if apply_voi and has_voi:
        image = apply_voi_lut(image, ds).astype(np.float32)
    if photometric == "MONOCHROME1":
        image = image.max() + image.min() - image
    if not np.isfinite(image).all():
        raise DicomReadError(path, "pixel data holds non-finite values after rescaling")
    meta = {
        "patient_id": str(getattr(ds, "PatientID", "")).strip(),
        "laterality": _first(ds, _META_FIELDS["laterality"]).upper()[:1],
        "view": _first(ds, _META_FIELDS["view"]).upper(),
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "photometric_interpretation": photometric,
        "bits_stored": int(getattr(ds, "BitsStored", 16)),
        "transfer_syntax": syntax,
        "voi_applied": bool(apply_voi and has_voi),
    }
    return image, meta
