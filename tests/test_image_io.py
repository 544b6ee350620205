"""The one reader (mammo_tl.data.image_io.read_stored_image) and the header-only size every converter uses."""
import os

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from mammo_tl.data import image_checks, image_io
from mammo_tl.data.image_io import ImageReadError, image_size, read_image, read_stored_image
from mammo_tl.data.inputs import SkippedImage, describe, list_inputs
from mammo_tl.data.synthetic import mammogram_dataset
from tests.dicom_fixtures import make_dicom


def _pixels(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w)) * 3000 + 100).astype(np.uint16)


def test_dicom_pixels_meta_and_header_from_one_read(tmp_path, monkeypatch):
    px = _pixels(40, 24)
    path = make_dicom(tmp_path / "a.dcm", px, photometric="MONOCHROME1", syntax=RLELossless, bits_stored=12,
                      patient_id="P_00042", laterality="R", view="MLO")
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    stored = read_stored_image(path)
    assert reads == [str(path)]  # pixels, meta and header: one pass over the file
    # MONOCHROME1: brighter = denser after inversion within the stored range (min + max - x), computed here
    expected = (int(px.min()) + int(px.max()) - px.astype(np.int64)).astype(np.float32)
    np.testing.assert_array_equal(stored.pixels, expected)
    assert stored.pixels.dtype == np.float32
    assert (stored.meta["rows"], stored.meta["columns"]) == (40, 24)
    assert (stored.meta["laterality"], stored.meta["view"]) == ("R", "MLO")
    assert stored.header.PatientID == "P_00042" and stored.header.PatientName == "Doe^Jane"
    assert "PixelData" not in stored.header
    np.testing.assert_array_equal(read_image(path), stored.pixels)


def test_describe_reads_a_dicom_once(tmp_path, monkeypatch):
    path = make_dicom(tmp_path / "b.dcm", _pixels(64, 48), patient_id="P_00007", laterality="L", view="CC")
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    image, meta = describe(path)
    assert len(reads) == 1
    assert (meta["patient_id"], meta["laterality"], meta["view"]) == ("P_00007", "L", "CC")
    assert meta["source"]["patient_id"].startswith("dicom")
    assert image.shape == (64, 48)


def test_png_pixels_keep_their_integers_and_meta_has_the_size(tmp_path):
    px = _pixels(30, 20, seed=1)
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), px)
    stored = read_stored_image(path, keep_integers=True)
    assert stored.pixels.dtype == np.uint16 and stored.header is None
    np.testing.assert_array_equal(stored.pixels, px)
    assert stored.meta == {"rows": 30, "columns": 20}
    assert read_stored_image(path).pixels.dtype == np.float32


def test_image_size_reads_headers_only(tmp_path, monkeypatch):
    png = tmp_path / "d.png"
    cv2.imwrite(str(png), _pixels(33, 17))
    dcm = make_dicom(tmp_path / "e.dcm", _pixels(29, 21), syntax=RLELossless)

    def no_decoding(*a, **k):
        raise AssertionError("image_size decoded pixels")

    monkeypatch.setattr(image_io.cv2, "imread", no_decoding)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoding))
    assert image_size(png) == (33, 17)
    assert image_size(dcm) == (29, 21)


