"""The one reader (mammo_tl.data.image_io.read_stored_image) and the header-only size every converter uses."""
import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from mammo_tl.data import image_io
from mammo_tl.data.image_io import ImageReadError, image_size, read_image, read_stored_image
from mammo_tl.data.inputs import describe
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
