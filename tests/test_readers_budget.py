"""The readers' pixel budget (refused from the header, before decoding), non-regular files, and the fast
DICOM pixel path against pydicom's own functions."""
import os
import signal
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless

from mammo_tl.data.dicom import DicomReadError, read_mammogram
from mammo_tl.data.image_io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from tests.dicom_fixtures import make_dicom


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    except ImageReadError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg_header_only(path, width, height):
    """A baseline JPEG whose frame header claims width x height gray, with a few bytes of scan data."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0])
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0, 0, 63, 0])
    path.write_bytes(b"\xff\xd8" + sof + sos + b"\0" * 16 + b"\xff\xd9")
    return path


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height 16-bit gray, with a few bytes of pixel data."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    return path


def test_dicom_over_the_budget_is_refused_before_decoding(tmp_path):
    path = make_dicom(tmp_path / "big.dcm", np.full((2000, 1500), 700, np.uint16), syntax=RLELossless,
                      bits_stored=12)
    assert os.path.getsize(path) < 100_000  # 3 million pixels of RLE in a few kB: a small decompression bomb
    with pytest.raises(DicomReadError, match=r"big.dcm: 2000 x 1500 = 3,000,000 pixels, over the limit of "
                                             r"1,000,000 pixels \(max_pixels\); not decoded") as e:
        read_mammogram(path, max_pixels=1_000_000)
    assert e.value.kind == "too_many_pixels"
    assert _peak_bytes(lambda: read_mammogram(path, max_pixels=1_000_000)) < 1_000_000  # decoded: 6 MB+
    image, _ = read_mammogram(path, max_pixels=3_000_000)  # the limit itself is allowed
    assert image.shape == (2000, 1500)
    with pytest.raises(ImageReadError, match="over the limit of 2,999,999"):
        read_image(path, max_pixels=2_999_999)


def test_default_budget_reads_rows_columns_and_frames_from_the_header(tmp_path):
    path = make_dicom(tmp_path / "lie.dcm", np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 12000, 9000  # 108 million pixels claimed; the data would never be decoded
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"12000 x 9000 = 108,000,000 pixels, over the limit of "
                                             rf"{DEFAULT_MAX_PIXELS:,} pixels"):
        read_mammogram(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 5000, 4000, 6
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"5000 x 4000 x 6 frames = 120,000,000 pixels"):
        read_mammogram(path)


def test_png_tiff_jpeg_over_the_budget_are_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((3000, 2000), np.uint16))
    with pytest.raises(ImageReadError, match=r"big.png: 2000 x 3000 = 6,000,000 pixels, over the limit of "
                                             r"1,000,000 pixels") as e:
        read_image(big, max_pixels=1_000_000)
    assert e.value.kind == "too_many_pixels"
    assert _peak_bytes(lambda: read_image(big, max_pixels=1_000_000)) < 1_000_000  # decoded: 12 MB+
    for ext in ("tif", "jpg"):
        p = tmp_path / f"small.{ext}"
        cv2.imwrite(str(p), np.full((200, 300), 90, np.uint8))
        with pytest.raises(ImageReadError, match=rf"small.{ext}: 300 x 200 = 60,000 pixels, over the limit of 59,999"):
            read_image(p, max_pixels=59_999)
        assert read_image(p, max_pixels=60_000).shape == (200, 300)
    # headers alone: over the default budget, and over Pillow's own bomb limit (which must not leak through)
    for make, ext in ((_png_header_only, "png"), (_jpeg_header_only, "jpg")):
        with pytest.raises(ImageReadError, match=rf"claims.{ext}: 12000 x 9000 = 108,000,000 pixels, over the "
                                                 rf"limit of {DEFAULT_MAX_PIXELS:,}"):
            read_image(make(tmp_path / f"claims.{ext}", 12000, 9000))
    with pytest.raises(ImageReadError, match=r"huge.png: 40000 x 40000 = 1,600,000,000 pixels, over the limit"):
        read_image(_png_header_only(tmp_path / "huge.png", 40000, 40000))
    with pytest.raises(ImageReadError, match=r"huge.jpg: more than 178,956,970 pixels .*over the limit") as e:
        read_image(_jpeg_header_only(tmp_path / "huge.jpg", 40000, 40000))
    assert e.value.kind == "too_many_pixels"


def test_fifo_and_folders_are_refused_without_blocking(tmp_path):
    def hang(*_):
        raise AssertionError("the reader blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        for name in ("pipe.png", "pipe.dcm"):
            os.mkfifo(tmp_path / name)
            with pytest.raises(ImageReadError, match=rf"{name}: not a regular file \(a FIFO\)") as e:
                read_image(tmp_path / name)
            assert e.value.kind == "not_a_regular_file"
        with pytest.raises(DicomReadError, match=r"pipe.dcm: not a regular file \(a FIFO\)"):
            read_mammogram(tmp_path / "pipe.dcm")
        (tmp_path / "folder.dcm").mkdir()
        with pytest.raises(DicomReadError, match=r"folder.dcm: not a regular file \(a directory\)"):
            read_mammogram(tmp_path / "folder.dcm")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reference(path, apply_voi=True):
    """read_mammogram as pydicom's own functions compute it, in float64 with full-size copies."""
    ds = pydicom.dcmread(path)
    image = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if apply_voi:
        image = apply_voi_lut(image, ds).astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = image.max() + image.min() - image
    return image


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("rescale", [None, (1.0, 0.0), (1.5, -10.0), (0.37, 1000.25)])
@pytest.mark.parametrize("window", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_pixels_equal_pydicoms_modality_and_voi_functions(tmp_path, photometric, rescale, window):
    raw = (np.random.default_rng(3).random((300, 70)) * 4095).astype(np.uint16)
    raw[0, :4] = [0, 4095, 1499, 1500]  # both ends and the window's edges
    slope, intercept = rescale or (None, None)
    path = make_dicom(tmp_path / "x.dcm", raw, photometric=photometric, bits_stored=12, slope=slope,
                      intercept=intercept, window=(2000, 1000) if window else None)
    if window and window != "LINEAR":
        ds = pydicom.dcmread(path)
        ds.VOILUTFunction = window
        ds.save_as(path)
    image, meta = read_mammogram(path)
    assert image.dtype == np.float32 and meta["voi_applied"] == bool(window)
    np.testing.assert_array_equal(image, _reference(path))
    np.testing.assert_array_equal(read_mammogram(path, apply_voi=False)[0], _reference(path, apply_voi=False))
    kept, _ = read_mammogram(path, keep_integers=True)
    np.testing.assert_array_equal(kept, image)
    assert (kept.dtype == np.uint16) == (rescale in (None, (1.0, 0.0)) and not window)


def test_signed_monochrome1_kept_as_integers_is_exact(tmp_path):
    raw = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    path = make_dicom(tmp_path / "s.dcm", raw.view(np.uint16), photometric="MONOCHROME1", bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1
    ds.save_as(path)
    kept, _ = read_mammogram(path, keep_integers=True)
    assert kept.dtype == np.int16
    # min + max - x with min -2048, max 2047
    np.testing.assert_array_equal(kept, np.array([[2047, 0], [-1, -2048]]))
    np.testing.assert_array_equal(read_mammogram(path)[0], kept.astype(np.float32))


def test_peak_memory_per_pixel(tmp_path):
    """A windowed 12-bit RLE image: pydicom's float64 windowing with masks took about 21 bytes per pixel."""
    rng = np.random.default_rng(0)
    raw = np.full((1500, 1200), 40, np.uint16)
    raw[100:1400, :900] = 1800 + rng.integers(-6, 7, (1300, 900))
    path = make_dicom(tmp_path / "w.dcm", raw, syntax=RLELossless, bits_stored=12, window=(2000, 1000))
    read_mammogram(path)
    per_pixel = _peak_bytes(lambda: read_mammogram(path)) / raw.size
    assert per_pixel < 8, per_pixel  # decoded uint16 + float32 result + decoder buffers
    plain = make_dicom(tmp_path / "p.dcm", raw, syntax=RLELossless, bits_stored=12)
    assert _peak_bytes(lambda: read_mammogram(plain, keep_integers=True)) / raw.size < 6
