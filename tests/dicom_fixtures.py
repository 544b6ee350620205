"""DICOM files for tests, written with pydicom (uncompressed, RLE, JPEG 2000; MONOCHROME1/2; VOI)."""
import numpy as np
from pydicom.uid import generate_uid

from mammo_tl.data.synthetic import mammogram_dataset


def make_dicom(path, pixels, *, photometric="MONOCHROME2", syntax=None, bits_stored=16, patient_id="P_00001",
               laterality="L", view="CC", slope=None, intercept=None, window=None, identifying=True,
               study_uid=None, series_uid=None):
    ds = mammogram_dataset(path, pixels, patient_id, laterality, view)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if identifying:  # fields that must never reach meta, logs or outputs
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19600101"
        ds.AccessionNumber = "ACC123456"
        ds.InstitutionName = "General Hospital"
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def valid_dicom_bytes(tmp_path, syntax=None):
    rng = np.random.default_rng(0)
    path = make_dicom(tmp_path / "ok.dcm", (rng.random((48, 32)) * 4000).astype(np.uint16), syntax=syntax,
                      bits_stored=12)
    return path.read_bytes()
