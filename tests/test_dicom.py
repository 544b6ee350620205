"""read_mammogram on the transfer syntaxes and pixel conventions of mammography archives."""
import json
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, RLELossless

from mammo_tl.data.dicom import DicomReadError, read_mammogram
from tests.dicom_fixtures import make_dicom, valid_dicom_bytes

RNG = np.random.default_rng(1)
PIXELS = (RNG.random((64, 40)) * 4095).astype(np.uint16)


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEG2000Lossless], ids=["explicit", "rle", "j2k"])
def test_compressed_and_plain_syntaxes_decode_losslessly(tmp_path, syntax):
    path = make_dicom(tmp_path / "a.dcm", PIXELS, syntax=syntax, bits_stored=12)
    image, meta = read_mammogram(path)
    assert image.dtype == np.float32 and image.shape == (64, 40)
    np.testing.assert_array_equal(image, PIXELS.astype(np.float32))
    assert (meta["rows"], meta["columns"], meta["bits_stored"]) == (64, 40, 12)
    assert meta["photometric_interpretation"] == "MONOCHROME2"
    assert (meta["patient_id"], meta["laterality"], meta["view"]) == ("P_00001", "L", "CC")


def test_monochrome1_is_inverted(tmp_path):
    raw = np.array([[0, 1000], [3000, 4095]], dtype=np.uint16)
    image, meta = read_mammogram(make_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", bits_stored=12))
    # brighter = denser: the stored minimum becomes the maximum
    np.testing.assert_array_equal(image, np.array([[4095, 3095], [1095, 0]], dtype=np.float32))
    assert meta["photometric_interpretation"] == "MONOCHROME1"


def test_rescale_slope_intercept(tmp_path):
    raw = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    image, _ = read_mammogram(make_dicom(tmp_path / "r.dcm", raw, slope=2.0, intercept=-5.0))
    np.testing.assert_allclose(image, raw * 2.0 - 5.0)


def test_window_applied_or_ignored(tmp_path):
    raw = np.array([[0, 1000, 2000, 4000]], dtype=np.uint16)
    path = make_dicom(tmp_path / "w.dcm", raw, bits_stored=12, window=(2000, 1000))
    windowed, meta = read_mammogram(path)
    assert meta["voi_applied"]
    # DICOM linear window, centre 2000 width 1000: below 1500.5 -> min, above 2499.5 -> max of the 12-bit range
    assert windowed[0, 0] == windowed[0, 1] == 0 and windowed[0, 3] == 4095
    assert 0 < windowed[0, 2] < 4095
    plain, meta = read_mammogram(path, apply_voi=False)
    np.testing.assert_array_equal(plain, raw.astype(np.float32))
    assert not meta["voi_applied"]


def test_meta_carries_nothing_identifying(tmp_path):
    _, meta = read_mammogram(make_dicom(tmp_path / "id.dcm", PIXELS))
    text = json.dumps(meta)
    for secret in ("Doe", "19600101", "ACC123456", "General Hospital"):
        assert secret not in text


def test_errors_name_the_file_and_cause(tmp_path):
    with pytest.raises(DicomReadError, match="missing.dcm: file not found"):
        read_mammogram(tmp_path / "missing.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(DicomReadError, match="text.dcm"):
        read_mammogram(tmp_path / "text.dcm")
    data = valid_dicom_bytes(tmp_path)
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 1000])
    with pytest.raises(DicomReadError, match="cut.dcm: .*(truncated|corrupt)"):
        read_mammogram(tmp_path / "cut.dcm")
    import pydicom

    ds = pydicom.dcmread(make_dicom(tmp_path / "nopix.dcm", PIXELS))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(DicomReadError, match="no pixel data"):
        read_mammogram(tmp_path / "nopix.dcm")


def test_rle_decoder_panic_becomes_our_error(tmp_path):
    """pylibjpeg-rle's Rust decoder panics (a BaseException) when a run overflows the frame."""
    import pydicom
    from pydicom.encaps import generate_fragments

    path = make_dicom(tmp_path / "rle.dcm", (np.random.default_rng(0).random((48, 32)) * 4000).astype(np.uint16),
                      syntax=RLELossless, bits_stored=12)
    blob = bytearray(path.read_bytes())
    segment = next(f for f in generate_fragments(pydicom.dcmread(path).PixelData) if len(f) > 64)
    start = blob.find(segment)
    blob[start + 64] = 0x7F  # first run header: a 128-byte literal run where fewer bytes remain
    path.write_bytes(bytes(blob))
    with pytest.raises(DicomReadError, match="rle.dcm: (pixel data cannot be decoded|corrupt DICOM)"):
        read_mammogram(path)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    return [valid_dicom_bytes(d), valid_dicom_bytes(d, RLELossless), valid_dicom_bytes(d, JPEG2000Lossless)]


@settings(max_examples=int(os.environ.get("MAMMO_TL_FUZZ_EXAMPLES", "120")), deadline=None,
          derandomize=not os.environ.get("MAMMO_TL_FUZZ_RANDOM"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_and_mutated_bytes_end_in_our_error(tmp_path, seeds, data):
    """Any damage ends in DicomReadError (or, if the damage is harmless, a valid image), quickly."""
    blob = bytearray(data.draw(st.sampled_from(seeds)))
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(bytes(blob))
    start = time.monotonic()
    error = None
    try:
        image, _ = read_mammogram(path)
    except DicomReadError as e:
        error = str(e)
    if error is None:
        assert image.ndim == 2 and np.isfinite(image).all()
    else:
        assert str(path) in error
    assert time.monotonic() - start < 5.0
