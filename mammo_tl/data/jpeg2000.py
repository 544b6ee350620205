"""JPEG 2000 codestreams (DICOM transfer syntaxes 1.2.840.10008.1.2.4.90 and .91) decoded at a reduced
resolution: the wavelet keeps every coarser resolution level in the file, so dropping the ``r`` finest
levels decodes an image 2**r times smaller on each side for a fraction of the work.

Level ``r``'s pixel ``i`` is the low-pass band's sample at the full image's pixel ``2**r * i`` (its centre, not
the centre of a 2**r-pixel block); :mod:`mammo_tl.data.preprocess` maps it back with that geometry. The
decoder is Pillow's OpenJPEG (pylibjpeg-openjpeg, which pydicom uses for full decoding, has no reduce
option). A leaf module: numpy and Pillow only."""
from __future__ import annotations

import io
import math
import struct
from typing import NamedTuple

import numpy as np

# DICOM transfer syntaxes whose pixel data is a JPEG 2000 codestream (lossless only; lossy or lossless).
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_SOC, _SIZ, _COD, _COC, _SOT = 0xFF4F, 0xFF51, 0xFF52, 0xFF53, 0xFF90


class CodestreamInfo(NamedTuple):
    """What the main header of a JPEG 2000 codestream says about its image."""

    width: int
    height: int
    x_offset: int  # image offset on the reference grid (XOsiz, YOsiz)
    y_offset: int
    components: int
    precision: int  # bits per sample of the first component
    signed: bool
    levels: int  # wavelet decomposition levels (the fewest of COD and every COC in the main header)


def parse_codestream(data: bytes) -> CodestreamInfo:
    """The image size, offset, sample format and decomposition levels from the main header's SIZ, COD and COC
    marker segments. Raises ValueError for anything but a well-formed JPEG 2000 codestream header."""
    if len(data) < 4 or struct.unpack_from(">HH", data, 0) != (_SOC, _SIZ):
        raise ValueError("not a JPEG 2000 codestream (no SOC and SIZ markers at its start)")
    try:
        lsiz, _, xsiz, ysiz, xo, yo, _, _, _, _, csiz = struct.unpack_from(">HHIIIIIIIIH", data, 4)
        if lsiz < 38 + 3 * csiz or csiz < 1:
            raise ValueError(f"SIZ marker segment of length {lsiz} for {csiz} components")
        ssiz = data[4 + 38]
        pos, levels = 4 + lsiz, None
        while pos + 4 <= len(data):
            marker, length = struct.unpack_from(">HH", data, pos)
            if marker == _SOT or length < 2:
                break
            if marker == _COD:
                nl = data[pos + 4 + 5]  # after Scod (1), progression order (1), layers (2), MCT (1)
                levels = nl if levels is None else min(levels, nl)
            elif marker == _COC:
                nl = data[pos + 4 + (1 if csiz < 257 else 2) + 1]  # after Ccoc and Scoc
                levels = nl if levels is None else min(levels, nl)
            pos += 2 + length
    except (struct.error, IndexError):
        raise ValueError("truncated JPEG 2000 main header") from None
    if levels is None:
        raise ValueError("no COD marker segment in the JPEG 2000 main header")
    if xsiz <= xo or ysiz <= yo:
        raise ValueError(f"empty JPEG 2000 image (Xsiz {xsiz}, XOsiz {xo}, Ysiz {ysiz}, YOsiz {yo})")
    return CodestreamInfo(xsiz - xo, ysiz - yo, xo, yo, csiz, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels)


def reduced_size(info: CodestreamInfo, reduce: int) -> tuple[int, int]:
    """(height, width) of the image decoded without its ``reduce`` finest levels (the JPEG 2000 rule: the
    reference grid's bounds divided by 2**reduce, rounded up)."""
    s = 1 << reduce
    return (math.ceil((info.height + info.y_offset) / s) - math.ceil(info.y_offset / s),
            math.ceil((info.width + info.x_offset) / s) - math.ceil(info.x_offset / s))


def usable_levels(info: CodestreamInfo) -> list[int]:
    """The reductions (0 first) this module decodes for the codestream: one grey unsigned component of at most
    16 bits at offset 0; up to its decomposition levels; and only those where Pillow's size for the reduced image
    (each side divided by 2**r, rounded half up) equals the decoder's (rounded up), since Pillow refuses the
    others. [0] alone means: decode at full size."""
    if info.components != 1 or info.signed or info.precision > 16 or info.x_offset or info.y_offset:
        return [0]
    levels = [0]
    for r in range(1, info.levels + 1):
        s = 1 << r
        pillow = (int((info.height + (s >> 1)) / s), int((info.width + (s >> 1)) / s))
        if pillow == reduced_size(info, r):
            levels.append(r)
    return levels


def decode(data: bytes, reduce: int, info: CodestreamInfo | None = None) -> np.ndarray:
    """The codestream ``data`` decoded without its ``reduce`` finest resolution levels: a (rows, columns) uint8
    (precision <= 8) or uint16 array holding the stored sample values. ``reduce`` must be one of
    :func:`usable_levels`; anything the decoder refuses raises ValueError."""
    from PIL import Image, features

    info = info or parse_codestream(data)
    if reduce not in usable_levels(info):
        raise ValueError(f"reduce {reduce} is not a usable level of this codestream ({usable_levels(info)})")
    if not features.check("jpg_2000"):
        raise ValueError("this Pillow build has no JPEG 2000 decoder")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG2000"]) as im:
            im.reduce = reduce
            im.load()
            pixels = np.array(im)
    except Exception as e:  # OpenJPEG's failures surface as OSError, SyntaxError, ValueError...
        raise ValueError(f"JPEG 2000 decoding at reduce {reduce} failed ({type(e).__name__}: {e})") from None
    expected = reduced_size(info, reduce)
    if pixels.shape != expected:
        raise ValueError(f"JPEG 2000 decoded at reduce {reduce} to {pixels.shape}, expected {expected}")
    if pixels.dtype == np.uint16 and info.precision < 16:
        # Pillow scales samples of fewer than 16 bits up to the full 16-bit range (a left shift)
        pixels >>= 16 - info.precision
    elif pixels.dtype != np.uint8 and pixels.dtype != np.uint16:
        raise ValueError(f"JPEG 2000 decoded to {pixels.dtype} samples, expected 8 or 16-bit unsigned")
    return pixels
