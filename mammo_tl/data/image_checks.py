"""What every image reader checks before decoding, and its error: a leaf module, imported by the readers
(image_io.py, dicom.py, dicom_header.py) so they need not import each other."""
from __future__ import annotations

import hashlib
import os
import stat
from typing import NamedTuple

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# The readers' default pixel budget (rows x columns x frames), checked from the header before decoding: a
# few MB of RLE or PNG can expand to gigabytes. Far above any mammogram (4096 x 3328 = 13.6 million).
DEFAULT_MAX_PIXELS = 100_000_000
# Bytes a file (or a deflated DICOM once inflated) may hold per pixel of the budget, plus a fixed allowance
# for headers: an uncompressed float64 image of max_pixels pixels fits; a 16 GB file is refused before it is
# read into memory.
BYTES_PER_PIXEL_BOUND = 8
HEADER_BYTES_BOUND = 16 << 20
DICOM_PREAMBLE_END = 132  # 128-byte preamble, then b"DICM"


class ImageReadError(Exception):
    """A file could not be read as a mammogram; the message names the file and the cause.

    ``kind`` is a short category for counting: not_found, not_a_regular_file, too_many_pixels, too_large,
    multi_frame, non_finite, unreadable.
    """

    def __init__(self, path, cause, kind="unreadable"):
        self.path, self.cause, self.kind = str(path), cause, kind
        super().__init__(f"{path}: {cause}")


IMAGE_FILE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def has_dicom_preamble(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file whose bytes 128..131 are b"DICM" (a DICOM file, PS3.10), whatever
    its name; False when it is not or cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            head = f.read(DICOM_PREAMBLE_END)
    except OSError:
        return False
    return len(head) == DICOM_PREAMBLE_END and head[128:] == b"DICM"


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A DICOM file by its name (.dcm, .dicom, .dic), or, for a name without an image suffix (PACS exports
    often have none), by its DICM preamble."""
    name = str(path).lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    return not name.endswith(IMAGE_FILE_SUFFIXES) and has_dicom_preamble(path)


def max_file_bytes(max_pixels: int | None) -> int:
    """The most bytes an input of at most ``max_pixels`` pixels (None: :data:`DEFAULT_MAX_PIXELS`) may hold:
    :data:`BYTES_PER_PIXEL_BOUND` per pixel plus :data:`HEADER_BYTES_BOUND`."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return limit * BYTES_PER_PIXEL_BOUND + HEADER_BYTES_BOUND


def check_file_size(path: str | os.PathLike, size: int, max_pixels: int | None,
                    error: type[ImageReadError] = ImageReadError) -> None:
    """Raise ``error`` when a file of ``size`` bytes is over :func:`max_file_bytes`: checked from os.stat,
    before the file is read."""
    bound = max_file_bytes(max_pixels)
    if size > bound:
        raise error(path, f"{size:,} bytes, over the {bound:,} bytes any image of at most max_pixels pixels needs; "
                          "not read", kind="too_large")


def check_regular_file(path: str | os.PathLike, error: type[ImageReadError] = ImageReadError) -> os.stat_result:
    """os.stat of ``path``; raises ``error`` for a missing file or anything but a regular file (a FIFO would
    block the reader forever, a device never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(path, "file not found", kind="not_found") from None
    except OSError as e:
        raise error(path, f"cannot be opened ({type(e).__name__}: {e.strerror})", kind="not_found") from None
    if not stat.S_ISREG(st.st_mode):
        m = st.st_mode
        what = ("a directory" if stat.S_ISDIR(m) else "a FIFO" if stat.S_ISFIFO(m) else "a socket" if stat.S_ISSOCK(m)
                else "a device" if stat.S_ISCHR(m) or stat.S_ISBLK(m) else "not a file")
        raise error(path, f"not a regular file ({what})", kind="not_a_regular_file")
    return st


def check_pixel_budget(path: str | os.PathLike, pixels: int, shape_text: str, max_pixels: int | None,
                       error: type[ImageReadError] = ImageReadError) -> None:
    """Raise ``error`` when ``pixels`` exceeds ``max_pixels`` (None: :data:`DEFAULT_MAX_PIXELS`)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if pixels > limit:
        raise error(path, f"{shape_text} = {pixels:,} pixels, over the limit of {limit:,} pixels (max_pixels); "
                          "not decoded", kind="too_many_pixels")


class FileIdentity(NamedTuple):
    """What a prediction is keyed by: the bytes that were decoded (``sha256``) and the file's size and
    modification time (ns) when they were read."""

    size: int
    mtime_ns: int
    sha256: str


def read_whole_file(path: str, max_pixels: int | None = None) -> tuple[bytes, FileIdentity]:
    """(the file's bytes, their :class:`FileIdentity`), from one read; :class:`ImageReadError` naming the file
    when it cannot be read, or when it holds more than :func:`max_file_bytes` (checked before reading, and
    while reading: the file may grow)."""
    bound = max_file_bytes(max_pixels)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            check_file_size(path, st.st_size, max_pixels)
            data = f.read(bound + 1)
            if len(data) > bound:
                check_file_size(path, len(data), max_pixels)
    except OSError as e:
        raise ImageReadError(path, f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    return data, FileIdentity(len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest())
