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


class ImageReadError(Exception):
    """A file could not be read as a mammogram; the message names the file and the cause.

    ``kind`` is a short category for counting: not_found, not_a_regular_file, too_many_pixels, unreadable.
    """

    def __init__(self, path, cause, kind="unreadable"):
        self.path, self.cause, self.kind = str(path), cause, kind
        super().__init__(f"{path}: {cause}")


def is_dicom_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(DICOM_SUFFIXES)


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


def read_whole_file(path: str) -> tuple[bytes, FileIdentity]:
    """(the file's bytes, their :class:`FileIdentity`), from one read; :class:`ImageReadError` naming the file
    when it cannot be read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise ImageReadError(path, f"cannot be read ({type(e).__name__}: {e.strerror})") from None
    return data, FileIdentity(len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest())
