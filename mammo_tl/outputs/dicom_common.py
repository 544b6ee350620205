"""What the presentation states and reports share: the algorithm's identity, content-derived UIDs, the
reference copy of a source header and the rectangle of a box (imported by dicom.py, dicom_pr.py, dicom_sr.py)."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

NAME = MANUFACTURER = "mammo_tl"
# Series numbers of the presentation states and reports added to each study: high, to sort after the source's.
PR_SERIES_NUMBER, SR_SERIES_NUMBER = 9900, 9901
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "mammo_tl")
# Patient and study attributes the PR and SR IODs require present (Type 2), possibly empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class Algorithm:
    """Who made the findings: mammo_tl's version, the config, the weights (sha256), which boxes are reported
    (score >= ``min_score``) and the operating point (name, threshold), if any."""

    config_name: str
    weights_sha256: str
    min_score: float
    operating_point: tuple[str, float] | None = None
    version: str = __version__

    @property
    def reported(self) -> str:
        return f"boxes with score >= {self.min_score:g}"

    @property
    def serial_number(self) -> str:
        """Device Serial Number: the weights' sha256, shortened; it identifies the trained model."""
        return (self.weights_sha256 or "unknown")[:16]

    def parameters(self) -> list[str]:
        """The Algorithm Parameters of TID 4019, as text."""
        out = [f"config: {self.config_name}", f"weights sha256: {self.weights_sha256}",
               f"reported: {self.reported}"]
        if self.operating_point:
            out.append(f"operating point: {self.operating_point[0]}, recall above {self.operating_point[1]:g}")
        return out

    def key(self) -> tuple:
        return (self.version, self.config_name, self.weights_sha256, self.min_score, self.operating_point)

    @property
    def threshold_text(self) -> str:
        """Which boxes are reported, and the operating point if any: what a reader needs to know that an image
        without a box is below a threshold, not found normal."""
        text = self.reported
        if self.operating_point:
            text += f"; operating point {self.operating_point[0]}: recall above {self.operating_point[1]:g}"
        return text

    def series_description(self, what: str) -> str:
        """Series Description (LO, 64 characters) of the presentation states ("boxes") or reports ("report"):
        a series list then says these are mammo_tl's AI results, of which version and model (the config's file
        name and the weights' sha256, shortened)."""
        config = self.config_name.rsplit("/", 1)[-1].removesuffix(".yaml")
        head = f"AI {what}: {NAME} {self.version}"
        tail = f" {(self.weights_sha256 or 'unknown')[:8]}"
        return f"{head} {config[:64 - len(head) - len(tail) - 1]}{tail}"

    @property
    def device_uid(self) -> str:
        """Device UID of the trained model (config and weights): the SR's observer device, and the Contributing
        Equipment item of every object."""
        return derived_uid("device", self.weights_sha256, self.config_name)


def derived_uid(*parts) -> str:
    """A UID that is a function of ``parts``: "2.25." and a name-based (SHA-1) UUID as an integer."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, repr(parts)).int}"


# Purpose of Reference of the Contributing Equipment item that names the algorithm (IHE AI Results): CID 7005's
# "Processing Equipment" (DCM has no code "Processing Algorithm"; CID 7005 holds the purposes of reference).
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")


def add_contributing_equipment(ds: Dataset, algorithm: Algorithm) -> Dataset:
    """Add the algorithm to ``ds``'s Contributing Equipment Sequence (0018,A001), as the IHE AI Results profile
    asks of an AI result: purpose of reference, manufacturer, model (the config), software version (mammo_tl's),
    device serial number (the weights' sha256, shortened) and Device UID."""
    from pydicom import Dataset as _Dataset

    purpose = _Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PROCESSING_EQUIPMENT
    item = _Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = algorithm.config_name[:64]
    item.SoftwareVersions = algorithm.version
    item.DeviceSerialNumber = algorithm.serial_number
    item.DeviceUID = algorithm.device_uid
    ds.ContributingEquipmentSequence = [*ds.get("ContributingEquipmentSequence", []), item]
    return ds


def reference_dataset(header: Dataset) -> Dataset:
    """A copy of the source header that highdicom can take as reference: Type 2 patient and study attributes
    present (empty when the source has none); nothing else changes."""
    ref = header.copy()
    for keyword in _TYPE2:
        if keyword not in ref:
            setattr(ref, keyword, "")
    return ref


def closed_rectangle(box: Iterable[float]) -> np.ndarray:
    """The (5, 2) (column, row) points of a box [x1, y1, x2, y2] as a closed polyline."""
    import numpy as np

    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])


def subject(header: Dataset) -> tuple:
    """What a result is about, as its UIDs are derived from it: the patient module (a corrected patient gets new
    results, not the old ones again), the study, series and image."""
    from ..data.dicom_header import patient_module

    return (patient_module(header), str(header.StudyInstanceUID), str(header.SeriesInstanceUID),
            str(header.SOPInstanceUID))


def box_tracking_uid(header: Dataset, index: int, box: Iterable[float], score: float, algorithm: Algorithm) -> str:
    """The tracking UID of a reported box, shared by its GSPS rectangle and its SR region."""
    return derived_uid("box", subject(header), index, tuple(box), score, algorithm.key())