def test_image_size_names_the_file_it_cannot_read(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all")
    with pytest.raises(ImageReadError, match="broken.dcm"):
        image_size(bad)
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    with pytest.raises(ImageReadError, match="notes.png"):
        image_size(txt)


# --- hostile and odd input files: each refused with a counted reason, never a traceback or a wrong image ---

def _png_file(path, h=200, w=160):
    assert cv2.imwrite(str(path), _pixels(h, w))
    return str(path)


def _skip(path, **kw):
    with pytest.raises(SkippedImage) as e:
        describe(path, **kw)
    return e.value


def test_an_unreadable_png_is_a_counted_skip(tmp_path, monkeypatch):
    path = _png_file(tmp_path / "locked.png")
    real_open = open

    def no_permission(file, *a, **k):  # chmod 000 does not stop root, who runs the CI
        if str(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", no_permission)
    skipped = _skip(path)
    assert skipped.kind == "unreadable" and "PermissionError" in skipped.reason and skipped.path == path


def test_file_size_is_checked_before_the_file_is_read(tmp_path, monkeypatch):
    path = _png_file(tmp_path / "padded.png")
    bound = 40_000 * image_checks.BYTES_PER_PIXEL_BOUND + image_checks.HEADER_BYTES_BOUND
    os.truncate(path, bound + 1)  # a valid PNG with trailing zeros (sparse): 32,000 pixels are fine by the budget
    real_read_file = image_io.read_whole_file
    monkeypatch.setattr(image_io, "read_whole_file", lambda *a, **k: pytest.fail("read before its size was checked")
                        if os.path.getsize(a[0]) > bound else real_read_file(*a, **k))
    skipped = _skip(path, max_pixels=40_000)
    assert skipped.kind == "too_large" and f"{bound + 1:,} bytes" in skipped.reason
    with pytest.raises(ImageReadError, match="bytes, over the"):
        read_stored_image(path, max_pixels=40_000)
    os.truncate(path, 1000)  # within the bound: read (and found to be a damaged PNG, not a size problem)
    assert _skip(path, max_pixels=40_000).kind == "unreadable"


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = mammogram_dataset(tmp_path / "bomb.dcm", _pixels(64, 48), "P1", "L", "CC")
    ds.add_new((0x0009, 0x0010), "LO", "BOMB")
    ds.add_new((0x0009, 0x1000), "OB", b"\0" * (40 << 20))  # 40 MB of zeros deflate to ~40 KB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(str(tmp_path / "bomb.dcm"), enforce_file_format=True)
    assert os.path.getsize(tmp_path / "bomb.dcm") < 1 << 20
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("inflated whole by pydicom"))
    skipped = _skip(tmp_path / "bomb.dcm", max_pixels=10_000)  # 64 x 48 pixels: within the pixel budget
    assert skipped.kind == "too_large" and "deflated DICOM" in skipped.reason


def test_pixel_values_that_overflow_float32_arithmetic_are_refused(tmp_path):
    img = np.full((200, 160), 1.0, np.float32)
    img[:100] = -3e38
    img[100:, :80] = 3e38
    path = tmp_path / "huge.tif"
    assert cv2.imwrite(str(path), img)
    # what the model would have been given: (x - lo) overflows float32 to inf, times 0 gives NaN
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(image_io.to_model_input(img)).all()
    skipped = _skip(path)
    assert skipped.kind == "non_finite" and "-3e+38 to 3e+38" in skipped.reason
    ok = tmp_path / "float.tif"  # float pixels of ordinary size are read
    assert cv2.imwrite(str(ok), (_pixels(200, 160) / 7).astype(np.float32))
    image, meta = describe(ok)
    assert image.dtype == np.float32 and meta["max"] > meta["min"]


def test_a_multi_page_tiff_is_refused_like_a_multi_frame_dicom(tmp_path):
    from PIL import Image

    pages = [Image.fromarray(_pixels(200, 160, seed)) for seed in (1, 2, 3)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert Image.open(path).n_frames == 3  # Pillow, independently: three pages
    skipped = _skip(path)
    assert skipped.kind == "multi_frame" and "3 pages" in skipped.reason
    ds = mammogram_dataset(tmp_path / "multi.dcm", _pixels(64, 48), "P1", "L", "CC")
    ds.NumberOfFrames, ds.PixelData = 2, np.stack([_pixels(64, 48, s) for s in (1, 2)]).tobytes()
    ds.save_as(str(tmp_path / "multi.dcm"), enforce_file_format=True)
    assert _skip(tmp_path / "multi.dcm").kind == "multi_frame"


def test_dicoms_without_a_suffix_are_found_in_folders(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    make_dicom(folder / "IM000001", _pixels(64, 48), patient_id="P_00099", laterality="R", view="MLO")
    (folder / "DICOMDIR_NOTES").write_bytes(b"\0" * 128 + b"NOPE" + b"text")
    (folder / "readme.txt").write_text("not an image")
    files, _ = list_inputs([str(folder)])
    assert files == [str(folder / "IM000001")]
    assert pydicom.dcmread(files[0]).PatientID == "P_00099"  # pydicom, independently: a DICOM file
    image, meta = describe(files[0])
    assert (meta["patient_id"], meta["laterality"], meta["view"]) == ("P_00099", "R", "MLO")
    assert meta["source"]["patient_id"] == "dicom:PatientID" and image.shape == (64, 48)


def test_a_truncated_rle_dicom_is_reported_as_truncated(tmp_path):
    path = make_dicom(tmp_path / "r.dcm", _pixels(256, 200), syntax=RLELossless)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:len(data) // 2])
    skipped = _skip(tmp_path / "cut.dcm")
    assert skipped.kind == "unreadable" and "truncated" in skipped.reason and "no pixel data" not in skipped.reason
    header = make_dicom(tmp_path / "h.dcm", _pixels(64, 48))
    ds = pydicom.dcmread(header)
    del ds.PixelData
    ds.save_as(str(header))
    assert "no pixel data" in _skip(header).reason  # a file that has none is still told so


def test_a_jpeg2000_codestream_larger_than_its_header_is_not_decoded(tmp_path, monkeypatch):
    from pydicom.uid import JPEG2000Lossless

    from mammo_tl.data.resolution import ResolutionRequest

    path = make_dicom(tmp_path / "j.dcm", _pixels(256, 200), syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 64, 50  # the header a forger writes: small enough for any pixel budget
    ds.save_as(str(tmp_path / "forged.dcm"))
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array",
                        property(lambda self: pytest.fail("decoded at the codestream's size")))
    for kw in ({}, {"resolution": ResolutionRequest((32, 32), False)}):
        skipped = _skip(tmp_path / "forged.dcm", **kw)
        assert "codestream is 256 x 200" in skipped.reason and "64 x 50" in skipped.reason
