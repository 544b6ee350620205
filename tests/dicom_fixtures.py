"""DICOM files for tests, written with pydicom (uncompressed, RLE, JPEG 2000; MONOCHROME1/2; VOI)."""
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_dicom(path, pixels, *, photometric="MONOCHROME2", syntax=None, bits_stored=16, patient_id="P_00001",
               laterality="L", view="CC", slope=None, intercept=None, window=None, identifying=True,
               study_uid=None, series_uid=None):
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "MG"
    ds.PatientID = patient_id
    if identifying:  # fields that must never reach meta, logs or outputs
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19600101"
        ds.AccessionNumber = "ACC123456"
        ds.InstitutionName = "General Hospital"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def valid_dicom_bytes(tmp_path, syntax=None):
    rng = np.random.default_rng(0)
    path = make_dicom(tmp_path / "ok.dcm", (rng.random((48, 32)) * 4000).astype(np.uint16), syntax=syntax,
                      bits_stored=12)
    return path.read_bytes()


def read_back(path):
    return pydicom.dcmread(str(path))
